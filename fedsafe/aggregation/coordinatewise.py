"""Coordinate-wise rules: each coordinate is aggregated on its own, column chunk by column chunk.

- ``median``: Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates".
  The true median (mean of the two middle values for even n); ``lower=True`` gives the authors' lower
  median (docs/method.md#aggregation-rules). Robust while fewer than half the clients are malicious (n >= 2f + 1).
- ``trimmed_mean``: same paper. Drop the ``num_trim`` (or ``trim_ratio`` * n, as Flower's
  ``proportiontocut``) largest and smallest values per coordinate, average the rest. Defaults to
  ``num_trim = num_malicious``. Needs n > 2 * num_trim.

Both run on ``order.order_window``: a sorting network over cache-sized column blocks (numba on the CPU,
``torch.sort`` on a GPU). Effective weights: a client's share of the kept values over all coordinates
(ties are attributed to one of the tied clients).
"""

from __future__ import annotations

import math

import torch

from fedsafe.aggregation.order import order_window, value_shares
from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule


@register_rule("median")
def median(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
           lower: bool = False) -> AggregationResult:
    vector, counts = order_window(updates, "lower" if lower else "median")
    return AggregationResult(vector, value_shares(counts, weights))


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
    k = trim_count(updates.shape[0], num_trim, trim_ratio, ctx.num_malicious)
    vector, counts = order_window(updates, "trim", k=k)
    return AggregationResult(vector, value_shares(counts, weights))
