"""The defense level: what the server's defense data relies on (docs/method.md#defense-levels).

The level is this one type everywhere: ``defense.level`` in a config, ``defense_level`` of a matrix arm
(0 there means no defense), and the results.
"""

from __future__ import annotations

from enum import IntEnum


class DefenseLevel(IntEnum):
    PUBLIC = 1  # samples of an existing public data set (``defense.dataset``), as they are
    OFF_THE_SHELF = 2  # DefenseGen: written by an off-the-shelf LLM (``generation.model``)
    GLOBAL_MODEL = 3  # DefenseGen: written by the aggregated (possibly attacked) model itself

    @property
    def needs_trained_model(self) -> bool:
        """Level 3's data can only be written after the last round."""
        return self is DefenseLevel.GLOBAL_MODEL
