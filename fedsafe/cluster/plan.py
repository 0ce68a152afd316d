"""Turn a config plus the cluster's resources into an actor plan. Pure: no Ray, testable anywhere.

    plan = make_plan(cfg, {"CPU": 2.0})                          # one node: 1 trainer, 1 generator slot
    plan = make_plan(cfg, [{"CPU": 96, "GPU": 8}] * 4)           # four nodes of 8 GPUs
    print(plan.describe())

The generation pool is placed first (each replica whole on one node, ``gpus_per_replica`` > 1 is its
tensor-parallel size); trainer groups (``trainer.processes`` actors, ``trainer.gpus_per_process`` GPUs
each, all on one node) fill what is left, at most one per client of a round. GPUs are counted one by one
as Ray does: a share of a GPU goes to one GPU whose shares sum to at most 1, so trainers and replicas
share a GPU only when the config asks for fractions (time-sharing, e.g. ``generation.gpus_per_replica:
0.4`` and ``trainer.gpus_per_client: 0.6``), never by accident. The coordinator needs no CPU and runs on
the driver's node (it writes the checkpoints). Ray places each trainer group with a placement group of
exactly these bundles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsafe.cluster import memory
from fedsafe.config import ConfigError, ExperimentConfig

Resources = dict[str, float]
EPS = 1e-9


class ResourceShortage(ConfigError):
    """The cluster has too few CPUs or GPUs for the plan (a cluster that scales up may still get them)."""


def bundle(cpus: float, gpus: float) -> Resources:
    """One actor's placement-group bundle (no GPU key when it needs none: Ray rejects zero entries)."""
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}


@dataclass(frozen=True)
class ActorPlan:
    role: str
    count: int  # actors; for trainers, groups of ``group_size`` actors (one client each)
    num_cpus: float  # per actor
    num_gpus: float  # per actor
    group_size: int = 1

    @property
    def bundles(self) -> list[Resources]:
        """A placement group's bundles for one group (the trainers of one client)."""
        return [bundle(self.num_cpus, self.num_gpus) for _ in range(self.group_size)]


@dataclass(frozen=True)
class NodePlan:
    resources: Resources
    trainer_groups: int
    generators: int


@dataclass(frozen=True)
class MemoryPlan:
    """GPU memory estimates (GiB): per trainer process, per vLLM replica and model; None where the model's
    shape is unknown or the actor runs on CPUs."""

    trainer: memory.TrainerMemory | None = None
    replicas: dict[str, memory.ReplicaMemory | None] = field(default_factory=dict)
    utilization: float = 0.0  # vLLM's gpu_memory_utilization
    what: str = ""  # the trainer's setting, in words


@dataclass(frozen=True)
class Plan:
    resources: Resources  # totals
    trainers: ActorPlan
    coordinator: ActorPlan
    generators: ActorPlan
    num_clients: int
    clients_per_round: int
    nodes: tuple[NodePlan, ...] = ()
    memory: MemoryPlan = field(default_factory=MemoryPlan)

    def describe(self) -> str:
        t, g = self.trainers, self.generators
        lines = [f"cluster resources: {self.resources} on {len(self.nodes)} node(s)"]
        lines.append(f"  trainer: {t.count} group(s) of {t.group_size} actor(s) x {t.num_cpus:g} CPU, "
                     f"{t.num_gpus:g} GPU" + (" (one torch.distributed group per client)" if t.group_size > 1 else ""))
        lines.append(f"  generator: {g.count} replica(s) x {g.num_cpus:g} CPU, {g.num_gpus:g} GPU"
                     + (f" (tensor parallel {int(g.num_gpus)})" if g.num_gpus > 1 else ""))
        lines.append("  coordinator: 1 actor x 0 CPU on the driver's node")
        for i, n in enumerate(self.nodes):
            lines.append(f"  node {i} {n.resources}: {n.trainer_groups} trainer group(s), {n.generators} generator(s)")
        lines.append(f"  clients: {self.num_clients} virtual, {self.clients_per_round} per round, "
                     f"served by {t.count} trainer group(s)")
        if (side_by_side := t.count // self.clients_per_round) > 1:
            lines.append(f"  federated runs: up to {side_by_side} side by side (cluster.concurrent_federations)")
        lines += describe_memory(self)
        return "\n".join(lines)


def generation_models(cfg: ExperimentConfig) -> list[str]:
    """Models the generation pool may serve in this run (each gets ``generation.replicas`` replicas), plus
    one slot for the reward-model task."""
    ev = cfg.evaluation
    judge = ev.judge_model or cfg.generation.model or cfg.model.name
    models = {cfg.model.name, cfg.generation.model or cfg.model.name, judge}
    if ev.helpfulness_judge == "pool" and ev.helpfulness_model:
        models.add(ev.helpfulness_model)
    if ev.reward_model:
        models.add(ev.reward_model)
    return sorted(models)


def generation_reserve(cfg: ExperimentConfig) -> tuple[float, float]:
    """(CPUs, GPUs) the generation pool can hold at once."""
    g = cfg.generation
    slots = len(generation_models(cfg)) * g.replicas
    return float(slots * g.cpus_per_replica), float(slots * g.gpus_per_replica)


class NodeRoom:
    """What is left on one node: CPUs and each GPU's free share (Ray puts a fractional GPU request on one
    GPU whose shares still sum to at most 1, and a request of k > 1 GPUs on k whole GPUs)."""

    def __init__(self, resources: Resources) -> None:
        self.cpus = float(resources.get("CPU", 0))
        self.gpus = [1.0] * int(round(float(resources.get("GPU", 0))))

    def take(self, cpus: float, gpus: float) -> bool:
        """Reserve one actor's resources if they fit; returns whether they did."""
        if self.cpus + EPS < cpus:
            return False
        if gpus > 1:
            whole = [i for i, free in enumerate(self.gpus) if free >= 1 - EPS][: int(gpus)]
            if len(whole) < gpus:
                return False
            for i in whole:
                self.gpus[i] = 0.0
        elif gpus > 0:
            fitting = [i for i, free in enumerate(self.gpus) if free + EPS >= gpus]
            if not fitting:
                return False
            self.gpus[fitting[0]] -= gpus
        self.cpus -= cpus
        return True

    def take_group(self, cpus: float, gpus: float, size: int) -> bool:
        """Reserve ``size`` actors at once (one trainer group), or nothing."""
        saved = (self.cpus, list(self.gpus))
        if all(self.take(cpus, gpus) for _ in range(size)):
            return True
        self.cpus, self.gpus = saved
        return False


def _place_generators(cfg: ExperimentConfig, rooms: list[NodeRoom], count: int) -> list[int]:
    """Place ``count`` replicas one by one on the first node with room; returns replicas per node."""
    g = cfg.generation
    per_node = [0] * len(rooms)
    for _ in range(count):
        for i, room in enumerate(rooms):
            if room.take(g.cpus_per_replica, g.gpus_per_replica):
                per_node[i] += 1
                break
        else:
            cpus, gpus = generation_reserve(cfg)
            raise ResourceShortage(
                f"the generation pool needs {count} replica(s) ({len(generation_models(cfg))} model(s) x "
                f"generation.replicas={g.replicas}) of {g.cpus_per_replica} CPU and {g.gpus_per_replica:g} GPU "
                f"each on one node ({cpus:g} CPUs, {gpus:g} GPUs in all), more than the cluster has; lower "
                "generation.replicas or add nodes")
    return per_node


def make_plan(cfg: ExperimentConfig, resources: Resources | list[Resources], federations: int = 1,
              shapes: dict[str, memory.ModelShape] | None = None) -> Plan:
    """``resources``: the cluster's totals as one node, or one entry per node (``gpu_memory_gib``: each GPU's
    memory, where known: the plan then checks its memory estimates against it). ``federations``: how many
    federations may train side by side (``cluster.concurrent_federations``): without ``num_trainers``, up
    to ``clients_per_round`` groups each. ``shapes``: model shapes read from their config files."""
    c, t, g = cfg.cluster, cfg.trainer, cfg.generation
    nodes = [dict(resources)] if isinstance(resources, dict) else [dict(n) for n in resources]
    rooms = [NodeRoom(n) for n in nodes]
    gen_count = len(generation_models(cfg)) * g.replicas
    gen_per_node = _place_generators(cfg, rooms, gen_count)

    size, cpus, gpus = t.processes, float(c.cpus_per_trainer), t.gpus_per_process
    largest_gpus = max(float(n.get("GPU", 0)) for n in nodes)
    if gpus > 0 and largest_gpus <= 0:
        raise ConfigError(f"trainer.gpus_per_client={t.gpus_per_client} but the cluster has no GPU; set it to 0")
    if t.gpus_per_client > largest_gpus + EPS:
        raise ConfigError(f"trainer.gpus_per_client={t.gpus_per_client:g}: a client's GPUs must be on one node and "
                          f"the largest node has {largest_gpus:g}; lower it")
    wanted = c.num_trainers or cfg.federation.clients_per_round * max(1, federations)
    groups_per_node = [0] * len(rooms)
    for i, room in enumerate(rooms):  # fill node by node
        while sum(groups_per_node) < wanted and room.take_group(cpus, gpus, size):
            groups_per_node[i] += 1
    count = sum(groups_per_node)
    if c.num_trainers and count < c.num_trainers:
        raise ResourceShortage(f"cluster.num_trainers={c.num_trainers} group(s) of {size} x {cpus:g} CPU, {gpus:g} GPU "
                          f"do not fit: after the generation pool the cluster has room for {count}; lower "
                          "cluster.num_trainers or cluster.cpus_per_trainer, or add nodes")
    if count < 1:
        gen_cpus, gen_gpus = generation_reserve(cfg)
        raise ResourceShortage(f"no trainer of {size} x {cpus:g} CPU, {gpus:g} GPU fits beside the generation pool "
                          f"({gen_cpus:g} CPUs, {gen_gpus:g} GPUs: generation.replicas x cpus_per_replica x "
                          f"{len(generation_models(cfg))} model(s)); lower generation.replicas or "
                          "cluster.cpus_per_trainer, or add nodes")
    plan = Plan(
        resources={k: sum(float(n.get(k, 0)) for n in nodes) for k in ("CPU", "GPU")},
        trainers=ActorPlan("trainer", count, cpus, gpus, size),
        coordinator=ActorPlan("coordinator", 1, 0.0, 0.0),
        generators=ActorPlan("generator", gen_count, float(g.cpus_per_replica), float(g.gpus_per_replica)),
        num_clients=cfg.num_clients,
        clients_per_round=cfg.federation.clients_per_round,
        nodes=tuple(NodePlan({k: float(n.get(k, 0)) for k in ("CPU", "GPU", "gpu_memory_gib") if k in n or k != "gpu_memory_gib"},
                             tg, gn) for n, tg, gn in zip(nodes, groups_per_node, gen_per_node)),
        memory=estimate_memory(cfg, shapes),
    )
    check_memory(cfg, plan)
    return plan


def gpu_gib(nodes: list[Resources]) -> float | None:
    """The GPU memory of the cluster's GPUs (GiB) where the nodes say it (``--nodes 4x96:8:80G``): the
    smallest, so that an actor fits wherever Ray puts it."""
    known = [float(n["gpu_memory_gib"]) for n in nodes if n.get("GPU") and n.get("gpu_memory_gib")]
    return min(known) if known else None


def estimate_memory(cfg: ExperimentConfig, shapes: dict[str, memory.ModelShape] | None = None) -> MemoryPlan:
    """The GPU memory estimates of ``cfg``'s actors (``fedsafe.cluster.memory``); ``shapes``: model shapes the
    caller read from config files (else the known table)."""
    shapes = shapes or {}
    t, g = cfg.trainer, cfg.generation

    def shape(name: str) -> memory.ModelShape | None:
        return shapes.get(name) or memory.model_shape(name)

    trainer = None
    base = shape(cfg.model.name)
    if t.gpus_per_client > 0 and base is not None:
        trainer = memory.trainer_memory(
            base, dtype=cfg.model.dtype, quantization=cfg.model.quantization, batch_size=cfg.train.batch_size,
            max_length=cfg.train.max_length, lora_rank=cfg.adapter_lora.r, lora_targets=list(cfg.lora.target_modules),
            checkpointing=cfg.train.gradient_checkpointing, processes=t.processes,
            zero_stage=t.zero_stage if t.engine == "deepspeed" else 0)
    replicas: dict[str, memory.ReplicaMemory | None] = {}
    if g.gpus_per_replica > 0 and g.backend == "vllm":
        tp = int(g.gpus_per_replica) if g.gpus_per_replica > 1 else 1
        for name in generation_models(cfg):
            s = shape(name)
            replicas[name] = memory.replica_memory(s, max_model_len=g.max_model_len, tensor_parallel=tp) if s else None
    what = (f"{'8-bit' if cfg.model.quantization == 'int8' else cfg.model.dtype} {cfg.model.name}, "
            f"{cfg.train.batch_size} x {cfg.train.max_length} tokens, checkpointing "
            f"{'on' if cfg.train.gradient_checkpointing else 'off'}")
    return MemoryPlan(trainer, replicas, g.gpu_memory_utilization, what)


def describe_memory(plan: Plan) -> list[str]:
    m, lines = plan.memory, []
    gib = gpu_gib([dict(n.resources) for n in plan.nodes])
    if m.trainer is not None:
        tm = m.trainer
        lines.append(f"  GPU memory per trainer process (estimate, {m.what}): {tm.total:.1f} GiB = weights "
                     f"{tm.weights:.1f} + LoRA with AdamW {tm.lora:.1f} + activations {tm.activations:.1f} + logits "
                     f"{tm.logits:.1f} + CUDA {tm.context:.1f}"
                     + (f"; {min(plan.trainers.num_gpus, 1.0) * gib:.0f} GiB of GPU per process: fits" if gib else ""))
    for name, r in m.replicas.items():
        if r is None:
            lines.append(f"  GPU memory per vLLM replica of {name}: unknown shape, not estimated")
            continue
        reserved = f"{m.utilization:g} of each GPU" + (f" = {m.utilization * gib:.1f} GiB" if gib else "")
        lines.append(f"  GPU memory per vLLM replica of {name}: reserves {reserved}; needs at least {r.total:.1f} GiB "
                     f"(weights {r.weights:.1f} + one full-length sequence's KV cache "
                     f"{r.kv_cache:.1f} + working {r.working:.1f})" + (": fits" if gib else ""))
    return lines


def check_memory(cfg: ExperimentConfig, plan: Plan) -> None:
    """ConfigError (one line: the actor, the estimate, what to change) where an actor's estimate does not fit
    the GPU memory the nodes say they have; nothing where they do not say."""
    gib = gpu_gib([dict(n.resources) for n in plan.nodes])
    if gib is None:
        return
    m, t, g = plan.memory, plan.trainers, cfg.generation
    if m.trainer is not None and t.num_gpus > 0:
        room = gib * min(t.num_gpus, 1.0)
        if m.trainer.total > room:
            raise ConfigError(
                f"a trainer group ({t.group_size} process(es) x {t.num_gpus:g} GPU of {gib:g} GiB) needs about "
                f"{m.trainer.total:.1f} GiB per process ({m.what}), {room:.1f} GiB are there: set "
                "train.gradient_checkpointing=true, lower train.batch_size or train.max_length, give a client more "
                "GPUs (trainer.gpus_per_client) or use GPUs with more memory")
    if g.gpus_per_replica > 0 and g.backend == "vllm":  # (a fractional replica's share: GenerationConfig's check)
        for name, r in m.replicas.items():
            if r is not None and r.total > g.gpu_memory_utilization * gib:
                raise ConfigError(
                    f"a vLLM replica of {name} needs at least {r.total:.1f} GiB per GPU (16-bit weights {r.weights:.1f}, "
                    f"KV cache of one {g.max_model_len}-token sequence {r.kv_cache:.1f}, working {r.working:.1f}); "
                    f"generation.gpu_memory_utilization={g.gpu_memory_utilization:g} of a {gib:g} GiB GPU gives "
                    f"{g.gpu_memory_utilization * gib:.1f}: raise it, lower generation.max_model_len, split the model "
                    "over GPUs (generation.gpus_per_replica: 2 or more) or use GPUs with more memory")


def wanted_bundles(cfg: ExperimentConfig, federations: int = 1) -> list[Resources]:
    """Every bundle the plan would reserve on a cluster large enough: the generation pool's slots and, without
    ``cluster.num_trainers``, ``clients_per_round`` trainer groups per federation (what an autoscaler is asked
    for)."""
    c, t, g = cfg.cluster, cfg.trainer, cfg.generation
    slots = len(generation_models(cfg)) * g.replicas
    groups = c.num_trainers or cfg.federation.clients_per_round * max(1, federations)
    return ([bundle(g.cpus_per_replica, g.gpus_per_replica)] * slots
            + [bundle(c.cpus_per_trainer, t.gpus_per_process)] * (groups * t.processes))
