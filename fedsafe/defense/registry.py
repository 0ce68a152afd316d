"""The defenses' registry: names to builders (``fedsafe.defense`` re-exports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsafe.defense.base import (
    Composed,
    Defense,
    DefenseBase,
    NoDefense,
    RoundUploads,
    Screened,
    ServerContext,
    defense_params,
)
from fedsafe.defense.hardening import Hardening
from fedsafe.defense.levels import DefenseLevel
from fedsafe.defense.posthoc import PosthocSFT
from fedsafe.defense.projection import Projection
from fedsafe.defense.screening import Screening
from fedsafe.errors import ConfigError

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig

__all__ = ["Defense", "DefenseBase", "DefenseLevel", "RoundUploads", "Screened", "ServerContext", "available_defenses",
           "build_defense", "defense_params", "defense_type", "register_defense"]

_DEFENSES: dict[str, type[DefenseBase]] = {}


def register_defense(name: str, defense: type[DefenseBase]) -> None:
    """Register ``defense`` (built from the ``DefenseConfig``; its ``data`` and ``salt`` declare what it needs)."""
    if name in _DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    _DEFENSES[name] = defense


def available_defenses() -> list[str]:
    return sorted(_DEFENSES)


def defense_type(name: str) -> type[DefenseBase]:
    """The registered class of defense ``name``."""
    if name not in _DEFENSES:
        raise ConfigError(f"defense.name must be one of {available_defenses()} or several joined by '+', got {name!r}")
    return _DEFENSES[name]


def build_defense(cfg: DefenseConfig) -> Defense:
    """A fresh defense for one arm (it may hold state between its stages); several names compose in the
    order given."""
    names = cfg.names
    unknown = [n for n in names if n not in _DEFENSES]
    if unknown or (not names and cfg.name != "none"):
        raise ConfigError(f"defense.name must be one of {available_defenses()} or several joined by '+', "
                          f"got {cfg.name!r}")
    if len(set(names)) < len(names):
        raise ConfigError(f"defense.name names a defense twice: {cfg.name!r}")
    flat = sorted(k for k, v in cfg.params.items() if not isinstance(v, dict))
    if flat:
        raise ConfigError(f"defense.params.{flat[0]} must be a mapping of that defense's settings "
                          f"(defense.params: {{{flat[0]}: {{setting: value}}}})")
    stray = sorted(set(cfg.params) - set(_DEFENSES))
    if stray:
        raise ConfigError(f"defense.params.{stray[0]}: not a defense; the keys of defense.params are defense names "
                          f"({available_defenses()})")
    parts = [_DEFENSES[n](cfg) for n in names]
    return NoDefense() if not parts else parts[0] if len(parts) == 1 else Composed(parts)


register_defense("none", NoDefense)
register_defense("hardening", Hardening)
register_defense("projection", Projection)
register_defense("screening", Screening)
register_defense("posthoc_sft", PosthocSFT)
