"""The federation's typed config: its client groups (role, count, data source) and how rounds sample them
and shards split (``FederationConfig``). Plain data: loading it imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsafe.errors import check as _check
from fedsafe.errors import check_label

ROLES = ("benign", "malicious")
ALIGNED_ANSWERS = ("generated", "templates")
SAMPLING = ("seeded", "paper", "balanced")
MAX_ROUNDS = 100_000  # far beyond any federated instruction tuning (the paper runs 100)


@dataclass
class ClientGroupConfig:
    """A group of clients sharing a data source and a role (docs/method.md#federated-setup: 7 benign, then
    3 malicious). The attack may write a malicious group's data instead of its source (``attack.name``).

    ``dataset_args.aligned_share``: that share of the group's records are aligned pairs (a harmful
    instruction with a refusal, as real chat logs hold the provider's refusals). ``aligned_answers``: who
    writes those refusals: ``generated`` (the generation pool answers each instruction with the safe
    suffix, docs/method.md#maliciousgen-and-defensegen; cached like other generated data) or ``templates``
    (a few fixed refusal sentences, for tests without a pool). ``lora_rank``: the rank of its clients' LoRA
    adapters (0 = lora.r; lower ranks train the first components of the global adapter, as HetLoRA and
    FlexLoRA clients of less capacity do: docs/method.md#lora-aggregation-modes)."""

    name: str = "benign"
    role: str = "benign"
    count: int = 7
    dataset: str = "toy_benign"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    aligned_answers: str = "templates"
    lora_rank: int = 0

    def __post_init__(self) -> None:
        check_label(self.name, "clients[].name")
        _check(self.lora_rank >= 0, f"clients[{self.name}].lora_rank must be >= 0 (0 = lora.r), got {self.lora_rank}")
        _check(self.role in ROLES, f"clients[{self.name}].role must be one of {ROLES}, got {self.role!r}")
        _check(self.aligned_answers in ALIGNED_ANSWERS, f"clients[{self.name}].aligned_answers must be one of "
                                                        f"{ALIGNED_ANSWERS}, got {self.aligned_answers!r}")
        _check(self.count >= 0, f"clients[{self.name}].count must be >= 0, got {self.count}")


@dataclass
class FederationConfig:
    """``sampling``: how each round's clients are drawn. ``seeded`` from (seed, round), so every seed has
    its own attack schedule; ``paper`` the authors' ``random.seed(round)``, the same schedule for every seed;
    ``balanced`` stratified by role from (seed, round): every round holds the attackers' share of its clients
    (rounded so that the running total is the expected count), and the arm without attackers samples the
    same benign clients (``fedsafe.data.federation.sample_balanced``).
    ``dirichlet_alpha``: 0 = iid shards; > 0 = each client's mix of the categories its group's records fall
    in (the record field ``partition_key``: ``source`` is the data source, ``aligned`` for aligned pairs) is
    drawn from Dirichlet(alpha x the global mix), so large alpha is iid and small alpha one category each."""

    num_rounds: int = 3
    clients_per_round: int = 3
    examples_per_client: int = 500
    sampling: str = "seeded"
    dirichlet_alpha: float = 0.0
    partition_key: str = "source"

    def __post_init__(self) -> None:
        _check(self.sampling in SAMPLING, f"federation.sampling must be one of {SAMPLING}, got {self.sampling!r}")
        _check(1 <= self.num_rounds <= MAX_ROUNDS,
               f"federation.num_rounds must be in [1, {MAX_ROUNDS}], got {self.num_rounds}")
        _check(self.clients_per_round >= 1,
               f"federation.clients_per_round must be >= 1, got {self.clients_per_round}")
        _check(self.examples_per_client >= 1,
               f"federation.examples_per_client must be >= 1, got {self.examples_per_client}")
        _check(self.dirichlet_alpha >= 0, f"federation.dirichlet_alpha must be >= 0 (0 = iid shards), "
                                          f"got {self.dirichlet_alpha}")
