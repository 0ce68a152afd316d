"""Seeds derive from (experiment seed, round, client id, ...): no global RNG state crosses calls.

Where a seed has no round or client, a named salt from ``Salt`` keeps the streams apart, e.g.
``derive_seed(cfg.seed, Salt.DEFENSE)`` for the server's defense data and fine-tune.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Salt(IntEnum):
    """The seed salts of the loop's own streams: each names the stream it seeds (values fixed: changing one
    changes every run's data or answers). A defense declares the salt of its streams itself (its ``salt``);
    every salt differs from every other (tests/test_defense.py)."""

    BENIGN_PROMPTS = 31  # which held-out benign prompts evaluation uses
    ROOT_DATA = 7727  # the server's root data (rules that need a server update)
    EVALUATION = 7919  # sampling of the evaluated model's answers
    DEFENSE = 104729  # the server's defense data and post-hoc fine-tune
    SAMPLING = 15485863  # which clients each round samples (federation.sampling: seeded)
    ALIGNED = 32452843  # benign clients' aligned answers written by the generation pool
    COVER = 49979687  # malicious clients' benign cover data and the subsets their benign estimates train on
    POISON = 67867967  # poison spread thin: the harmful records and where they go in each shard


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part, e.g. ``derive_seed(seed, round, client_id)``."""
    if any(int(p) < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative integers, got {parts}")
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
