"""The defenses' registry: names to builders (``fedsafe.defense`` re-exports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fedsafe.defense.base import Composed, Defense, NoDefense, RoundUploads, Screened, ServerContext
from fedsafe.defense.hardening import Hardening
from fedsafe.defense.levels import DefenseLevel
from fedsafe.defense.posthoc import PosthocSFT
from fedsafe.defense.projection import Projection
from fedsafe.defense.screening import Screening
from fedsafe.errors import ConfigError

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig

__all__ = ["Defense", "DefenseLevel", "RoundUploads", "Screened", "ServerContext", "available_defenses",
           "build_defense", "register_defense"]

_DEFENSES: dict[str, Callable[[DefenseConfig], Defense]] = {}


def register_defense(name: str, factory: Callable[[DefenseConfig], Defense]) -> None:
    if name in _DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    _DEFENSES[name] = factory


def available_defenses() -> list[str]:
    return sorted(_DEFENSES)


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
    parts = [_DEFENSES[n](cfg) for n in names]
    return NoDefense() if not parts else parts[0] if len(parts) == 1 else Composed(parts)


register_defense("none", lambda cfg: NoDefense())
register_defense("hardening", Hardening)
register_defense("projection", Projection)
register_defense("screening", Screening)
register_defense("posthoc_sft", PosthocSFT)
