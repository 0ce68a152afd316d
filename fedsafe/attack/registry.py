"""The attacks' registry: names to builders (``fedsafe.attack`` re-exports it)."""

from __future__ import annotations

import inspect
from typing import Callable

from fedsafe.attack.backdoor import Backdoor
from fedsafe.attack.base import Attack, AttackContext, NoHooks, RoundView
from fedsafe.attack.constrained import Constrained
from fedsafe.attack.defense_aware import DefenseAware
from fedsafe.attack.maliciousgen import MaliciousGen
from fedsafe.attack.poisoning import DataPoisoning, ScaleUpdate
from fedsafe.attack.schedules import Intermittent, Sleeper, Sybil
from fedsafe.attack.thin import ThinPoison
from fedsafe.errors import ConfigError

__all__ = ["Attack", "AttackContext", "NO_ATTACK", "RoundView", "available_attacks", "build_attack", "register_attack"]

_ATTACKS: dict[str, Callable[..., Attack]] = {}
NO_ATTACK: Attack = NoHooks()  # what benign clients get


def register_attack(name: str, factory: Callable[..., Attack]) -> None:
    if name in _ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")
    _ATTACKS[name] = factory


def available_attacks() -> list[str]:
    return sorted(_ATTACKS)


def build_attack(name: str, **params) -> Attack:
    """The attack ``name`` built from ``params``; ConfigError names the known attacks or the bad parameter."""
    if name not in _ATTACKS:
        raise ConfigError(f"attack.name must be one of {available_attacks()}, got {name!r}")
    factory = _ATTACKS[name]
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as err:
        raise ConfigError(f"attack.params for {name}: {err}") from None
    return factory(**params)


register_attack("data_poisoning", DataPoisoning)
register_attack("scale_update", ScaleUpdate)
register_attack("maliciousgen", MaliciousGen)
register_attack("defense_aware", DefenseAware)
register_attack("constrained", Constrained)
register_attack("sleeper", Sleeper)
register_attack("intermittent", Intermittent)
register_attack("sybil", Sybil)
register_attack("thin_poison", ThinPoison)
register_attack("backdoor", Backdoor)
