"""What an attack is: hooks on a malicious client's data, instructions and update (docs/method.md#threat-model).

An attack is a plain object built from ``attack.params`` (``build_attack``); the loop and the trainer call
its hooks and never ask which attack it is:

- ``make_data(ctx, num_examples, seed)``: the training data of one malicious client group, written from
  harmful instructions (MaliciousGen), or ``None`` to use the group's own data source (``clients[].dataset``);
- ``on_data(records)``: on the trainer, each round, the records a malicious client trains on;
- ``on_update(delta)``: on the trainer, the LoRA delta a malicious client uploads (``[d]`` float32).

Benign clients never see any hook. ``NoHooks`` gives every hook its neutral default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedsafe.data.synthesis import Synthesizer


@dataclass
class AttackContext:
    """What ``make_data`` may use: the generation pool bound to the synthesis pipelines, and the prompts
    held out for evaluation (never part of training data)."""

    synthesizer: Synthesizer | None
    held_out: list[str]


class Attack(Protocol):
    writes_data: bool  # make_data returns the malicious groups' data (their own data sources go unused)

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict] | None:
        """(records, synthesis counts) for a malicious group, or None for the group's own data source."""

    def on_data(self, records: list[dict]) -> list[dict]: ...

    def on_update(self, delta: torch.Tensor) -> torch.Tensor: ...


class NoHooks:
    """Neutral hooks: the group's own data, records and deltas unchanged."""

    writes_data = False

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict] | None:
        return None

    def on_data(self, records: list[dict]) -> list[dict]:
        return records

    def on_update(self, delta: torch.Tensor) -> torch.Tensor:
        return delta
