"""Attacks by registered name (``attack.name``, with ``attack.params``): hooks on a malicious client's data,
schedule, training and update, and on the colluders' uploads (``fedsafe.attack.base``). A new attack is
one module plus one register line in ``registry``.

    from fedsafe.attack import build_attack
    attack = build_attack("scale_update", factor=5.0)
    attack.on_update(delta)
"""

from __future__ import annotations

__all__ = ["Attack", "AttackContext", "NO_ATTACK", "RoundView", "available_attacks", "build_attack", "register_attack"]


def __getattr__(name: str):
    """The registry and the attacks load on first use, so that ``fedsafe.attack.config`` (read while loading a
    config) imports no torch."""
    if name in __all__:
        from fedsafe.attack import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
