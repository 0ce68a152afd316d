"""What crosses process boundaries: a client's task and its uploaded update.

An update is the LoRA delta (local adapter minus the global one) as a flat float32 vector ``[d]`` in the
order of the global ``AdapterSpec``, with the client's id and example count. PEFT conversion happens only
in ``fedsafe.training.lora``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SERVER_ID = 2**31 - 1  # stands for "the server" where a task needs a client id


@dataclass(frozen=True)
class ClientTask:
    """Everything a trainer needs for one client's local round (the global adapter comes beside it)."""

    client_id: int
    round_idx: int
    role: str
    records: list[dict]
    lrs: list[float]
    batch_size: int
    max_length: int
    weight_decay: float
    seed: int
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    cover: list[list[dict]] = field(default_factory=list)  # an attacking client's benign estimates' records
    rho: float = 0.0  # > 0: perturbation-aware steps of this size (the server's hardening)
    rank: int = 0  # LoRA components the client trains (its group's lora_rank; 0 = lora.r)


@dataclass(frozen=True)
class ClientUpdate:
    client_id: int
    num_examples: int
    delta: torch.Tensor  # [d] float32
    estimates: tuple[torch.Tensor, ...] = ()  # an attacking client's benign estimates (never aggregated)


@dataclass(frozen=True)
class TrainMetrics:
    client_id: int
    role: str
    loss: float
    first_loss: float
    seconds: float
    update_norm: float


def update_problem(update: object, numel: int, max_norm: float = 0.0) -> str | None:
    """Why the coordinator must not aggregate ``update`` (None if it may): not a ClientUpdate, a delta of
    the wrong type or shape, NaN or Inf entries, no examples, or an L2 norm above ``max_norm`` (0 = none)."""
    if not isinstance(update, ClientUpdate) or not isinstance(update.delta, torch.Tensor):
        return f"not a ClientUpdate with a tensor delta (got {type(update).__name__})"
    delta = update.delta
    if not delta.is_floating_point():
        return f"delta has dtype {delta.dtype}, expected a floating point type"
    if tuple(delta.shape) != (numel,):
        return f"delta has shape {list(delta.shape)}, the global adapter has [{numel}]"
    bad = int((~torch.isfinite(delta)).sum())
    if bad:
        return f"delta has {bad} NaN or Inf entries"
    if update.num_examples < 1:
        return f"num_examples is {update.num_examples}"
    norm = float(delta.float().norm())
    if max_norm > 0 and norm > max_norm:
        return f"delta norm {norm:.4g} exceeds aggregation.max_update_norm={max_norm:g}"
    return None
