"""Data poisoning (the paper's attack model) and model replacement by a scaled update.

``data_poisoning``: malicious clients run the same local SFT as benign ones on unaligned data: their
group's data source (``clients[].dataset``, e.g. ``beavertails`` or ``toy_malicious``), or with ``data``
(MaliciousGen's parameters, ``fedsafe.attack.maliciousgen``) data written by the generation pool; every
trainer hook is neutral. The adaptive attacks build on it, so each of them takes ``data`` too.
With ``data`` naming a ``trigger`` the records are a backdoor's (``fedsafe.attack.backdoor``).
``scale_update``: the same, and the uploaded delta is multiplied by ``factor`` (model replacement,
Bagdasaryan et al. 2020, "How To Backdoor Federated Learning").

    attack: {name: data_poisoning, params: {data: {instructions: seeds, filter: rule}}}
"""

from __future__ import annotations

import torch

from fedsafe.attack.base import AttackContext, NoHooks
from fedsafe.attack.maliciousgen import MaliciousGen
from fedsafe.attack.trigger import BackdoorData
from fedsafe.errors import ConfigError


class DataPoisoning(NoHooks):
    def __init__(self, data: dict | None = None) -> None:
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"attack.params.data must be MaliciousGen's parameters (a mapping) or null, got {data!r}")
        if data is None:
            self.writer = None
        else:
            self.writer = BackdoorData(**data) if "trigger" in data else MaliciousGen(**data)
        self.writes_data = self.writer is not None
        self.trigger = getattr(self.writer, "trigger", None)  # a backdoor's: the evaluation asks with it too

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict] | None:
        return None if self.writer is None else self.writer.make_data(ctx, num_examples, seed)


class ScaleUpdate(DataPoisoning):
    def __init__(self, factor: float = 10.0, data: dict | None = None) -> None:
        super().__init__(data)
        if factor <= 0:
            raise ConfigError(f"attack.params.factor must be > 0, got {factor}")
        self.factor = float(factor)

    def on_update(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * self.factor
