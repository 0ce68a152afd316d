"""Judges and metrics as pure functions of text and numbers: the rule (refusal keyword) judge, the classifier
judge, the LLM judges' prompt formats and parsers (the model behind a judge is passed in as a completion
function), and ``percent_true``, the share every judge's rate is."""

from __future__ import annotations

from collections.abc import Iterable


def percent_true(flags: Iterable[bool]) -> float:
    """Percent of ``flags`` that are true (0-100)."""
    flags = list(flags)
    if not flags:
        raise ValueError("a percentage needs at least one verdict")
    return 100.0 * sum(flags) / len(flags)
