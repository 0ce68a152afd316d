"""Update shaping for defense-aware attackers: pure functions of flat LoRA deltas ``[d]`` and of benign
estimates ``[k, d]`` (the colluders' own updates trained on benign data, or the previous global step).
Each keeps as much of the harmful update as its constraint allows.

- ``match_norm``: the harmful update rescaled to a reference norm (the benign updates' median norm), so
  norm-based rules (clipping, Krum's distances) see an ordinary length.
- ``cosine_bound``: the update turned toward the benign mean, in the plane of the two, until its cosine to
  the mean reaches a bound (FoolsGold- and FLTrust-style similarity checks), its norm kept.
- ``alie_z`` / ``alie_clamp``: "A Little Is Enough" (Baruch, Baruch and Goldberg, NeurIPS 2019): per
  coordinate, the benign mean plus or minus ``z`` benign standard deviations, with ``z`` chosen for the
  number of clients so that enough benign clients lie farther out to keep the crafted update inside the
  majority; the harmful update is clamped into that band, so it moves each coordinate as far toward its
  harmful value as the band allows.

The related attacks on robust aggregation: Fang et al., USENIX Security 2020 ("Local Model Poisoning
Attacks to Byzantine-Robust Federated Learning"); Xie, Koyejo and Gupta, UAI 2019 (IPM); Shejwalkar and
Houmansadr, NDSS 2021 (Min-Max, Min-Sum).
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm


def match_norm(update: torch.Tensor, reference_norm: float) -> torch.Tensor:
    """``update`` rescaled to norm ``reference_norm`` (a zero update stays zero)."""
    if reference_norm < 0:
        raise ValueError(f"reference_norm must be >= 0, got {reference_norm}")
    length = float(update.double().norm())
    return update if length == 0.0 else update * (reference_norm / length)


def cosine_bound(update: torch.Tensor, benign_mean: torch.Tensor, min_cosine: float) -> torch.Tensor:
    """``update`` unchanged if its cosine to ``benign_mean`` is at least ``min_cosine``; else the vector of the
    same norm in the plane of the two whose cosine to the mean is exactly ``min_cosine`` (the smallest
    turn toward the mean that passes the bound)."""
    if not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in [-1, 1], got {min_cosine}")
    u, m = update.double(), benign_mean.double()
    u_norm, m_norm = float(u.norm()), float(m.norm())
    if u_norm == 0.0 or m_norm == 0.0:
        return update
    along = m / m_norm
    cos = float(u @ along) / u_norm
    if cos >= min_cosine:
        return update
    across = u - (u @ along) * along
    across_norm = float(across.norm())
    if across_norm == 0.0:  # exactly opposite the mean: any perpendicular direction; take the first axis's
        across = torch.zeros_like(along)
        across[int(along.abs().argmin())] = 1.0
        across -= (across @ along) * along
        across_norm = float(across.norm())
    turned = u_norm * (min_cosine * along + math.sqrt(1.0 - min_cosine**2) * across / across_norm)
    return turned.to(update.dtype)


def alie_z(num_clients: int, num_malicious: int) -> float:
    """Baruch et al.'s ``z_max``: with ``s = floor(n / 2 + 1) - f`` benign clients that must lie farther from
    the mean than the crafted update, ``z = Phi^-1((n - s) / n)`` (standard normal quantile)."""
    if not 0 < num_malicious < num_clients:
        raise ValueError(f"need 0 < num_malicious < num_clients, got {num_malicious} of {num_clients}")
    supporters = num_clients // 2 + 1 - num_malicious
    if supporters <= 0:  # a malicious majority needs no benign supporter: no bound
        return math.inf
    return float(norm.ppf((num_clients - supporters) / num_clients))


def alie_clamp(update: torch.Tensor, benign: torch.Tensor, z: float) -> torch.Tensor:
    """``update`` clamped per coordinate into ``mean +- z * std`` of the benign estimates ``benign`` ``[k, d]``
    (k >= 2; the unbiased standard deviation, as ALIE estimates it from the colluders' benign updates)."""
    if benign.ndim != 2 or benign.shape[0] < 2 or benign.shape[1] != update.numel():
        raise ValueError(f"benign estimates must be [k >= 2, {update.numel()}], got {list(benign.shape)}")
    if z < 0:
        raise ValueError(f"z must be >= 0, got {z}")
    mean, std = benign.mean(dim=0), benign.std(dim=0)
    return torch.minimum(torch.maximum(update, mean - z * std), mean + z * std)
