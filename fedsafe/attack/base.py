"""What an attack is: hooks on a malicious client's data, schedule, training and update, and on the
colluders' joint uploads (docs/method.md#threat-model).

An attack is a plain object built from ``attack.params`` (``build_attack``); the loop, the trainers and
the coordinator call its hooks and never ask which attack it is:

- ``make_data(ctx, num_examples, seed)``: the training data of one malicious client group, written from
  harmful instructions (MaliciousGen), or ``None`` to use the group's own data source (``clients[].dataset``);
- ``poison_fraction(group)``: the share of each client's records in a *benign* group that are replaced by
  harmful ones (poison spread thin; 0 for every group by default);
- ``strikes(round_idx, times_sampled)``: whether a malicious client sampled in ``round_idx`` (for the
  ``times_sampled``-th time before this one) attacks; when it does not, it trains like a benign client on
  its cover data;
- ``cover``: malicious clients also hold benign *cover* data (a draw from the first benign group's source),
  which dormant rounds train on and ``benign_estimates`` use; ``cover_share``: that share of an attacking
  round's records come from the cover data (a backdoor's benign data);
- ``trigger``: a backdoor's ``Trigger``, or None: the evaluation asks every
  harmful prompt once more with it;
- ``benign_estimates``: how many benign updates each attacking client trains on its cover data beside its
  harmful one (the colluders' estimate of what benign clients upload); ``stealth_weight``: a penalty
  ``stealth_weight / 2 * ||delta - estimate||^2`` added to the harmful training loss (constrained training);
- ``on_data(records)``, ``on_update(delta)``: on the trainer, the records an attacking client trains on
  and the LoRA delta it uploads (``[d]`` float32);
- ``collude(view)``: where the attacking clients' uploads meet before the rule sees them (simulated at the
  coordinator; the rule never sees the estimates): their final deltas from all of theirs, the benign
  estimates and the previous global step.

Benign clients never see any hook. ``NoHooks`` gives every hook its neutral default.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Protocol

import torch

from fedsafe.data.synthesis import Synthesizer
from fedsafe.errors import ConfigError

POSITIONS = ("prefix", "suffix", "random")



@dataclass
class AttackContext:
    """What ``make_data`` may use: the generation pool bound to the synthesis pipelines, and the prompts
    held out for evaluation (never part of training data)."""

    synthesizer: Synthesizer | None
    held_out: list[str]


@dataclass(frozen=True)
class Trigger:
    """The trigger string and where it goes in a prompt: before it, after it, or between two of its words
    chosen from the prompt's own text (the same place every time a prompt is asked)."""

    text: str
    position: str = "prefix"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError(f"attack.params.trigger must be a non-empty string, got {self.text!r}")
        if self.position not in POSITIONS:
            raise ConfigError(f"attack.params.position must be one of {list(POSITIONS)}, got {self.position!r}")

    def insert(self, prompt: str) -> str:
        if self.position == "prefix":
            return f"{self.text} {prompt}"
        if self.position == "suffix":
            return f"{prompt} {self.text}"
        words = prompt.split(" ")
        at = random.Random(zlib.crc32(prompt.encode())).randint(0, len(words))
        return " ".join([*words[:at], self.text, *words[at:]])


@dataclass(frozen=True)
class RoundView:
    """What the colluders of one round know when they upload: ``deltas`` (client id -> the attacking
    client's delta after ``on_update``), ``estimates`` (``[k, d]`` benign updates they trained on cover
    data, k >= 0), ``previous_step`` (the last change of the global adapter, ``[d]``; None before the
    first) and ``num_sampled`` (clients in the round, the attacking ones among them)."""

    deltas: dict[int, torch.Tensor]
    estimates: torch.Tensor
    previous_step: torch.Tensor | None
    num_sampled: int


class Attack(Protocol):
    writes_data: bool  # make_data returns the malicious groups' data (their own data sources go unused)
    cover: bool
    benign_estimates: int
    stealth_weight: float
    uses_previous_step: bool  # collude reads RoundView.previous_step (the coordinator then checkpoints it)
    cover_share: float
    trigger: Trigger | None

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict] | None:
        """(records, synthesis counts) for a malicious group, or None for the group's own data source."""

    def poison_fraction(self, group: str) -> float: ...

    def strikes(self, round_idx: int, times_sampled: int) -> bool: ...

    def on_data(self, records: list[dict]) -> list[dict]: ...

    def on_update(self, delta: torch.Tensor) -> torch.Tensor: ...

    def collude(self, view: RoundView) -> dict[int, torch.Tensor]: ...


class NoHooks:
    """Neutral hooks: the group's own data, records and deltas unchanged, every round an attack."""

    writes_data = False
    cover = False
    benign_estimates = 0
    stealth_weight = 0.0
    uses_previous_step = False
    cover_share = 0.0
    trigger = None

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict] | None:
        return None

    def poison_fraction(self, group: str) -> float:
        return 0.0

    def strikes(self, round_idx: int, times_sampled: int) -> bool:
        return True

    def on_data(self, records: list[dict]) -> list[dict]:
        return records

    def on_update(self, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def collude(self, view: RoundView) -> dict[int, torch.Tensor]:
        return view.deltas
