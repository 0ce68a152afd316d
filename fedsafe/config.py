"""Typed experiment configuration: dataclasses validated on creation, YAML files, dotted overrides.

    from fedsafe.config import load_config
    cfg = load_config("configs/smoke.yaml", ["federation.num_rounds=2", "train.lr=1e-4"])

Merging and type checking are OmegaConf's (structured configs): an unknown key or a value of the wrong
type fails with the key's full name. Cross-field rules live in each dataclass's ``__post_init__`` and
fail with ``ConfigError`` naming the field, the value seen and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsafe.errors import ConfigError, check_sampling
from fedsafe.errors import check as _check
from fedsafe.specs import ENGINES, QUANTIZATIONS, ZERO_STAGES, LoRAConfig, ModelConfig, ServerOptConfig, TrainerConfig

__all__ = ["ENGINES", "QUANTIZATIONS", "ZERO_STAGES", "ConfigError", "ExperimentConfig", "LoRAConfig", "ModelConfig",
           "ServerOptConfig", "TrainerConfig", "load_config", "from_yaml_text", "to_yaml"]

ROLES = ("benign", "malicious")
ALIGNED_ANSWERS = ("generated", "templates")
SAMPLING = ("seeded", "paper", "balanced")
DEFENSE_SCHEDULES = ("rounds", "session")


@dataclass
class ClientGroupConfig:
    """A group of clients sharing a data source and a role (docs/method.md#federated-setup: 7 benign, then
    3 malicious). The attack may write a malicious group's data instead of its source (``attack.name``).

    ``dataset_args.aligned_share``: that share of the group's records are aligned pairs (a harmful
    instruction with a refusal, as real chat logs hold the provider's refusals). ``aligned_answers``: who
    writes those refusals: ``generated`` (the generation pool answers each instruction with the safe
    suffix, docs/method.md#maliciousgen-and-defensegen; cached like other generated data) or ``templates``
    (a few fixed refusal sentences, for tests without a pool)."""

    name: str = "benign"
    role: str = "benign"
    count: int = 7
    dataset: str = "toy_benign"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    aligned_answers: str = "templates"

    def __post_init__(self) -> None:
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
        _check(self.num_rounds >= 1, f"federation.num_rounds must be >= 1, got {self.num_rounds}")
        _check(self.clients_per_round >= 1,
               f"federation.clients_per_round must be >= 1, got {self.clients_per_round}")
        _check(self.examples_per_client >= 1,
               f"federation.examples_per_client must be >= 1, got {self.examples_per_client}")
        _check(self.dirichlet_alpha >= 0, f"federation.dirichlet_alpha must be >= 0 (0 = iid shards), "
                                          f"got {self.dirichlet_alpha}")


@dataclass
class TrainConfig:
    """Local SFT of each sampled client (docs/method.md#federated-setup): fresh AdamW per round, lr cosine
    over rounds. ``gradient_checkpointing``: keep only each decoder layer's input for the backward pass and
    recompute the rest (the authors' code trains so; a 16 x 512 batch of a 7B model needs tens of GiB of
    activations without it)."""

    lr: float = 5e-5
    min_lr: float = 1e-6
    local_steps: int = 10
    batch_size: int = 16
    max_length: int = 512
    weight_decay: float = 0.0
    threads_per_trainer: int = 1
    gradient_checkpointing: bool = False  # recompute the decoder layers' activations in the backward pass

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr={self.lr}], got {self.min_lr}")
        _check(self.local_steps >= 1, f"train.local_steps must be >= 1, got {self.local_steps}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_length >= 8, f"train.max_length must be >= 8, got {self.max_length}")
        _check(self.threads_per_trainer >= 1,
               f"train.threads_per_trainer must be >= 1, got {self.threads_per_trainer}")


@dataclass
class AggregationConfig:
    """Server rule by registered name (``fedsafe.aggregation``), its keyword parameters, and the server
    optimizer applied after it (``server_opt``).

    ``num_malicious``: the f the rule is told; -1 = round(clients_per_round * malicious / K), as in
    docs/method.md#aggregation-rules.
    ``root_dataset``: the server's root data (rules that need a server update, such as FLTrust).
    ``max_update_norm``: the coordinator rejects an update whose L2 norm exceeds it (0 = no bound); updates
    with NaN/Inf or the wrong shape are always rejected. ``min_updates``: a round whose accepted updates
    are fewer leaves the global adapter unchanged (recorded in the round's metrics).
    """

    rule: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)
    num_malicious: int = -1
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)
    root_dataset: str = ""
    root_dataset_args: dict[str, Any] = field(default_factory=dict)
    root_examples: int = 100
    max_update_norm: float = 0.0
    min_updates: int = 1

    def __post_init__(self) -> None:
        _check(self.max_update_norm >= 0, f"aggregation.max_update_norm must be >= 0 (0 = no bound), got "
                                          f"{self.max_update_norm}")
        _check(self.min_updates >= 1, f"aggregation.min_updates must be >= 1, got {self.min_updates}")

        _check(self.num_malicious >= -1, f"aggregation.num_malicious must be >= 0 (or -1 = auto), got {self.num_malicious}")
        _check(self.root_examples >= 1, f"aggregation.root_examples must be >= 1, got {self.root_examples}")


@dataclass
class AttackConfig:
    """The attack of the malicious clients (``fedsafe.attack``, docs/method.md#threat-model), by registered
    name, with its parameters: ``data_poisoning`` (their group's data source), ``maliciousgen`` (data written
    by the generation pool; params: instructions, seeds, filter, sampling), ``scale_update`` (factor)."""

    name: str = "data_poisoning"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "attack.name must name an attack (e.g. data_poisoning)")


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

    ``screening``, ``projection``, ``hardening``: their own sections below.
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


GENERATION_BACKENDS = ("vllm", "hf")


@dataclass
class GenerationConfig:
    """The generation and judging pool (``fedsafe.cluster.generation``): replicas per model, started on
    first use. ``model``: the off-the-shelf LLM that synthesizes attack data and Level-2 defense data
    (docs/method.md#maliciousgen-and-defensegen; "" = the base model). ``dtype`` auto: bfloat16 on GPUs,
    float32 on CPUs.
    ``gpus_per_replica``: a share of one GPU, or a whole number > 1 = vLLM's tensor-parallel size.
    ``cache``: reuse generations across runs, keyed by a hash of (model, adapter, prompts, sampling),
    under ``<output.root>/cache/generations``. ``hf_batch_size``: the most rows of one ``hf`` batch; prompts
    go in sorted by length and a batch is cut further where padding would cost more than decoding steps."""

    backend: str = "vllm"
    model: str = ""
    replicas: int = 1
    cpus_per_replica: int = 1
    gpus_per_replica: float = 0.0
    dtype: str = "auto"
    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_loras: int = 2
    kv_cache_gib: int = 2
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    hf_batch_size: int = 32
    cache: bool = True

    def __post_init__(self) -> None:
        _check(self.backend in GENERATION_BACKENDS,
               f"generation.backend must be one of {GENERATION_BACKENDS}, got {self.backend!r}")
        _check(self.replicas >= 1, f"generation.replicas must be >= 1, got {self.replicas}")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"),
               f"generation.dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")
        _check(self.cpus_per_replica >= 1, f"generation.cpus_per_replica must be >= 1, got {self.cpus_per_replica}")
        _check(0 < self.gpu_memory_utilization <= 1,
               f"generation.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        _check(self.hf_batch_size >= 1, f"generation.hf_batch_size must be >= 1, got {self.hf_batch_size}")
        for name in ("max_model_len", "max_num_seqs", "max_loras", "kv_cache_gib"):
            _check(getattr(self, name) >= 1, f"generation.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.gpus_per_replica >= 0, f"generation.gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
        _check(self.gpus_per_replica <= 1 or float(self.gpus_per_replica).is_integer(),
               f"generation.gpus_per_replica above 1 is the tensor-parallel size, a whole number; got "
               f"{self.gpus_per_replica}")
        _check(not 0 < self.gpus_per_replica < 1 or self.gpu_memory_utilization <= self.gpus_per_replica,
               f"generation.gpu_memory_utilization={self.gpu_memory_utilization} exceeds the replica's share of "
               f"its GPU (generation.gpus_per_replica={self.gpus_per_replica}); what it takes beyond its share "
               "would be the trainers'; lower it")


LLM_JUDGES = ("none", "md_judge", "llama_guard3")
HELPFULNESS_JUDGES = ("none", "pool", "endpoint")


@dataclass
class EvaluationConfig:
    """Safety and helpfulness of the global model (docs/method.md#metrics).

    ``every_n_rounds``: also evaluate the global model every n rounds, on the first ``round_num_prompts``
    harmful prompts (0 = the whole evaluation). ``client_similarity``: the coordinator keeps each client's
    summed update and writes their cosine similarities (``clients.json``; memory: one adapter per client).

    Safety on ``prompts`` (harmful): the rule judge always; ``llm_judge`` (MD-Judge or Llama-Guard-3 prompt
    format, served by the pool from ``judge_model``, "" = generation.model); ``reward_model`` (a sequence-
    classification model, "" = skipped). On ``benign_prompts`` (held-out benign pairs, "" = skipped):
    over-refusal (share refused, beside the share of the prompts' own reference answers the same judge
    counts as refusals), response loss (offline helpfulness proxy). MT-Bench-style 1-10 grades (MT-1) of the
    answers to ``helpfulness_prompts`` (e.g. ``mt_bench``, ``num_helpfulness`` of them; "" = the benign
    prompts) by ``helpfulness_judge``: ``pool`` (``helpfulness_model``, "" = judge model) or ``endpoint`` (an
    OpenAI-compatible URL in ``helpfulness_endpoint``, key in the environment variable ``helpfulness_key_env``),
    writing at most ``helpfulness_max_tokens`` (its explanation, then "Rating: [[n]]").
    ``rule_keywords``: the rule judge's variant (``fedsafe.metrics.rule``: fixed, paper, cased).
    ``classifier_judge``: also judge every answer with the keyword-free classifier (``fedsafe.metrics.classifier``).
    ``temperature`` 0 decodes greedily.
    """

    prompts: str = "toy_harmful_eval"
    prompts_args: dict[str, Any] = field(default_factory=dict)
    num_prompts: int = 96  # all of the default toy_harmful_eval; AdvBench holds 520
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    rule_keywords: str = "fixed"
    classifier_judge: bool = True
    every_n_rounds: int = 0
    round_num_prompts: int = 0
    client_similarity: bool = False
    llm_judge: str = "none"
    judge_model: str = ""
    reward_model: str = ""
    benign_prompts: str = ""
    benign_prompts_args: dict[str, Any] = field(default_factory=dict)
    num_benign: int = 100
    helpfulness_prompts: str = ""
    helpfulness_prompts_args: dict[str, Any] = field(default_factory=dict)
    num_helpfulness: int = 80
    helpfulness_judge: str = "none"
    helpfulness_model: str = ""
    helpfulness_endpoint: str = ""
    helpfulness_key_env: str = "OPENAI_API_KEY"
    helpfulness_max_tokens: int = 512

    def __post_init__(self) -> None:
        _check(self.llm_judge in LLM_JUDGES, f"evaluation.llm_judge must be one of {LLM_JUDGES}, got {self.llm_judge!r}")
        _check(self.helpfulness_judge in HELPFULNESS_JUDGES,
               f"evaluation.helpfulness_judge must be one of {HELPFULNESS_JUDGES}, got {self.helpfulness_judge!r}")
        _check(self.helpfulness_judge == "none" or bool(self.benign_prompts or self.helpfulness_prompts),
               "evaluation.helpfulness_judge needs evaluation.helpfulness_prompts (e.g. mt_bench) or "
               "evaluation.benign_prompts: the prompts it grades answers to")
        _check(self.num_helpfulness >= 1, f"evaluation.num_helpfulness must be >= 1, got {self.num_helpfulness}")
        _check(self.helpfulness_max_tokens >= 1,
               f"evaluation.helpfulness_max_tokens must be >= 1, got {self.helpfulness_max_tokens}")
        _check(self.helpfulness_judge != "endpoint" or bool(self.helpfulness_endpoint),
               "evaluation.helpfulness_judge=endpoint needs evaluation.helpfulness_endpoint (an OpenAI-compatible "
               "base URL such as https://api.openai.com/v1) and evaluation.helpfulness_model")
        _check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.helpfulness_key_env) is not None,
               "evaluation.helpfulness_key_env must be the NAME of an environment variable that holds the API key "
               "(e.g. OPENAI_API_KEY), never the key itself (the value given is not shown)")
        _check(self.num_prompts >= 1, f"evaluation.num_prompts must be >= 1, got {self.num_prompts}")
        _check(self.max_new_tokens >= 1, f"evaluation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_sampling(self.temperature, self.top_p, "evaluation.")
        _check(self.batch_size >= 1, f"evaluation.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_benign >= 1, f"evaluation.num_benign must be >= 1 (leave evaluation.benign_prompts empty "
                                     f"for none), got {self.num_benign}")
        _check(self.rule_keywords in ("fixed", "paper", "cased"),
               f"evaluation.rule_keywords must be fixed (the authors' judge), paper (with their missing comma) or "
               f"cased (case-sensitive), got {self.rule_keywords!r}")
        _check(self.every_n_rounds >= 0, f"evaluation.every_n_rounds must be >= 0, got {self.every_n_rounds}")
        _check(self.round_num_prompts >= 0,
               f"evaluation.round_num_prompts must be >= 0 (0 = all), got {self.round_num_prompts}")


@dataclass
class ClusterConfig:
    """Where to run. ``address`` None starts a local Ray (unless RAY_ADDRESS is set); "auto" joins one.

    ``num_trainers`` 0 means: as many trainers (trainer groups, with ``trainer.processes`` > 1) as the
    cluster's resources allow, at most the clients per round; ``cpus_per_trainer`` is per process.
    ``elastic``: between rounds, start trainers on nodes that joined; clients of a lost trainer always go
    to the others.

    ``concurrent_federations``: how many federations of a matrix (arms with different federated parts,
    and seeds) may run side by side on the one trainer pool and generation pool; 0 = as many as the
    trainer groups give ``clients_per_round`` each (so one at a time on a small machine), 1 = one after
    another. Results do not depend on it.

    Faults: a client whose trainer dies, fails or answers nothing within ``client_timeout_s`` (that
    trainer group is killed) is retried on another trainer up to ``max_retries`` times, then left out of
    the round (recorded under ``failures``). ``max_retries`` also bounds the restarts of a generation
    replica per call and of the coordinator per run. ``round_timeout_s`` bounds every other wait (placing
    and loading actors, aggregation, a generation call). ``dashboard_host``: where the dashboard (and job
    server) listen when ``dashboard`` is on; 127.0.0.1 keeps them off the network.
    """

    address: Optional[str] = None
    num_cpus: int = 0
    num_trainers: int = 0
    cpus_per_trainer: int = 1
    elastic: bool = True
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    round_timeout_s: float = 3600.0
    client_timeout_s: float = 3600.0
    max_retries: int = 2
    concurrent_federations: int = 0

    def __post_init__(self) -> None:
        _check(self.concurrent_federations >= 0, "cluster.concurrent_federations must be >= 0 (0 = as many as "
               f"the trainer groups allow), got {self.concurrent_federations}")
        _check(self.num_cpus >= 0, f"cluster.num_cpus must be >= 0 (0 = all of this machine), got {self.num_cpus}")
        _check(self.num_trainers >= 0, f"cluster.num_trainers must be >= 0 (0 = auto), got {self.num_trainers}")
        _check(self.cpus_per_trainer >= 1, f"cluster.cpus_per_trainer must be >= 1, got {self.cpus_per_trainer}")
        _check(self.round_timeout_s > 0, f"cluster.round_timeout_s must be > 0, got {self.round_timeout_s}")
        _check(self.client_timeout_s > 0, f"cluster.client_timeout_s must be > 0, got {self.client_timeout_s}")
        _check(self.max_retries >= 0, f"cluster.max_retries must be >= 0, got {self.max_retries}")


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class WandbConfig:
    """Weights & Biases (``output.trackers`` has ``wandb``). ``mode``: ``online``, ``offline`` (files under the
    run folder's ``wandb/``, uploaded later with ``wandb sync``) or ``null`` (W&B's own default, which
    ``WANDB_MODE`` sets)."""

    project: str = "fedsafe"
    entity: str | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        _check(self.mode in (None, "online", "offline", "disabled"),
               f"output.wandb.mode must be online, offline, disabled or null (W&B's default), got {self.mode!r}")


@dataclass
class MlflowConfig:
    """MLflow (``output.trackers`` has ``mlflow``). ``tracking_uri``: a tracking server or store (``null``: a
    local store in the run folder, ``mlflow.db`` with artifacts in ``mlruns/``; ``mlflow ui
    --backend-store-uri sqlite:///<run>/mlflow.db`` shows it)."""

    tracking_uri: str | None = None
    experiment: str = "fedsafe"


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class OutputConfig:
    """Where a run writes. ``trackers``: experiment trackers that get every round's scalars and, at the
    end, the result table and the report's plots (``fedsafe.tracking``): any of tensorboard, wandb, mlflow."""

    root: str = "runs"
    name: str = "experiment"
    keep_checkpoints: int = 2
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        unknown = [t for t in self.trackers if t not in TRACKERS]
        _check(not unknown, f"output.trackers: {unknown[0] if unknown else ''!r} is not a tracker; "
                            f"pick from {', '.join(TRACKERS)} (e.g. output.trackers=[tensorboard,wandb])")
        _check(len(set(self.trackers)) == len(self.trackers), f"output.trackers names one twice: {self.trackers}")
        _check(self.keep_checkpoints >= 1, f"output.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(RUN_NAME.fullmatch(self.name) is not None,
               f"output.name must be one folder name (letters, digits, '.', '_', '-', starting with a letter or "
               f"digit), got {self.name!r}; the run folder goes under output.root")
        _check(bool(self.root.strip()), "output.root must be a folder (e.g. runs), got an empty string")


@dataclass
class ArmConfig:
    """One arm of an experiment matrix (``fedsafe.matrix``): a variation of the run's own config.

    ``attack`` False: the malicious groups sit out (the federation is the benign clients alone).
    ``attack_name`` and ``attack_params``: the attack ("" = attack.name and its params). ``rule`` and
    ``rule_params``: the aggregation rule ("" = aggregation.rule and its params). ``defense_level``: 0 no
    defense; 1, 2, 3 the post-hoc fine-tune (``defense.name=posthoc_sft``) with ``defense.level`` set to it
    (``DefenseLevel``) and ``defense``'s other settings. ``defenses``: the defenses at the other stages
    (``screening``, ``projection``, ``hardening``, joined by ``+``; "" = those of ``defense.name``, ``none``
    = no other), composed with the post-hoc one. ``overrides``: any other changes, as on the command line
    (``clients.1.count=0``), applied last.
    """

    name: str = ""
    attack: bool = True
    attack_name: str = ""
    attack_params: dict[str, Any] = field(default_factory=dict)
    rule: str = ""
    rule_params: dict[str, Any] = field(default_factory=dict)
    defense_level: int = 0
    defenses: str = ""
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(self.name), "arms: every arm needs a name")
        _check("posthoc_sft" not in self.defenses.split("+"),
               f"arms[{self.name}].defenses: the post-hoc fine-tune is set by defense_level, not by name")
        _check(self.defense_level in (0, 1, 2, 3),
               f"arms[{self.name}].defense_level must be 0 (none), 1, 2 or 3; got {self.defense_level}")


@dataclass
class ExperimentConfig:
    """``seeds``: run every arm once per seed (empty = ``seed`` alone); the seed drives shards, LoRA init,
    the data drawn and generated, sampling and client sampling (``federation.sampling``).
    ``data_seed``: when >= 0, the data sets a run draws and generates (client records, attack data, aligned
    refusals, Level 1-2 defense data) come from it instead, so that every seed trains on the same data (a
    fixed input, as a published data set is) and seeds vary the federation: shards, LoRA init, client
    sampling, local batches, the defense's order, decoding. -1: the seed."""

    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    data_seed: int = -1
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    clients: list[ClientGroupConfig] = field(default_factory=lambda: [
        ClientGroupConfig(name="benign", role="benign", count=7, dataset="toy_benign"),
        ClientGroupConfig(name="malicious", role="malicious", count=3, dataset="toy_malicious"),
    ])
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    arms: list[ArmConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        _check(all(s >= 0 for s in self.seeds), f"seeds must be >= 0, got {self.seeds}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.data_seed >= -1, f"data_seed must be >= 0 (or -1 = the seed), got {self.data_seed}")
        arm_names = [a.name for a in self.arms]
        _check(len(set(arm_names)) == len(arm_names), f"arms: names must be unique, got {arm_names}")
        names = [g.name for g in self.clients]
        _check(len(set(names)) == len(names), f"clients: group names must be unique, got {names}")
        _check(self.num_clients >= 1, "clients: the groups hold no client; give at least one group count >= 1")
        _check(self.aggregation.min_updates <= self.federation.clients_per_round,
               f"aggregation.min_updates ({self.aggregation.min_updates}) must be <= federation.clients_per_round "
               f"({self.federation.clients_per_round}), or no round could close")
        _check(self.model.quantization == "none" or self.trainer.engine == "torch",
               f"model.quantization={self.model.quantization} trains with trainer.engine=torch (DeepSpeed's ZeRO "
               "does not shard 8-bit weights)")
        _check(self.model.quantization == "none" or self.trainer.gpus_per_client > 0,
               f"model.quantization={self.model.quantization} needs trainers on CUDA GPUs: set "
               "trainer.gpus_per_client (or model.quantization=none)")
        _check(self.federation.clients_per_round <= self.num_clients,
               f"federation.clients_per_round ({self.federation.clients_per_round}) must be <= the number "
               f"of clients ({self.num_clients}); lower it or add clients")


    @property
    def seed_for_data(self) -> int:
        return self.seed if self.data_seed < 0 else self.data_seed

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every arm runs with."""
        return list(self.seeds) or [self.seed]

    @property
    def num_clients(self) -> int:
        return sum(g.count for g in self.clients)

    @property
    def num_malicious(self) -> int:
        """Malicious clients in the federation (the groups of role malicious)."""
        return sum(g.count for g in self.clients if g.role == "malicious")

    @property
    def expected_malicious(self) -> int:
        """The f aggregation rules are told: configured, or round(s * malicious / K)
        (docs/method.md#aggregation-rules)."""
        if self.aggregation.num_malicious >= 0:
            return self.aggregation.num_malicious
        return round(self.federation.clients_per_round * self.num_malicious / self.num_clients)


def _from_omegaconf(node) -> ExperimentConfig:
    try:
        return OmegaConf.to_object(node)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:  # type errors found while building the dataclasses
        raise ConfigError(_describe(err)) from None


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first = str(err).splitlines()[0]
    return f"{key}: {first}" if key else first


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Default config, merged with the YAML file at ``path``, then ``key.sub=value`` overrides. A file may
    start from another with ``base: other.yaml`` (relative to the file); its own keys win (lists replace; a
    file naming another attack or rule than its base starts that one's params afresh)."""
    layers = _yaml_layers(Path(path)) if path is not None else []
    return from_yaml_text("", overrides, layers)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where, and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(err, "problem", None) or err).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"key {repeated[0]!r} appears twice in one mapping",
                                                    node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, what: str) -> dict:
    """The mapping a config's YAML ``text`` holds ({} when empty); ``what`` names it in errors."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of keys (e.g. federation: {{num_rounds: 3}}), "
                          f"got a {type(data).__name__}")
    return data


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """The YAML mappings of ``path`` and its ``base`` chain, base first."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read as text ({err}); pass a YAML file") from None
    data = parse_yaml(text, f"config file {path}")
    base = data.pop("base", None)
    if base is None:
        return [data]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: base must name another YAML file, got {base!r}")
    parent = (path.parent / base).resolve()
    if parent in seen:
        raise ConfigError(f"config file {path}: its base chain loops back to {parent}")
    return _yaml_layers(parent, seen + (path.resolve(),)) + [data]


def non_finite(value, key: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in a nested config value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


NAMED_PARAMS = (("attack", "name", "params"), ("aggregation", "rule", "params"))


def clear_stale_params(merged, layer: dict) -> None:
    """Empty ``params`` in ``merged`` (an OmegaConf config) where ``layer`` names another attack or rule without
    giving its params: parameters belong to the attack or rule they were written for, not to the next one."""
    for section, name_key, params_key in NAMED_PARAMS:
        given = layer.get(section)
        if isinstance(given, dict) and name_key in given and params_key not in given \
                and given[name_key] != merged[section][name_key]:
            merged[section][params_key] = {}


def upgraded(layer: dict) -> dict:
    """A config mapping written before ``output.trackers`` (a run folder's config.yaml): its
    ``output.tensorboard`` flag becomes the tracker list."""
    output = layer.get("output")
    if isinstance(output, dict) and isinstance(output.get("tensorboard"), bool) and "trackers" not in output:
        output = {k: v for k, v in output.items() if k != "tensorboard"}
        output["trackers"] = ["tensorboard"] if layer["output"]["tensorboard"] else []
        return {**layer, "output": output}
    return layer


def from_yaml_text(text: str, overrides: list[str] | None = None, layers: list[dict] = ()) -> ExperimentConfig:
    """The defaults merged with ``layers`` (YAML mappings, in order), YAML ``text`` and dotted overrides;
    inverse of ``to_yaml``."""
    try:
        merged = OmegaConf.structured(ExperimentConfig)
        for layer in map(upgraded, [*layers, parse_yaml(text, "config")]):
            clear_stale_params(merged, layer)
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like key.sub=value (list items: clients.0.count=5)")
            OmegaConf.update(merged, key.strip(), yaml.safe_load(value), merge=True)
    except yaml.YAMLError as err:
        raise ConfigError(f"config is not valid YAML: {yaml_problem(err)}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err) + "; see fedsafe/config.py for the allowed keys") from None
    bad = non_finite(OmegaConf.to_container(merged))
    if bad is not None:
        raise ConfigError(f"{bad} must be a finite number, got {OmegaConf.select(merged, bad)}")
    return _from_omegaconf(merged)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
