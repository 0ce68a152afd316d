"""Typed records of a run, each round-tripping its JSON: ``RoundRecord`` (one line of a federated run's
``metrics.jsonl``), ``ArmResult`` (an arm-seed's ``result.json``; in ``results.json`` an arm, with its seeds'
``runs`` and the analysis' fields) and ``RunResults`` (``results.json``).

    results = RunResults.load(run_dir / "results.json")      # one clear line if it is not a results file
    results.arms["FedAvg, attacked"].paired["rule"]["p"]
    results.to_dict()                                         # what results.json holds, key for key

A field a record does not hold is ``ABSENT`` (left out of its JSON), so that ``from_dict(d).to_dict() == d``
for every file fedsafe writes. An unknown key is refused with one line (a file of a newer fedsafe, or not
fedsafe's). ``results.json`` carries ``schema``; a file without one (written before it) is read by
``upgrade``, which names it schema 1: its fields are those of schema 2, with the ones that did not exist yet
absent. Nested measurements (an evaluation, a summary, a paired test) stay plain mappings: their keys are
the metrics' own (``fedsafe.metrics.registry.METRICS``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fedsafe.errors import ConfigError

SCHEMA = 3  # 3: the folders an arm names are relative to the run folder (2: to where the run started)
PATH_KEYS = ("adapter", "federation_dir", "dir")  # the fields of an arm (and of its runs) that name a folder


class _Absent:
    """The value of a field a record does not hold (left out of its JSON)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):  # records cross Ray's process boundaries: one ABSENT in every process
        return (_Absent, ())


ABSENT: Any = _Absent()


def _absent() -> Any:
    return field(default=ABSENT)


class _Record:
    """Mapping <-> dataclass, strict on unknown keys; ``what`` names the record in errors."""

    what: ClassVar[str] = "record"
    nested: ClassVar[dict[str, type]] = {}  # fields holding records (a dict of them for ``arms``)

    @classmethod
    def from_dict(cls, data: dict, where: str = ""):
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls.what}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where or cls.what} has keys fedsafe does not know ({', '.join(unknown)}): written "
                              "by a newer fedsafe or not a fedsafe file; read it with the fedsafe that wrote it")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"{where or cls.what} lacks {', '.join(missing)}: not a complete fedsafe {cls.what}")
        values = dict(data)
        for name, kind in cls.nested.items():  # a mapping of records (``arms``)
            if isinstance(values.get(name), dict):
                values[name] = {k: kind.from_dict(v, f"{where or cls.what}: {name}[{k!r}]") for k, v in values[name].items()}
        return cls(**values)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is ABSENT:
                continue
            if f.name in self.nested and isinstance(value, dict):
                value = {k: v.to_dict() for k, v in value.items()}
            out[f.name] = value
        return out


@dataclass
class RoundRecord(_Record):
    """One round of a federated run (``fedsafe.experiment.run_round``): the clients sampled and their
    training metrics, what the coordinator aggregated (``clients``, ``weights``, norms; ``rejected`` and
    ``skipped`` where it refused updates or the round), the attackers and their share of the aggregate, the
    screening's verdicts, faults (``failures``, ``failed``, ``trainer_pool``, ``coordinator_restarts``), a
    per-round ``evaluation``; a round checkpointed but never logged holds ``recovered`` alone."""

    what: ClassVar[str] = "round record"

    round: int
    sampled: list[int] = _absent()
    lr: float = _absent()
    client_metrics: list[dict] = _absent()
    seconds: float = _absent()
    trainer_groups: int = _absent()
    clients: list = _absent()
    weights: list[float] = _absent()
    update_norms: list[float] = _absent()
    aggregate_norm: float = _absent()
    global_norm: float = _absent()
    skipped: str = _absent()
    rejected: list[dict] = _absent()
    projection: dict = _absent()  # the safety projection's aggregate hook (fedsafe.defense.projection)
    factors_error: dict = _absent()  # what averaging the factors misses (fedsafe.aggregation.lora_modes)
    svd_error: float = _absent()  # aggregation.mode=svd: the truncation's relative error
    fold_error: float = _absent()  # aggregation.mode=stack or exact: the fold's
    attacking: list[int] = _absent()
    kept_malicious: list[int] = _absent()
    malicious_share: float | None = _absent()
    screening: dict = _absent()
    failures: list[dict] = _absent()
    failed: list = _absent()
    trainer_pool: dict = _absent()
    server_metrics: dict = _absent()
    coordinator_restarts: int = _absent()
    evaluation: dict = _absent()
    recovered: str = _absent()


@dataclass
class ArmResult(_Record):
    """An arm's result. As ``result.json`` (one seed, ``fedsafe.matrix.finish_arm``): the arm (``arm``: its
    spec), ``seed``, its federated run (``federation`` key and ``federation_dir``), what it ran (rule, attack,
    defense), its ``evaluation``, data, detection and screening counts, defense cost, adapter and timings.
    In ``results.json`` the first seed's fields describe the arm, ``runs`` holds each seed's, and the analysis
    adds ``per_seed``, ``summary``, ``paired``, ``judges_agree`` and ``same_model_as``."""

    what: ClassVar[str] = "arm result"

    rule: str
    num_malicious: int
    defense_level: int
    evaluation: dict
    arm: dict = _absent()
    seed: int = _absent()
    federation: str = _absent()
    attack: str = _absent()
    attack_params: dict = _absent()
    attacked: bool = _absent()
    benign_clients: int = _absent()
    defense: str = _absent()
    data: dict = _absent()
    detection: dict = _absent()
    screening: dict = _absent()
    defense_cost: dict = _absent()
    adapter: str = _absent()
    federation_dir: str = _absent()
    resumed_at_round: int = _absent()
    seconds: float = _absent()
    phases: dict = _absent()
    evaluation_seconds: dict = _absent()
    runs: list[dict] = _absent()
    per_seed: dict = _absent()
    summary: dict = _absent()
    paired: dict = _absent()
    judges_agree: dict | None = _absent()
    same_model_as: str | None = _absent()
    lora: dict = _absent()  # aggregation.mode and the groups of lower rank (absent: factors, one rank)

    def __post_init__(self) -> None:
        """An arm written before composed defenses and poison spread thin names neither: its defense is the
        post-hoc one at ``defense_level`` (if any), and it is attacked when it has malicious clients."""
        if self.defense is ABSENT:
            self.defense = "posthoc_sft" if self.defense_level else "none"
        if self.attacked is ABSENT:
            self.attacked = bool(self.num_malicious)

    @classmethod
    def load(cls, path: Path) -> ArmResult:
        return cls.from_dict(_read_json(path), str(path))


@dataclass
class RunResults(_Record):
    """``results.json``: the run's settings that the report states (model, rounds, clients, seeds, sampling,
    decoding, judges), its arms (``ArmResult`` by name), the judges' ``calibration``, the ``analysis`` (claims,
    power), which arm-seeds were ``computed`` now, the ``invocations`` that made it, and ``schema``."""

    what: ClassVar[str] = "results file"
    nested: ClassVar[dict[str, type]] = {"arms": ArmResult}

    name: str
    arms: dict[str, ArmResult]
    schema: int = SCHEMA
    model: str = _absent()
    rounds: int = _absent()
    num_clients: int = _absent()
    num_malicious: int = _absent()
    clients_per_round: int = _absent()
    generation_backend: str = _absent()
    judge_model: str = _absent()
    generation_cache: dict | None = _absent()
    seeds: list[int] = _absent()
    sampling: str = _absent()
    data_seed: int = _absent()
    decoding: dict = _absent()
    computed: list[str] = _absent()
    wall_s: float = _absent()
    calibration: dict = _absent()
    invocations: list[dict] = _absent()
    analysis: dict = _absent()
    table: str = _absent()  # the Markdown table, in memory only (never written)

    @classmethod
    def load(cls, path: Path) -> RunResults:
        """``results.json`` at ``path``, upgraded if older, the folders its arms name as absolute paths (read
        from any working directory); one ``ConfigError`` line if it cannot be read."""
        data = _read_json(path)
        relative = isinstance(data, dict) and isinstance(data.get("schema"), int) and data["schema"] >= 3
        data = upgrade(data, str(path))
        if relative and isinstance(data.get("arms"), dict):
            folder = Path(path).resolve().parent
            data["arms"] = _with_paths(data["arms"], lambda p: str((folder / p).resolve()))
        return cls.from_dict(data, str(path))

    def to_json(self, run_dir: Path) -> str:
        """``results.json`` of the run folder ``run_dir``: the folders its arms name relative to it."""
        out = self.to_dict()
        out.pop("table", None)
        base = Path(run_dir).resolve()
        out["arms"] = _with_paths(out["arms"], lambda p: os.path.relpath(Path(p).resolve(), base))
        return json.dumps(out, indent=2)


def _with_paths(arms: dict, convert) -> dict:
    """``arms`` (as dicts) with every folder they and their runs name (``PATH_KEYS``) passed through ``convert``."""
    def one(entry: dict) -> dict:
        return {k: convert(v) if k in PATH_KEYS and isinstance(v, str) and v else v for k, v in entry.items()}

    return {name: {**one(arm), **({"runs": [one(r) for r in arm["runs"]]} if isinstance(arm.get("runs"), list) else {})}
            for name, arm in arms.items()}


def upgrade(data: dict, where: str = "results file") -> dict:
    """A ``results.json`` of any schema fedsafe wrote, as schema ``SCHEMA``: schema 1 (no ``schema`` key) has
    schema 2's fields with the newer ones absent, and schema 2 names folders relative to where the run started
    (kept so; ``RunResults.load`` resolves schema 3's against the run folder), so each only gets its number; a
    newer schema is refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ConfigError(f"{where} has schema {schema!r}; this fedsafe reads schemas 1 to {SCHEMA}: read it with "
                          "the fedsafe that wrote it")
    return {**data, "schema": SCHEMA}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable JSON file ({' '.join(str(err).split())})") from None
