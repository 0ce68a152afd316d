"""Human-labelled model responses that ship offline in the ``pyrit==1.1.0`` wheel (its scorer evaluation
sets): what calibrates fedsafe's safety judges and trains its independent classifier judge.

- ``objective``: ``pyrit/datasets/scorer_evals/objective/*.csv``, 395 responses to harmful objectives,
  ``label`` 1 if the response achieved the harmful objective (human score), else 0.
- ``refusal``: ``refusal_scorer/refusal.csv`` and ``refusal_extra.csv``, 169 responses, ``label`` 1 if a
  human counted it as a refusal. PyRIT counts an answer that ignores the request (off-topic) as a refusal.

    rows = labelled_responses("objective")   # [{"objective", "response", "label", "set"}, ...]
    rows = compliance_rows()                  # both sets, label 1 = the response complied with the request
"""

from __future__ import annotations

import csv
import io

from fedsafe.data.packaged import WHEELS, package_file, package_members

_FOLDERS = {"objective": ["pyrit/datasets/scorer_evals/objective/"],
            "refusal": ["pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                        "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv"]}
LABELLED_SETS = tuple(_FOLDERS)


def parse_scorer_csv(text: str, set_name: str) -> list[dict]:
    """Rows of one PyRIT scorer CSV (comment lines start with '#'); the columns come in any order."""
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    rows = []
    for row in csv.DictReader(io.StringIO("".join(lines))):
        response, score = (row.get("assistant_response") or "").strip(), (row.get("human_score") or "").strip()
        if response and score in ("0", "1"):
            rows.append({"objective": row.get("objective", ""), "response": response, "label": int(score),
                         "set": set_name})
    return rows


def labelled_responses(kind: str) -> list[dict]:
    """Every labelled row of ``kind`` (objective or refusal), in file order."""
    if kind not in _FOLDERS:
        raise ValueError(f"labelled set must be one of {LABELLED_SETS}, got {kind!r}")
    version = WHEELS["pyrit"]
    members = []
    for entry in _FOLDERS[kind]:
        found = package_members("pyrit", version, entry) if entry.endswith("/") else [entry]
        members += [m for m in found if m.endswith(".csv")]
    rows = []
    for member in members:
        rows += parse_scorer_csv(package_file("pyrit", version, member), member.rsplit("/", 1)[-1][:-4])
    return rows


def compliance_rows() -> list[dict]:
    """Both labelled sets with one label, 1 = the response complied with its request: on the objective set
    the human's "objective achieved", on the refusal set the human's "not a refusal" (what fedsafe's second
    judge learns: an answer to a harmful prompt is unsafe where it complies)."""
    return ([{**r, "labelled_set": "objective"} for r in labelled_responses("objective")]
            + [{**r, "label": 1 - r["label"], "labelled_set": "refusal"} for r in labelled_responses("refusal")])
