"""What a report reads from a run folder beside ``results.json``, read once (``read_records``), so that every
table and plot is a function of the results and these records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedsafe import analysis
from fedsafe.run_dir import read_rounds


@dataclass(frozen=True)
class RunRecords:
    """``rounds``: each federated run's round records (``metrics.jsonl``), by federation key (every seed's);
    ``clients``: its ``clients.json`` (client ids, roles, cosine similarities of their summed updates) where it wrote one;
    ``disagreements``: per attacked arm, the answers of its first seed that only one judge calls safe
    (``fedsafe.analysis.disagreement_sample``)."""

    rounds: dict[str, list[dict]] = field(default_factory=dict)
    clients: dict[str, dict] = field(default_factory=dict)
    disagreements: dict[str, list[dict]] = field(default_factory=dict)


def federation_of(arm: dict, run: dict) -> str:
    """The key of one seed's federated run: the arm's own (its first seed's) where the run shares its folder,
    else the run's, or its folder's name (a federation folder is named by its key)."""
    folder = run.get("federation_dir", arm["federation_dir"])
    if folder == arm["federation_dir"]:
        return arm["federation"]
    return run.get("federation") or Path(folder).name


def read_records(results: dict, samples_per_side: int = 4) -> RunRecords:
    """The records of the federated runs (every seed's) and arms ``results`` names (folders that are gone give
    nothing)."""
    rounds, clients = {}, {}
    for arm in results["arms"].values():
        for run in arm.get("runs") or [arm]:  # each seed's federated run
            key, folder = federation_of(arm, run), Path(run.get("federation_dir", arm["federation_dir"]))
            if key in rounds:
                continue
            rounds[key] = read_rounds(folder)
            if (folder / "clients.json").is_file():
                clients[key] = json.loads((folder / "clients.json").read_text())
    disagreements = {name: sample for name, arm in results["arms"].items()
                     if analysis.attacked(arm) and (sample := analysis.disagreement_sample(arm, samples_per_side))}
    return RunRecords(rounds, clients, disagreements)
