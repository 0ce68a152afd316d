"""Normalised text for deduplication: evaluation prompts must never occur in training or defense data."""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable


def normalize_text(text: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def normalized(texts: Iterable[str]) -> set[str]:
    """The normalised forms of ``texts``."""
    return {normalize_text(t) for t in texts}


def outside(texts: Iterable[str], banned: set[str]) -> list[str]:
    """The ``texts`` whose normalised form is not in ``banned`` (``normalized`` of the texts to avoid), in
    order."""
    return [t for t in texts if normalize_text(t) not in banned]


def find_overlap(held_out: Iterable[str], others: Iterable[str]) -> list[str]:
    """The ``held_out`` texts whose normalised form also occurs in ``others``, in order."""
    seen = normalized(others)
    return [t for t in held_out if normalize_text(t) in seen]
