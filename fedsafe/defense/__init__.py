"""Defenses by registered name (``defense.name``; several joined by ``+`` compose): hooks at the server's
stages (``fedsafe.defense.base``). A new defense is one module plus one register line in ``registry``.

``none``: nothing. ``hardening``: the starting adapter safety-tuned with a perturbation-aware objective
before round 0 (``fedsafe.defense.hardening``). ``projection``: each round's aggregate loses its component
along a harmful direction per LoRA layer (``fedsafe.defense.projection``). ``screening``: each round, uploads
that make the model answer canary prompts less safely than the round's median client are rejected or
down-weighted (``fedsafe.defense.screening``). ``posthoc_sft``: the post-hoc fine-tune on defense data of
``defense.level`` (``fedsafe.defense.posthoc``, ``fedsafe.defense.levels``).
"""

from __future__ import annotations

__all__ = ["Defense", "DefenseBase", "DefenseLevel", "RoundUploads", "Screened", "ServerContext", "available_defenses",
           "build_defense", "defense_params", "defense_type", "register_defense"]


def __getattr__(name: str):
    """The registry and the defenses load on first use, so that ``fedsafe.defense.config`` (read while loading a
    config) imports no torch."""
    if name in __all__:
        from fedsafe.defense import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
