"""Load a base causal LM and its tokenizer by hub id, local folder, or builtin name (``fedsafe.models.builtin``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedsafe.models.builtin import resolve_model_path

if TYPE_CHECKING:
    from fedsafe.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
