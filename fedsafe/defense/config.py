"""The defenses' typed configs (``defense`` and its sections). Plain data: loading them imports no torch; the
defenses (``fedsafe.defense``) are built from them by the preflight and each arm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsafe.errors import check as _check

DEFENSE_SCHEDULES = ("rounds", "session")
SCREENING_JUDGES = ("rule", "classifier", "both")
SCREENING_ACTIONS = ("reject", "downweight", "observe")


@dataclass
class ScreeningConfig:
    """``screening`` (``fedsafe.defense.screening``): each round, before aggregation, the generation pool
    answers ``num_harmful`` harmful canary prompts (source ``harmful``) and ``num_benign`` benign ones (source
    ``benign``) with the global adapter plus each client's update; canaries that occur in any evaluation or
    training set are skipped when drawing. A client whose canary safety (share judged safe by ``judge``:
    the rule judge, the classifier, or the mean of both) is more than ``threshold`` below the round's
    median client, or whose over-refusal on the benign canaries is more than ``refusal_threshold`` above the
    median, is acted on: ``reject`` (left out of the aggregate), ``downweight`` (its update scaled by
    ``downweight``), ``observe`` (recorded only)."""

    harmful: str = "harmbench"
    harmful_args: dict[str, Any] = field(default_factory=dict)
    num_harmful: int = 16
    benign: str = "sharegpt_heldout"
    benign_args: dict[str, Any] = field(default_factory=dict)
    num_benign: int = 8
    max_new_tokens: int = 32
    judge: str = "both"
    threshold: float = 0.25
    refusal_threshold: float = 0.5
    action: str = "reject"
    downweight: float = 0.1

    def __post_init__(self) -> None:
        _check(self.num_harmful >= 1, f"defense.screening.num_harmful must be >= 1, got {self.num_harmful}")
        _check(self.num_benign >= 0, f"defense.screening.num_benign must be >= 0, got {self.num_benign}")
        _check(self.max_new_tokens >= 1, f"defense.screening.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.judge in SCREENING_JUDGES,
               f"defense.screening.judge must be one of {SCREENING_JUDGES}, got {self.judge!r}")
        _check(self.action in SCREENING_ACTIONS,
               f"defense.screening.action must be one of {SCREENING_ACTIONS}, got {self.action!r}")
        _check(0 <= self.threshold <= 1, f"defense.screening.threshold must be in [0, 1], got {self.threshold}")
        _check(0 <= self.refusal_threshold <= 1,
               f"defense.screening.refusal_threshold must be in [0, 1] (1 = off), got {self.refusal_threshold}")
        _check(0 <= self.downweight < 1, f"defense.screening.downweight must be in [0, 1), got {self.downweight}")


@dataclass
class ServerTrainingConfig:
    """What a server-side training before round 0 shares (hardening, the projection's two adapters): ``steps``
    steps of ``batch_size`` records drawn from ``num_examples``, at ``lr``. ``section`` names it in errors."""

    section = "defense"  # a class attribute, not a field
    num_examples: int = 64
    steps: int = 16
    batch_size: int = 4
    lr: float = 1e-3

    def __post_init__(self) -> None:
        for key in ("num_examples", "steps", "batch_size"):
            _check(getattr(self, key) >= 1, f"{self.section}.{key} must be >= 1, got {getattr(self, key)}")
        _check(self.lr > 0, f"{self.section}.lr must be > 0, got {self.lr}")


@dataclass
class ProjectionConfig(ServerTrainingConfig):
    """``projection`` (``fedsafe.defense.projection``): before round 0 the server writes ``num_examples``
    harmful instructions with two answers each (a refusal and a compliant answer, both by the off-the-shelf
    model, DefenseGen's and MaliciousGen's suffixes, ``synthesis`` settings) and trains two adapters from the
    starting one for ``steps`` steps: on the aligned pairs and on the harmful pairs. Per LoRA layer their
    difference (harmful minus aligned) is the harmful direction; each round's aggregate loses its component
    along it in every layer where its cosine with the direction exceeds ``threshold``."""

    section = "defense.projection"
    lr: float = 2e-3
    synthesis: dict[str, Any] = field(default_factory=lambda: {"filter": "rule", "max_new_tokens": 96})
    threshold: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.threshold < 1, f"defense.projection.threshold must be in [0, 1), got {self.threshold}")


@dataclass
class HardeningConfig(ServerTrainingConfig):
    """``hardening`` (``fedsafe.defense.hardening``): before round 0 the server safety-tunes the starting
    adapter for ``steps`` steps on ``num_examples`` defense records (``level`` 1: ``defense.dataset``; 2:
    DefenseGen by the off-the-shelf model with ``defense.synthesis``), with the perturbation-aware objective
    (Vaccine): each step's loss is taken again with every decoder layer's hidden states pushed by ``rho``
    along their normalised loss gradient. ``rho: 0`` is the plain safety SFT on the same data."""

    section = "defense.hardening"
    level: int = 2
    rho: float = 2.0

    def __post_init__(self) -> None:
        _check(self.level in (1, 2), f"defense.hardening.level must be 1 (public set) or 2 (off-the-shelf model), "
                                     f"got {self.level}")
        super().__post_init__()
        _check(self.rho >= 0, f"defense.hardening.rho must be >= 0 (0 = plain safety SFT), got {self.rho}")


@dataclass
class DefenseConfig:
    """The server's defenses (``fedsafe.defense``, docs/method.md#defenses), by registered name; several
    joined by ``+`` compose (``screening+posthoc_sft``), each acting at its own stage.

    ``screening``, ``projection``, ``hardening``: their own sections below. ``params``: the settings of any
    other registered defense, by its name (``defense.params.<name>.<key>``; its own dataclass checks them).
    ``posthoc_sft``: after the last round the server fine-tunes the global adapter on ``num_examples``
    defense records for ``steps`` steps. ``level`` says what that data relies on (``DefenseLevel``): 1 the
    public set ``dataset`` (with ``dataset_args``), 2 DefenseGen by the off-the-shelf model, 3 DefenseGen by
    the aggregated model; ``synthesis`` holds DefenseGen's settings (instructions, normal, filter, sampling).
    ``schedule``: ``rounds`` as the authors run it, ``rounds`` rounds of ``steps / rounds`` steps, each on a
    fresh random subset with a fresh AdamW, lr cosine over the rounds (constant inside one); ``session``
    one run of ``steps`` steps with one optimizer, lr cosine over the steps.
    """

    name: str = "none"
    level: int = 1
    dataset: str = "toy_defense"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    synthesis: dict[str, Any] = field(default_factory=dict)
    num_examples: int = 1000
    steps: int = 500
    batch_size: int = 16
    lr: float = 5e-5
    min_lr: float = 1e-6
    schedule: str = "rounds"
    rounds: int = 50
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    hardening: HardeningConfig = field(default_factory=HardeningConfig)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The composed defenses' names (``none``: [])."""
        return [n for n in self.name.split("+") if n != "none"]

    def __post_init__(self) -> None:
        _check(self.schedule in DEFENSE_SCHEDULES,
               f"defense.schedule must be one of {DEFENSE_SCHEDULES}, got {self.schedule!r}")
        _check(self.rounds >= 1, f"defense.rounds must be >= 1, got {self.rounds}")
        _check(self.schedule == "session" or self.steps % self.rounds == 0,
               f"defense.steps ({self.steps}) must be a multiple of defense.rounds ({self.rounds}) with "
               "defense.schedule=rounds (steps per round = steps / rounds)")

        _check(self.level in (1, 2, 3),
               f"defense.level must be 1 (public set), 2 (off-the-shelf model) or 3 (the aggregated model), "
               f"got {self.level}")
        _check(self.steps >= 1, f"defense.steps must be >= 1, got {self.steps}")
        _check(self.num_examples >= 1, f"defense.num_examples must be >= 1, got {self.num_examples}")
        _check(self.batch_size >= 1, f"defense.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"defense.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"defense.min_lr must be in [0, defense.lr], got {self.min_lr}")
