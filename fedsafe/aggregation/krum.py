"""Krum-type rules: distance-based selection. All share one Gram matrix (``geometry.gram``).

- ``krum``: Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent". Score_i = sum of squared distances to its n - f - 2 nearest neighbours; the winner alone.
  Assumes n >= 2f + 3.
- ``multi_krum``: the same paper's Multi-Krum: the m lowest-score updates, averaged (m = n - f default).
- ``krum_paper``: the variant the safety-attack paper's authors ran (docs/method.md#aggregation-rules):
  Euclidean, not squared, distances; score = sum over the n - f - 1 nearest; result = mean of the winner and its n - f - 1
  nearest neighbours (with n=3, f=1: 2 of 3 averaged). Assumes n >= f + 2.
- ``bulyan``: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium".
  theta = n - 2f updates picked by repeated Krum, then per coordinate the beta = theta - 2f values
  closest to the median are averaged. Assumes n >= 4f + 3.
"""

from __future__ import annotations

import torch

from fedsafe.aggregation.geometry import combine, gram, sq_distances
from fedsafe.aggregation.order import order_window, value_shares
from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def krum_scores(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of each row's k smallest off-diagonal entries of a distance matrix [n, n]."""
    n = dist.shape[0]
    off = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))
    return torch.topk(off, k, dim=1, largest=False).values.sum(dim=1)


def _one_hot_mean(selected: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(n, dtype=like.dtype, device=like.device)
    w[selected] = 1.0 / len(selected)
    return w


@register_rule("krum")
def krum(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
    n, f = updates.shape[0], ctx.num_malicious
    _require(n >= 2 * f + 3, f"krum needs n >= 2f + 3; got n={n}, num_malicious={f}: lower num_malicious "
                             "or sample more clients per round")
    scores = krum_scores(sq_distances(gram(updates)), n - f - 2)
    winner = int(torch.argmin(scores))
    w = _one_hot_mean(torch.tensor([winner]), n, weights)
    return AggregationResult(updates[winner].clone(), w)


@register_rule("multi_krum")
def multi_krum(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
               num_selected: int | None = None) -> AggregationResult:
    n, f = updates.shape[0], ctx.num_malicious
    m = n - f if num_selected is None else int(num_selected)
    _require(n >= 2 * f + 3, f"multi_krum needs n >= 2f + 3; got n={n}, num_malicious={f}: lower "
                             "num_malicious or sample more clients per round")
    _require(1 <= m <= n, f"num_selected must be in [1, n={n}], got {m}")
    scores = krum_scores(sq_distances(gram(updates)), n - f - 2)
    selected = torch.argsort(scores, stable=True)[:m]
    w = _one_hot_mean(selected, n, weights)
    return AggregationResult(combine(w, updates), w)


@register_rule("krum_paper")
def krum_paper(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
    n, f = updates.shape[0], ctx.num_malicious
    _require(n >= f + 2, f"krum_paper needs n >= f + 2; got n={n}, num_malicious={f}: lower num_malicious")
    dist = torch.sqrt(sq_distances(gram(updates)))
    k = n - f - 1
    winner = int(torch.argmin(krum_scores(dist, k)))
    others = dist[winner].clone()
    others[winner] = float("inf")
    selected = torch.cat([torch.tensor([winner], device=dist.device),
                          torch.topk(others, k, largest=False).indices])
    w = _one_hot_mean(selected, n, weights)
    return AggregationResult(combine(w, updates), w)


@register_rule("bulyan")
def bulyan(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
    n, f = updates.shape[0], ctx.num_malicious
    _require(n >= 4 * f + 3, f"bulyan needs n >= 4f + 3; got n={n}, num_malicious={f}: lower num_malicious "
                             "or sample more clients per round")
    dist = sq_distances(gram(updates))
    theta, beta = n - 2 * f, n - 4 * f
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < theta:  # repeated Krum on what is left
        sub = dist[remaining][:, remaining]
        k = min(max(1, len(remaining) - f - 2), len(remaining) - 1)  # Krum's k, kept valid as the set shrinks
        pick = remaining[int(torch.argmin(krum_scores(sub, k)))] if k > 0 else remaining[0]
        selected.append(pick)
        remaining.remove(pick)
    rows = torch.tensor(sorted(selected))
    out, counts = order_window(updates, "closest", k=beta, rows=rows)  # per coordinate: beta closest to the median
    w = value_shares(counts, weights)
    return AggregationResult(out, w)
