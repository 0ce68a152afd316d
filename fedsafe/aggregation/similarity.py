"""Similarity-based rules: FoolsGold, FLTrust, FLAME. Cosines come from the Gram matrix.

- ``foolsgold``: Fung, Yoon, Beschastnikh 2020, "The Limitations of Federated Learning in Sybil Settings".
  Cosine similarity of each client's *history* (sum of all its updates so far, ``ctx.history``), pardoning,
  logit weights with confidence ``kappa``; result sum_i a_i u_i. ``variant="paper"`` is the safety paper
  authors' one-round version (docs/method.md#aggregation-rules): no history, and the mean of a_i u_i
  over clients with a_i > 0.
  Assumes attackers (sybils) are more alike than honest clients.
- ``fltrust``: Cao et al. 2021, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping".
  Trust = ReLU(cos(u_i, g0)) against the server's update g0 from its root data (``ctx.server_update``);
  updates rescaled to ||g0||; trust-weighted mean.
- ``flame``: Nguyen et al. 2022, "FLAME: Taming Backdoors in Federated Learning". HDBSCAN (scikit-learn)
  over cosine distances of the local models (``ctx.global_params`` + u_i; of the updates if not given) with
  min_cluster_size n/2 + 1; the majority cluster is kept, clipped to the median norm S, averaged; Gaussian
  noise of std ``noise_lambda`` * S is added. Assumes fewer than half the clients are malicious.
"""

from __future__ import annotations

import torch

from fedsafe.aggregation.clipping import clip_factors
from fedsafe.aggregation.geometry import combine, cosine, gram
from fedsafe.aggregation.registry import AggregationContext, AggregationResult, register_rule


def foolsgold_weights(cs: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold's weight vector from a cosine-similarity matrix [n, n] (float64)."""
    n = cs.shape[0]
    cs = cs - torch.eye(n, dtype=cs.dtype, device=cs.device)
    maxcs = cs.max(dim=1).values
    pardon = maxcs[:, None] < maxcs[None, :]  # i less similar to others than j: pardon i's similarity to j
    cs = torch.where(pardon, cs * maxcs[:, None] / maxcs[None, :], cs)
    wv = (1 - cs.max(dim=1).values).clamp(0, 1)
    if float(wv.max()) == 0:
        return wv
    wv = wv / wv.max()
    wv[wv == 1] = 0.99
    wv = kappa * (torch.log(wv / (1 - wv)) + 0.5)
    wv[wv > 1] = 1  # also +inf; -inf (a weight of 0) is clamped to 0 below
    return wv.clamp_min(0)


@register_rule("foolsgold", needs_history=True)
def foolsgold(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
              variant: str = "original", kappa: float = 1.0) -> AggregationResult:
    n = updates.shape[0]
    if variant not in ("original", "paper"):
        raise ValueError(f"foolsgold variant must be 'original' or 'paper', got {variant!r}")
    if n < 2:
        raise ValueError("foolsgold compares clients: it needs n >= 2 updates")
    basis = updates if variant == "paper" or ctx.history is None else ctx.history
    a = foolsgold_weights(cosine(gram(basis)), kappa)
    if variant == "paper":
        kept = int((a > 0).sum())
        a = a / max(kept, 1)
    w = a.to(weights.dtype)
    return AggregationResult(combine(w, updates), w)


@register_rule("fltrust", needs_server_update=True)
def fltrust(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
    n = updates.shape[0]
    g = gram(updates, [ctx.server_update])
    norms = torch.diagonal(g).sqrt()
    trust = torch.relu(cosine(g)[:n, n])
    if float(trust.sum()) == 0:
        zero = torch.zeros(n, dtype=weights.dtype, device=weights.device)
        return AggregationResult(torch.zeros_like(updates[0]), zero)
    w = (trust * norms[n] / norms[:n].clamp_min(1e-30) / trust.sum()).to(weights.dtype)
    return AggregationResult(combine(w, updates), w)


@register_rule("flame")
def flame(updates: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext,
          noise_lambda: float = 0.001, min_cluster_size: int | None = None) -> AggregationResult:
    from sklearn.cluster import HDBSCAN

    n = updates.shape[0]
    if n < 2:
        raise ValueError("flame clusters clients: it needs n >= 2 updates")
    extra = [ctx.global_params] if ctx.global_params is not None else []
    g = gram(updates, extra)
    if extra:  # <global + u_i, global + u_j> from the augmented Gram matrix
        g_models = g[:n, :n] + g[:n, n][:, None] + g[n, :n][None, :] + g[n, n]
    else:
        g_models = g
    distance = (1 - cosine(g_models)).clamp_min(0).cpu().numpy()
    labels = HDBSCAN(min_cluster_size=min_cluster_size or n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit_predict(distance)
    labels_t = torch.as_tensor(labels)
    clustered = labels_t[labels_t >= 0]
    admitted = labels_t == torch.mode(clustered).values if len(clustered) else torch.ones(n, dtype=torch.bool)
    norms = torch.diagonal(g[:n, :n]).sqrt()
    bound = float(norms.median())
    factors = clip_factors(norms, bound) if bound > 0 else torch.ones_like(norms)
    w = torch.where(admitted.to(norms.device), factors, torch.zeros_like(factors)) / int(admitted.sum())
    w = w.to(weights.dtype)
    vector = combine(w, updates)
    if noise_lambda > 0 and bound > 0:
        noise = torch.randn(vector.shape, generator=ctx.generator(), dtype=vector.dtype).to(vector.device)
        vector = vector + noise_lambda * bound * noise
    return AggregationResult(vector, w)
