"""Hugging Face ``generate`` over a batch of tokenized prompts (the ``hf`` backend of the generation pool).

Batch ``b`` of a call is sampled with seed ``derive_seed(params.seed, b)``; greedy decoding
(``temperature=0``) does not depend on batching or seeds. ``length_batches`` cuts a batch of prompts of
different lengths into sub-batches of similar lengths where left padding would cost more than the extra
decoding steps (one prompt of 268 tokens among prompts of 40 made a batch of 100 cost 3x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsafe.requests import GenerationParams
from fedsafe.seeding import derive_seed


@dataclass(frozen=True)
class BatchCost:
    """Milliseconds of one ``generate`` call, as a linear model: ``prefill_token`` per (padded) prompt token,
    ``step`` per decoding step, ``row_step`` per row and decoding step. Defaults measured on a 2-core CPU
    with SmolLM2-135M in float32 (1.5 ms, 50 ms, 2.7 ms; docs/benchmarks.md); only their ratios matter."""

    prefill_token: float = 1.5
    step: float = 50.0
    row_step: float = 2.7

    def __call__(self, rows: int, width: int, new_tokens: int) -> float:
        return rows * width * self.prefill_token + new_tokens * (self.step + rows * self.row_step)


def length_batches(lengths: list[int], new_tokens: int, cost: BatchCost = BatchCost()) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into consecutive sub-batches that minimise the summed
    ``cost`` (each sub-batch left-padded to its longest prompt); one sub-batch when the lengths are close.
    Exact dynamic programme over the sorted lengths, O(n^2) for a batch of n."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cheapest cut of the j shortest
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        width = lengths[order[j - 1]]
        for i in range(j):
            total = best[i] + cost(j - i, width, new_tokens)
            if total < best[j]:
                best[j], cut[j] = total, i
    bounds, j = [], len(order)
    while j:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[i:j] for i, j in reversed(bounds)]


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all ``prompts`` share, leaving each at least one token of its own."""
    shortest = min(len(p) for p in prompts) - 1
    n = 0
    while n < shortest and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def prefix_cache(model, prefix: list[int], rows: int):
    """The key/value cache of ``prefix`` (computed once), repeated for ``rows`` rows."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.tensor([prefix], device=device), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(rows)
    return cache


def generate_batch(model, tokenizer, prompts: list[list[int]], params: GenerationParams, batch_index: int,
                   min_shared: int = 8) -> list[str]:
    """Batch generation of token-id prompts; returns the decoded continuations only. A prefix of at least
    ``min_shared`` tokens that every prompt shares (the alpaca template's first 24 tokens) is computed once:
    rows are ``prefix + left padding + rest``, and positions follow the attention mask, so each row sees
    what it would alone. 0 turns this off (plain left padding)."""
    shared = shared_prefix(prompts) if min_shared and len(prompts) > 1 else 0
    if shared < min_shared:
        shared = 0
    head, rests = prompts[0][:shared], [p[shared:] for p in prompts]
    width = max(len(r) for r in rests)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([head + [pad] * (width - len(r)) + r for r in rests], dtype=torch.long)
    mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rests], dtype=torch.long)
    device = next(model.parameters()).device
    sample = params.temperature > 0
    extra = {"past_key_values": prefix_cache(model, head, len(prompts))} if shared else {}
    torch.manual_seed(derive_seed(params.seed, batch_index))
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device),
            max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens if params.ignore_eos else None,
            do_sample=sample, temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=None, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
    return tokenizer.batch_decode(out[:, shared + width:], skip_special_tokens=True)
