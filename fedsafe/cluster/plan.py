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

from dataclasses import dataclass

from fedsafe.config import ConfigError, ExperimentConfig

Resources = dict[str, float]
EPS = 1e-9


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
class Plan:
    resources: Resources  # totals
    trainers: ActorPlan
    coordinator: ActorPlan
    generators: ActorPlan
    num_clients: int
    clients_per_round: int
    nodes: tuple[NodePlan, ...] = ()

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
            raise ConfigError(
                f"the generation pool needs {count} replica(s) ({len(generation_models(cfg))} model(s) x "
                f"generation.replicas={g.replicas}) of {g.cpus_per_replica} CPU and {g.gpus_per_replica:g} GPU "
                f"each on one node ({cpus:g} CPUs, {gpus:g} GPUs in all), more than the cluster has; lower "
                "generation.replicas or add nodes")
    return per_node


def make_plan(cfg: ExperimentConfig, resources: Resources | list[Resources], federations: int = 1) -> Plan:
    """``resources``: the cluster's totals as one node, or one entry per node. ``federations``: how many
    federations may train side by side (``cluster.concurrent_federations``): without ``num_trainers``, up
    to ``clients_per_round`` groups each."""
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
        raise ConfigError(f"cluster.num_trainers={c.num_trainers} group(s) of {size} x {cpus:g} CPU, {gpus:g} GPU "
                          f"do not fit: after the generation pool the cluster has room for {count}; lower "
                          "cluster.num_trainers or cluster.cpus_per_trainer, or add nodes")
    if count < 1:
        gen_cpus, gen_gpus = generation_reserve(cfg)
        raise ConfigError(f"no trainer of {size} x {cpus:g} CPU, {gpus:g} GPU fits beside the generation pool "
                          f"({gen_cpus:g} CPUs, {gen_gpus:g} GPUs: generation.replicas x cpus_per_replica x "
                          f"{len(generation_models(cfg))} model(s)); lower generation.replicas or "
                          "cluster.cpus_per_trainer, or add nodes")
    return Plan(
        resources={k: sum(float(n.get(k, 0)) for n in nodes) for k in ("CPU", "GPU")},
        trainers=ActorPlan("trainer", count, cpus, gpus, size),
        coordinator=ActorPlan("coordinator", 1, 0.0, 0.0),
        generators=ActorPlan("generator", gen_count, float(g.cpus_per_replica), float(g.gpus_per_replica)),
        num_clients=cfg.num_clients,
        clients_per_round=cfg.federation.clients_per_round,
        nodes=tuple(NodePlan({k: float(n.get(k, 0)) for k in ("CPU", "GPU")}, tg, gn)
                    for n, tg, gn in zip(nodes, groups_per_node, gen_per_node)),
    )
