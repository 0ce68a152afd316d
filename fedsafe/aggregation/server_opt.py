"""Server optimizers applied after any rule (Reddi et al. 2021, "Adaptive Federated Optimization"; as in
OpenFedLLM). The aggregated update Delta acts as a pseudo-gradient; the state is two [d] tensors.

    fedavgm:    m = momentum * m + Delta;                     x += lr * m
    fedadagrad: m = b1 * m + (1 - b1) * Delta; v = v + Delta^2;                          x += lr * m / (sqrt(v) + tau)
    fedadam:    m = b1 * m + (1 - b1) * Delta; v = b2 * v + (1 - b2) * Delta^2;          x += lr * m / (sqrt(v) + tau)
    fedyogi:    m = b1 * m + (1 - b1) * Delta; v = v - (1 - b2) * Delta^2 * sign(v - Delta^2); same step
v starts at tau^2 (OpenFedLLM's initialisation); m at 0. ``none`` returns Delta unchanged (lr 1).
"""

from __future__ import annotations

import torch

from fedsafe.specs import SERVER_OPTIMIZERS, ServerOptConfig

__all__ = ["SERVER_OPTIMIZERS", "ServerOptConfig", "init_state", "server_step"]


def init_state(cfg: ServerOptConfig, d: int, device=None) -> dict[str, torch.Tensor]:
    if cfg.name == "none":
        return {}
    state = {"m": torch.zeros(d, device=device)}
    if cfg.name != "fedavgm":
        state["v"] = torch.full((d,), cfg.tau ** 2, device=device)
    return state


def server_step(cfg: ServerOptConfig, state: dict[str, torch.Tensor], delta: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(step to add to the global adapter, new state); inputs are not modified."""
    if cfg.name == "none":
        return delta, state
    if cfg.name == "fedavgm":
        m = cfg.momentum * state["m"] + delta
        return cfg.lr * m, {"m": m}
    m = cfg.beta1 * state["m"] + (1 - cfg.beta1) * delta
    sq = delta * delta
    v = state["v"]
    if cfg.name == "fedadagrad":
        v = v + sq
    elif cfg.name == "fedadam":
        v = cfg.beta2 * v + (1 - cfg.beta2) * sq
    else:  # fedyogi
        v = v - (1 - cfg.beta2) * sq * torch.sign(v - sq)
    return cfg.lr * m / (torch.sqrt(v) + cfg.tau), {"m": m, "v": v}
