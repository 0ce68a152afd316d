"""Server optimizers applied after any rule (Reddi et al. 2021, "Adaptive Federated Optimization"; as in
OpenFedLLM). The aggregated update Delta acts as a pseudo-gradient; the state is two [d] tensors.

    fedavgm:    m = momentum * m + Delta;                     x += lr * m
    fedadagrad: m = b1 * m + (1 - b1) * Delta; v = v + Delta^2;                          x += lr * m / (sqrt(v) + tau)
    fedadam:    m = b1 * m + (1 - b1) * Delta; v = b2 * v + (1 - b2) * Delta^2;          x += lr * m / (sqrt(v) + tau)
    fedyogi:    m = b1 * m + (1 - b1) * Delta; v = v - (1 - b2) * Delta^2 * sign(v - Delta^2); same step
v starts at tau^2 (OpenFedLLM's initialisation); m at 0. ``none`` returns Delta unchanged (lr 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsafe.errors import check as _check

SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadagrad", "fedadam", "fedyogi")


@dataclass
class ServerOptConfig:
    """Server optimizer after the rule (``aggregation.server_opt`` in a config): lr, FedAvgM's momentum,
    the adaptive ones' beta1, beta2 and tau."""

    name: str = "none"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check(self.name in SERVER_OPTIMIZERS,
               f"aggregation.server_opt.name must be one of {SERVER_OPTIMIZERS}, got {self.name!r}")
        _check(self.lr > 0, f"aggregation.server_opt.lr must be > 0, got {self.lr}")
        _check(self.tau > 0, f"aggregation.server_opt.tau must be > 0, got {self.tau}")




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
