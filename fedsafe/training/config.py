"""Local training's typed config (``train``). Plain data: loading it imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from fedsafe.errors import check as _check


@dataclass
class TrainConfig:
    """Local SFT of each sampled client (docs/method.md#federated-setup): fresh AdamW per round, lr cosine
    over rounds. ``gradient_checkpointing``: keep only each decoder layer's input for the backward pass and
    recompute the rest (the authors' code trains so; a 16 x 512 batch of a 7B model needs tens of GiB of
    activations without it)."""

    lr: float = 5e-5
    min_lr: float = 1e-6
    local_steps: int = 10
    batch_size: int = 16
    max_length: int = 512
    weight_decay: float = 0.0
    threads_per_trainer: int = 1
    gradient_checkpointing: bool = False  # recompute the decoder layers' activations in the backward pass

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr={self.lr}], got {self.min_lr}")
        _check(self.local_steps >= 1, f"train.local_steps must be >= 1, got {self.local_steps}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_length >= 8, f"train.max_length must be >= 8, got {self.max_length}")
        _check(self.threads_per_trainer >= 1,
               f"train.threads_per_trainer must be >= 1, got {self.threads_per_trainer}")
