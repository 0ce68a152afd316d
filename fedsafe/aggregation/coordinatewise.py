"""Coordinate-wise rules: each coordinate is aggregated on its own, column chunk by column chunk.

- ``median``: Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates".
  The true median (mean of the two middle values for even n); ``lower=True`` gives the authors' lower
  median (docs/method.md#aggregation-rules). Robust while fewer than half the clients are malicious (n >= 2f + 1).
- ``trimmed_mean``: same paper. Drop the ``num_trim`` (or ``trim_ratio`` * n, as Flower's
  ``proportiontocut``) largest and smallest values per coordinate, average the rest. Defaults to
  ``num_trim = num_malicious``. Needs n > 2 * num_trim.

Selections (``torch.median``, ``torch.topk``) instead of full sorts; trimmed values are subtracted from
float64 column sums. Effective weights: a client's share of the kept values over all
coordinates (ties are attributed to one of the tied clients).
"""

from __future__ import annotations

import math

import torch

from fedsafe.aggregation.geometry import column_chunks
from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule


def median_with_index(block: torch.Tensor, lower: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per column of ``block`` [n, c]: (median [c], index of the lower middle, index of the upper middle
    or None for odd n / ``lower``)."""
    n = block.shape[0]
    lo_val, lo_idx = block.median(dim=0)  # the lower median for even n
    if n % 2 or lower:
        return lo_val, lo_idx, None
    above = torch.where(block > lo_val, block, torch.full_like(block, float("inf")))
    hi_val, hi_idx = above.min(dim=0)
    tied = (block <= lo_val).sum(dim=0) >= n // 2 + 1  # ties fill the upper middle too
    hi_val = torch.where(tied, lo_val, hi_val)
    hi_idx = torch.where(tied, lo_idx, hi_idx)
    return (lo_val + hi_val) / 2, lo_idx, hi_idx


def mean_without(block: torch.Tensor, drop: list[tuple[torch.Tensor, torch.Tensor]], counts: torch.Tensor
                 ) -> torch.Tensor:
    """Mean per column of ``block`` [n, c] without the (values [k, c], row indices [k, c]) in ``drop``.
    Sums run in float64, so subtracting a huge dropped value costs no precision at float32 scale.
    ``counts`` [n] (float64) gains each client's number of kept values."""
    n, c = block.shape
    total = block.sum(dim=0, dtype=torch.float64)
    removed = 0
    counts += c
    for values, rows in drop:
        total -= values.sum(dim=0, dtype=torch.float64)
        removed += values.shape[0]
        counts -= torch.bincount(rows.reshape(-1), minlength=n).to(torch.float64)
    return (total / (n - removed)).to(block.dtype)


def _shares(counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (counts / counts.sum()).to(like.dtype)


@register_rule("median")
def median(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
           lower: bool = False) -> AggregationResult:
    n, d = updates.shape
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    counts = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for cols in column_chunks(n, d, updates.element_size()):
        out[cols], lo_idx, hi_idx = median_with_index(updates[:, cols], lower)
        for index in (lo_idx,) if hi_idx is None else (lo_idx, hi_idx):
            counts += torch.bincount(index, minlength=n).to(torch.float64)
    return AggregationResult(out, _shares(counts, weights))


def trim_count(n: int, num_trim: int | None, trim_ratio: float | None, num_malicious: int) -> int:
    if num_trim is not None and trim_ratio is not None:
        raise ValueError("give trimmed_mean either num_trim or trim_ratio, not both")
    if trim_ratio is not None:
        if not 0 <= trim_ratio < 0.5:
            raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
        k = int(math.floor(trim_ratio * n))
    else:
        k = num_malicious if num_trim is None else int(num_trim)
    if k < 0 or n - 2 * k < 1:
        raise ValueError(f"trimmed_mean drops {k} per side of n={n}: needs n > 2 * num_trim; lower "
                         "num_trim / trim_ratio / num_malicious")
    return k


@register_rule("trimmed_mean")
def trimmed_mean(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
                 num_trim: int | None = None, trim_ratio: float | None = None) -> AggregationResult:
    n, d = updates.shape
    k = trim_count(n, num_trim, trim_ratio, ctx.num_malicious)
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    counts = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for cols in column_chunks(n, d, updates.element_size()):
        block = updates[:, cols]
        drop = [torch.topk(block, k, dim=0, largest=side) for side in (False, True)] if k else []
        out[cols] = mean_without(block, drop, counts)
    return AggregationResult(out, _shares(counts, weights))
