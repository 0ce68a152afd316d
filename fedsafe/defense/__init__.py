"""Defenses by registered name (``defense.name``): hooks at the server's stages (``fedsafe.defense.base``).
A new defense is one module plus one register line below.

``none``: nothing. ``posthoc_sft``: the post-hoc fine-tune on defense data of ``defense.level``
(``fedsafe.defense.posthoc``, ``fedsafe.defense.levels``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fedsafe.defense.base import Defense, NoDefense, ServerContext
from fedsafe.defense.levels import DefenseLevel
from fedsafe.defense.posthoc import PosthocSFT
from fedsafe.errors import ConfigError

if TYPE_CHECKING:
    from fedsafe.config import DefenseConfig

__all__ = ["Defense", "DefenseLevel", "ServerContext", "available_defenses", "build_defense", "register_defense"]

_DEFENSES: dict[str, Callable[[DefenseConfig], Defense]] = {}


def register_defense(name: str, factory: Callable[[DefenseConfig], Defense]) -> None:
    if name in _DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    _DEFENSES[name] = factory


def available_defenses() -> list[str]:
    return sorted(_DEFENSES)


def build_defense(cfg: DefenseConfig) -> Defense:
    """A fresh defense for one arm (it may hold state between its stages)."""
    if cfg.name not in _DEFENSES:
        raise ConfigError(f"defense.name must be one of {available_defenses()}, got {cfg.name!r}")
    return _DEFENSES[cfg.name](cfg)


register_defense("none", lambda cfg: NoDefense())
register_defense("posthoc_sft", PosthocSFT)
