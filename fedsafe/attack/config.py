"""The attack's typed config (``attack``): a registered name and its parameters, which the attack's own
constructor checks (``fedsafe.attack.build_attack``, run by the preflight). Plain data: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsafe.errors import check as _check


@dataclass
class AttackConfig:
    """The attack of the malicious clients (``fedsafe.attack``, docs/method.md#threat-model), by registered
    name, with its parameters: ``data_poisoning`` (their group's data source), ``maliciousgen`` (data written
    by the generation pool; params: instructions, seeds, filter, sampling), ``scale_update`` (factor)."""

    name: str = "data_poisoning"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "attack.name must name an attack (e.g. data_poisoning)")
