"""Residual-based reweighting: Fu et al. 2019, "Attack-Resistant Federated Learning with Residual-based
Reweighting", as the safety paper's authors run it (docs/method.md#aggregation-rules): lambda 2,
threshold 0.05, coordinates in shards of 2,000.

Per coordinate, the n client values sorted are fitted by a repeated-median line against their ranks; each
value's residual, standardised by a robust scale and its leverage, gives an IRLS confidence (Huber-style,
clipped at lambda * sqrt(2 / n)). Values whose confidence is below ``threshold`` are replaced by the line's
value. Each client's confidences, times the per-coordinate std of confidences, are summed over all
coordinates; the normalised, squared sums weight the average of the (restricted) updates.
The per-coordinate maths is independent of the shard size; shards bound memory (O(shard * n^2)).
Assumes a minority of attackers (repeated median breakdown 1/2).
"""

from __future__ import annotations

import torch

from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule


def median_last(x: torch.Tensor) -> torch.Tensor:
    """Median over the last dimension (mean of the two middles for an even count), by selection."""
    lower = x.median(dim=-1).values
    if x.shape[-1] % 2:
        return lower
    return (lower - (-x).median(dim=-1).values) / 2  # the lower median of -x is minus the upper middle


def repeated_median_line(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Siegel's repeated-median fit of sorted values y [c, n] against x = 0..n-1: (slopes, intercepts) [c]."""
    n = y.shape[1]
    ys = y.sort(dim=1).values
    x = torch.arange(n, dtype=y.dtype, device=y.device)
    dx = x[:, None] - x[None, :]
    dx.fill_diagonal_(float("inf"))
    slopes = (ys[:, :, None] - ys[:, None, :]) / dx  # [c, n, n], zero on the diagonal
    eye = torch.eye(n, dtype=torch.bool, device=y.device)
    inner = median_last(slopes[:, ~eye].reshape(y.shape[0], n, n - 1))
    slope = median_last(inner)
    intercept = median_last(ys) - slope * (n - 1) / 2.0
    return slope, intercept


def reweight_shard(y: torch.Tensor, lam: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y [c, n] (coordinates x clients) -> (confidence * std, restricted values), both [c, n]."""
    c, n = y.shape
    slope, intercept = repeated_median_line(y)
    rank = y.argsort(dim=1).argsort(dim=1).to(y.dtype)
    line = intercept[:, None] + slope[:, None] * rank
    residual = y - line
    # leverage of the design [1, rank]: the ranks are a permutation of 0..n-1, so H_ii depends on rank only
    xbar, sxx = (n - 1) / 2.0, ((torch.arange(n, dtype=y.dtype) - (n - 1) / 2.0) ** 2).sum()
    h = 1.0 / n + (rank - xbar) ** 2 / sxx
    root = torch.sqrt((1 - h).clamp_min(0))
    without_min = residual.abs().sort(dim=1).values[:, 1:]  # |residual| without its smallest entry
    scale = 1.4826 * (1 + 5 / (n - 1)) * median_last(without_min) + 1e-7
    e = residual / scale[:, None]
    k = lam * (2.0 / n) ** 0.5
    conf = root / e * torch.clamp(e / root, -k, k)
    conf = torch.nan_to_num(conf, nan=1.0)
    restricted = torch.where(conf >= threshold, y, line)
    return conf * conf.std(dim=1, keepdim=True), restricted


@register_rule("residual")
def residual(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
             lam: float = 2.0, threshold: float = 0.05, shard_size: int = 2000) -> AggregationResult:
    n, d = updates.shape
    if n < 3:
        raise ValueError(f"residual fits a line through the clients' values: it needs n >= 3, got {n}")
    totals = torch.zeros(n, dtype=torch.float64, device=updates.device)
    restricted = torch.empty_like(updates)
    for start in range(0, d, shard_size):
        cols = slice(start, min(d, start + shard_size))
        conf, values = reweight_shard(updates[:, cols].T.to(torch.float64), lam, threshold)
        totals += conf.sum(dim=0)
        restricted[:, cols] = values.T.to(updates.dtype)
    # all confidences equal (e.g. identical updates): the reference divides 0 by 0; weigh uniformly instead
    w = totals / totals.max() if float(totals.max()) > 0 else torch.ones_like(totals)
    w = w * w
    w = (w / w.sum()).to(weights.dtype)
    return AggregationResult(w @ restricted, w)
