"""Load a base causal LM and its tokenizer by hub id, local folder, or builtin name (``fedsafe.models.builtin``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedsafe.errors import ConfigError
from fedsafe.models.builtin import resolve_model_path

if TYPE_CHECKING:
    from fedsafe.specs import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cached_config(name: str, cache_dir: str | None = None) -> dict | None:
    """Model ``name``'s config.json without the network: a local folder's, or the copy in the hub cache; None
    where neither has it (a builtin model is built on first use and is small)."""
    import json
    from pathlib import Path

    if name.startswith("builtin:"):
        return None
    file = Path(name) / "config.json"
    if not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir)
        except Exception:  # noqa: BLE001 - not a repo id, or no cache: the shape stays unknown
            return None
        if not isinstance(found, str):
            return None
        file = Path(found)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def int8_problem(cuda: bool, has_bitsandbytes: bool) -> str | None:
    """Why ``model.quantization=int8`` cannot load here, or None."""
    if not cuda:
        return ("model.quantization=int8 loads the base model with bitsandbytes on a CUDA GPU, and this machine has "
                "none; run the trainers on GPUs (trainer.gpus_per_client) or set model.quantization=none")
    if not has_bitsandbytes:
        return "model.quantization=int8 needs the bitsandbytes package: pip install bitsandbytes"
    return None


def check_int8_here() -> None:
    """ConfigError unless this process can load a base model in 8 bits (``int8_problem``)."""
    import importlib.util

    problem = int8_problem(torch.cuda.is_available(), importlib.util.find_spec("bitsandbytes") is not None)
    if problem:
        raise ConfigError(problem)


CHECKPOINTING = {"use_reentrant": False}  # recomputation that needs no input with requires_grad (LoRA's)
# bitsandbytes' 8-bit matmul keeps its inputs as attributes of its autograd context, out of reach of the
# non-reentrant checkpoint's saved-tensor hooks: every layer would keep them (an H200 measured 80 GiB for
# a 16 x 512 step of Llama-2-7B in 8 bits). Reentrant checkpointing runs the forward without autograd and
# keeps nothing (PEFT makes the inputs require grad for it).
CHECKPOINTING_8BIT = {"use_reentrant": True}


def load_model_and_tokenizer(cfg: ModelConfig, gradient_checkpointing: bool = False):
    """(model, tokenizer) in ``cfg.dtype``, on CPU for the caller to move; with ``cfg.quantization`` int8 the
    base weights in 8 bits (bitsandbytes) already on this process's GPU, prepared for LoRA training as the
    authors do (``prepare_model_for_kbit_training``). ``gradient_checkpointing``: the decoder layers'
    activations are recomputed in the backward pass instead of kept (``train.gradient_checkpointing``; the
    authors' code trains so)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg)
    tokenizer = load_tokenizer(path, cfg)
    if cfg.quantization == "none":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype],
                                                     trust_remote_code=cfg.trust_remote_code)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
            model.config.use_cache = False
        return model, tokenizer
    check_int8_here()
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[cfg.dtype], quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map={"": torch.cuda.current_device()}, trust_remote_code=cfg.trust_remote_code)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                            gradient_checkpointing_kwargs=CHECKPOINTING_8BIT)
    if gradient_checkpointing:
        model.config.use_cache = False
    return model, tokenizer
