"""Hugging Face ``generate`` over a batch of tokenized prompts (the ``hf`` backend of the generation pool).

Batch ``b`` of a call is sampled with seed ``derive_seed(params.seed, b)``; greedy decoding
(``temperature=0``) does not depend on batching or seeds.
"""

from __future__ import annotations

import torch

from fedsafe.requests import GenerationParams
from fedsafe.seeding import derive_seed


def generate_batch(model, tokenizer, prompts: list[list[int]], params: GenerationParams, batch_index: int) -> list[str]:
    """Left-padded batch generation of token-id prompts; returns the decoded continuations only."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    device = next(model.parameters()).device
    sample = params.temperature > 0
    torch.manual_seed(derive_seed(params.seed, batch_index))
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device),
            max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens if params.ignore_eos else None,
            do_sample=sample, temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=None, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
