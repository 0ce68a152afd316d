"""Residual-based reweighting: Fu et al. 2019, "Attack-Resistant Federated Learning with Residual-based
Reweighting", as the safety paper's authors run it (docs/method.md#aggregation-rules): lambda 2,
threshold 0.05.

Per coordinate, the n client values sorted are fitted by a repeated-median line against their ranks; each
value's residual, standardised by a robust scale and its leverage, gives an IRLS confidence (Huber-style,
clipped at lambda * sqrt(2 / n)). Values whose confidence is below ``threshold`` are replaced by the line's
value. Each client's confidences, times the per-coordinate std of confidences, are summed over all
coordinates; the normalised, squared sums weight the average of the (restricted) updates.
Assumes a minority of attackers (repeated median breakdown 1/2).

The repeated median costs O(n^2) per coordinate: n medians of n - 1 slopes. ``_residual_kernel`` computes it
in float64 on blocks of 64 columns with the sorting networks of ``order`` (the medians are order statistics,
so the same values as a sort gives), numba-compiled, block ranges side by side in threads; ``reweight_shard``
is the same maths in torch, for CUDA tensors or without numba (in shards of ``shard_size`` columns: O(shard *
n^2) memory).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedsafe.aggregation.order import block_parts, network, njit, numba, run_parts, sort_block, sort_rows
from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule

BLOCK = 64  # float64 columns per block: a block's n - 1 slopes (25 KB at n = 50) stay in the L1 cache


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


def leverage_root(rank: torch.Tensor, n: int) -> torch.Tensor:
    """sqrt(1 - H_ii) of the design [1, rank]: the ranks are a permutation of 0..n-1, so H_ii depends on the
    rank only."""
    xbar, sxx = (n - 1) / 2.0, ((torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) ** 2).sum()
    h = 1.0 / n + (rank - xbar) ** 2 / sxx.to(rank.device)
    return torch.sqrt((1 - h).clamp_min(0))


def scale_factor(n: int) -> float:
    return 1.4826 * (1 + 5 / (n - 1))


def reweight_shard(y: torch.Tensor, lam: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y [c, n] (coordinates x clients) -> (confidence * std, restricted values), both [c, n]."""
    c, n = y.shape
    slope, intercept = repeated_median_line(y)
    rank = y.argsort(dim=1).argsort(dim=1).to(y.dtype)
    line = intercept[:, None] + slope[:, None] * rank
    residual = y - line
    root = leverage_root(rank, n)
    without_min = residual.abs().sort(dim=1).values[:, 1:]  # |residual| without its smallest entry
    scale = scale_factor(n) * median_last(without_min) + 1e-7
    e = residual / scale[:, None]
    k = lam * (2.0 / n) ** 0.5
    conf = root / e * torch.clamp(e / root, -k, k)
    conf = torch.nan_to_num(conf, nan=1.0)
    restricted = torch.where(conf >= threshold, y, line)
    return conf * conf.std(dim=1, keepdim=True), restricted


@njit(cache=True, nogil=True)
def _middle(vals, lo, hi, c):
    """The median of sorted column c from its middle positions lo <= hi."""
    return vals[lo, c] if lo == hi else (vals[lo, c] + vals[hi, c]) / 2


@njit(cache=True, nogil=True, error_model="numpy")
def _residual_kernel(x, lam, threshold, root, nets, restricted, totals, block, b0, b1):
    """reweight_shard on the columns of blocks [b0, b1) of x [n, d] (float32/64): restricted [n, d] gets the
    kept or replaced values, totals[client] adds the sums of confidence * std. ``nets``: (first, second)
    step arrays of the full sort of n, the middles of n - 1, the middles of n, and positions 1 + the
    middles of n - 1."""
    n = x.shape[0]
    full_a, full_b, inner_a, inner_b, outer_a, outer_b, scale_a, scale_b = nets
    k = lam * (2.0 / n) ** 0.5
    factor = 1.4826 * (1 + 5 / (n - 1))
    m_lo, m_hi = (n - 2) // 2, (n - 1) // 2  # middles of n - 1 values
    ys = np.empty((n, block))
    idx = np.empty((n, block), dtype=np.int32)
    slopes = np.empty((n - 1, block))
    inner = np.empty((n, block))
    res = np.empty((n, block))
    absres = np.empty((n, block))
    slope = np.empty(block)
    icpt = np.empty(block)
    clients = np.arange(n)
    for b in range(b0, b1):
        start = b * block
        stop = sort_block(x, clients, start, ys, idx, full_a, full_b)  # sorted columns, carrying the clients
        for i in range(n):  # the median of the slopes from sorted position i to every other one
            m = 0
            for j in range(n):
                if j != i:
                    for c in range(block):
                        slopes[m, c] = (ys[i, c] - ys[j, c]) / (i - j)
                    m += 1
            sort_rows(slopes, inner_a, inner_b)
            for c in range(block):
                inner[i, c] = _middle(slopes, m_lo, m_hi, c)
        sort_rows(inner, outer_a, outer_b)
        for c in range(block):
            slope[c] = _middle(inner, (n - 1) // 2, n // 2, c)
            icpt[c] = _middle(ys, (n - 1) // 2, n // 2, c) - slope[c] * (n - 1) / 2.0
        for p in range(n):
            for c in range(block):
                res[p, c] = ys[p, c] - (icpt[c] + slope[c] * p)
                absres[p, c] = abs(res[p, c])
        sort_rows(absres, scale_a, scale_b)
        for c in range(stop):
            scale = factor * _middle(absres, 1 + m_lo, 1 + m_hi, c) + 1e-7
            total = 0.0
            for p in range(n):  # confidences, kept in res (the residuals are not needed after this)
                e = res[p, c] / scale
                q = e / root[p]
                q = k if q > k else (-k if q < -k else q)  # clamp; a NaN stays NaN, as in torch
                conf = root[p] / e * q
                res[p, c] = 1.0 if math.isnan(conf) else conf  # 0 / 0 where the residual is 0
                total += res[p, c]
            mean = total / n
            var = 0.0
            for p in range(n):
                var += (res[p, c] - mean) ** 2
            std = (var / (n - 1)) ** 0.5
            for p in range(n):
                client = idx[p, c]
                totals[client] += res[p, c] * std
                keep = res[p, c] >= threshold
                restricted[client, start + c] = ys[p, c] if keep else icpt[c] + slope[c] * p


def residual_numba(updates: torch.Tensor, lam: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(totals [n] float64, restricted [n, d]) of the rule on a CPU tensor, by ``_residual_kernel``."""
    n, d = updates.shape
    x = updates.contiguous().numpy()
    middles = (((n - 2) // 2, (n - 1) // 2), ((n - 1) // 2, n // 2))
    nets = (*network(n), *network(n - 1, tuple(sorted(set(middles[0])))),
            *network(n, tuple(sorted(set(middles[1])))), *network(n, tuple(sorted({1 + m for m in middles[0]}))))
    root = leverage_root(torch.arange(n, dtype=torch.float64), n).numpy()
    parts = block_parts(d, BLOCK)
    restricted = np.empty_like(x)
    totals = np.zeros((len(parts), n))
    run_parts(lambda i, b0, b1: _residual_kernel(x, lam, threshold, root, nets, restricted, totals[i], BLOCK, b0, b1),
              parts)
    return torch.from_numpy(totals.sum(axis=0)), torch.from_numpy(restricted)


def residual_torch(updates: torch.Tensor, lam: float, threshold: float, shard_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (totals, restricted) with torch ops on shards of columns (any device)."""
    n, d = updates.shape
    totals = torch.zeros(n, dtype=torch.float64, device=updates.device)
    restricted = torch.empty_like(updates)
    for start in range(0, d, shard_size):
        cols = slice(start, min(d, start + shard_size))
        conf, values = reweight_shard(updates[:, cols].T.to(torch.float64), lam, threshold)
        totals += conf.sum(dim=0)
        restricted[:, cols] = values.T.to(updates.dtype)
    return totals, restricted


@register_rule("residual")
def residual(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
             lam: float = 2.0, threshold: float = 0.05, shard_size: int = 2000) -> AggregationResult:
    n = updates.shape[0]
    if n < 3:
        raise ValueError(f"residual fits a line through the clients' values: it needs n >= 3, got {n}")
    on_cpu = updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64) and numba is not None
    totals, restricted = (residual_numba(updates, lam, threshold) if on_cpu
                          else residual_torch(updates, lam, threshold, shard_size))
    totals = totals.to(updates.device)
    # all confidences equal (e.g. identical updates): the reference divides 0 by 0; weigh uniformly instead
    w = totals / totals.max() if float(totals.max()) > 0 else torch.ones_like(totals)
    w = w * w
    w = (w / w.sum()).to(weights.dtype)
    return AggregationResult(w @ restricted.to(updates.device), w)
