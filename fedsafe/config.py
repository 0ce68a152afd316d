"""Typed experiment configuration: dataclasses validated on creation, YAML files, dotted overrides.

    from fedsafe.config import load_config
    cfg = load_config("configs/smoke.yaml", ["federation.num_rounds=2", "train.lr=1e-4"])

Merging and type checking are OmegaConf's (structured configs): an unknown key or a value of the wrong
type fails with the key's full name. Cross-field rules live in each dataclass's ``__post_init__`` and
fail with ``ConfigError`` naming the field, the value seen and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsafe.aggregation.config import FACTORS, FOLD_MODES, AggregationConfig
from fedsafe.attack.config import AttackConfig
from fedsafe.data.config import ClientGroupConfig, FederationConfig
from fedsafe.defense.config import DefenseConfig
from fedsafe.errors import ConfigError, check_label
from fedsafe.errors import check as _check
from fedsafe.metrics.config import EvaluationConfig
from fedsafe.specs import ENGINES, QUANTIZATIONS, ZERO_STAGES, LoRAConfig, ModelConfig, ServerOptConfig, TrainerConfig
from fedsafe.training.config import TrainConfig
from fedsafe.yamlfile import (
    clear_stale_params,
    first_key,
    load_bounded,
    non_finite,
    omegaconf_problem,
    parse_yaml,
    reads_environment,
    upgraded,
    yaml_layers,
    yaml_problem,
)

__all__ = ["ENGINES", "QUANTIZATIONS", "ZERO_STAGES", "ConfigError", "ExperimentConfig", "LoRAConfig", "ModelConfig",
           "ServerOptConfig", "TrainerConfig", "load_config", "from_yaml_text", "to_yaml"]


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


MLFLOW_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


@dataclass
class MlflowConfig:
    """MLflow (``output.trackers`` has ``mlflow``). ``tracking_uri``: a tracking server or store (``null``: a
    local store in the run folder, ``mlflow.db`` with artifacts in ``mlruns/``; ``mlflow ui
    --backend-store-uri sqlite:///<run>/mlflow.db`` shows it)."""

    tracking_uri: str | None = None
    experiment: str = "fedsafe"

    def __post_init__(self) -> None:
        scheme = self.tracking_uri.split("://")[0].lower() if self.tracking_uri and "://" in self.tracking_uri else ""
        _check(not scheme or scheme in MLFLOW_SCHEMES, f"output.mlflow.tracking_uri: {scheme!r} is not a scheme "
               f"MLflow stores to; use one of {', '.join(MLFLOW_SCHEMES)}, a folder, or null (the run folder)")


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
        self.root = os.path.expanduser(self.root)  # "~/runs" is the home folder's, not a folder named "~"


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
        check_label(self.name, "arms[].name")
        _check("posthoc_sft" not in self.defenses.split("+"),
               f"arms[{self.name}].defenses: the post-hoc fine-tune is set by defense_level, not by name")
        _check(self.defense_level in (0, 1, 2, 3),
               f"arms[{self.name}].defense_level must be 0 (none), 1, 2 or 3; got {self.defense_level}")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds take 32 bits


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
        _check(all(0 <= s <= MAX_SEED for s in self.seeds), f"seeds must be in [0, {MAX_SEED}], got {self.seeds}")
        _check(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        _check(-1 <= self.data_seed <= MAX_SEED,
               f"data_seed must be in [0, {MAX_SEED}] (or -1 = the seed), got {self.data_seed}")
        arm_names = [a.name for a in self.arms]
        folded = [n.casefold() for n in arm_names]
        _check(len(set(folded)) == len(folded), f"arms: names must be unique (ignoring case), got {arm_names}")
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
        for g in self.clients:
            _check(g.lora_rank <= self.lora.r, f"clients[{g.name}].lora_rank={g.lora_rank} must be <= lora.r="
                                               f"{self.lora.r} (the global adapter's rank; 0 = lora.r)")
        mode = self.aggregation.mode
        _check(mode == FACTORS or self.aggregation.server_opt.name == "none",
               f"aggregation.mode={mode} combines the clients' products, which aggregation.server_opt="
               f"{self.aggregation.server_opt.name} does not act on; use server_opt.name=none or mode=factors")


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
    def fold_rank(self) -> int:
        """Components beyond lora.r that hold the fold of ``aggregation.mode`` stack or exact (0 otherwise)."""
        a, r = self.aggregation, self.lora.r
        if a.mode not in FOLD_MODES:
            return 0
        return a.fold_rank or max(1, min(self.federation.num_rounds * (self.federation.clients_per_round + 1) * r,
                                         512 - r))

    @property
    def adapter_lora(self) -> LoRAConfig:
        """The PEFT adapter the trainers build: lora.r trained components plus the fold's, at lora's scale
        alpha / r (PEFT's scale is lora_alpha / rank, so its lora_alpha grows with the rank)."""
        total = self.lora.r + self.fold_rank
        if total == self.lora.r:
            return self.lora
        return dataclasses.replace(self.lora, r=total, alpha=self.lora.alpha * total / self.lora.r)

    def group_ranks(self) -> dict[str, int]:
        """Group name -> LoRA rank, for the groups that train fewer than lora.r components."""
        return {g.name: g.lora_rank for g in self.clients if 0 < g.lora_rank < self.lora.r}

    def client_ranks(self) -> dict[int, int]:
        """Client id -> LoRA rank, for the clients of the groups in ``group_ranks``."""
        groups, ranks, at = self.group_ranks(), {}, 0
        for g in self.clients:
            if g.name in groups:
                ranks.update({cid: groups[g.name] for cid in range(at, at + g.count)})
            at += g.count
        return ranks

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
        raise ConfigError(omegaconf_problem(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Default config, merged with the YAML file at ``path``, then ``key.sub=value`` overrides. A file may
    start from another with ``base: other.yaml`` (relative to the file); its own keys win (lists replace; a
    file naming another attack or rule than its base starts that one's params afresh)."""
    layers = yaml_layers(Path(path)) if path is not None else []
    return from_yaml_text("", overrides, layers)


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
            OmegaConf.update(merged, key.strip(), load_bounded(value, f"override {item!r}"), merge=True)
    except yaml.YAMLError as err:
        raise ConfigError(f"config is not valid YAML: {yaml_problem(err)}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(omegaconf_problem(err)) from None
    given = OmegaConf.to_container(merged)
    if (bad := first_key(given, reads_environment)) is not None:
        raise ConfigError(f"{bad}: a config may not read environment variables (${{oc.env:...}}): the resolved "
                          "config is saved in the run folder and sent to the trackers; give the value itself, or for "
                          "an API key the variable's name (evaluation.helpfulness_key_env)")
    if (bad := first_key(given, non_finite)) is not None:
        raise ConfigError(f"{bad} must be a finite number, got {OmegaConf.select(merged, bad)}")
    return _from_omegaconf(merged)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
