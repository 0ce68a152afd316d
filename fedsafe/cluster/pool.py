"""The trainer pool and the coordinator handle: every ``ray.*`` call of a run lives here.

Tasks go to idle trainer groups, one in flight per group; updates go through the object store straight
from the trainers to the coordinator, which stages each as its client finishes; the driver only sees small
metrics. A trainer group is the actors of one client (``trainer.processes``, usually 1) in one placement
group, so its GPUs are reserved together on one node.

Faults and elasticity: a client whose group dies, fails or hangs (past ``cluster.client_timeout_s``; the
group is killed) is retried on the next idle group, at most ``cluster.max_retries`` times; dead groups are
dropped. Between rounds ``resize`` drops dead groups and, with ``cluster.elastic``, starts groups on
resources that joined, up to what ``make_plan`` gives the cluster as it is now.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from fedsafe.actors.coordinator import Coordinator
from fedsafe.actors.trainer import InitialAdapter, Trainer
from fedsafe.cluster.plan import ActorPlan, Plan, make_plan
from fedsafe.cluster.runtime import alive_nodes, first_line
from fedsafe.config import ConfigError, ExperimentConfig
from fedsafe.updates import ClientTask, TrainMetrics

log = logging.getLogger(__name__)


class TrainerGroup:
    """The trainer actors of one client, rank 0 first, in one placement group; started and joined into a
    torch.distributed group (when more than one) before use."""

    def __init__(self, spec: ActorPlan, cfg: ExperimentConfig, timeout: float, place_timeout: float | None = None,
                 start: bool = True) -> None:
        """``place_timeout``: how long to wait for the resources (default ``timeout``), ``timeout``: for the
        actors to load the model and join. ``start=False`` leaves the start to ``start_groups`` (several
        groups loading the model at once)."""
        self.pg = placement_group(spec.bundles, strategy="STRICT_PACK")
        wait = timeout if place_timeout is None else place_timeout
        try:
            ray.get(self.pg.ready(), timeout=wait)
        except GetTimeoutError:
            remove_placement_group(self.pg)
            raise TimeoutError(f"a trainer group of {spec.bundles} could not be placed within {wait:g}s; the "
                               "cluster lacks the resources (raise cluster.round_timeout_s if it is scaling up)") from None
        remote = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0)(Trainer)
        self.actors = [
            remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i))
            .remote(cfg.model, cfg.lora, cfg.seed, cfg.train.threads_per_trainer, cfg.trainer, i, spec.group_size)
            for i in range(spec.group_size)
        ]
        self.timeout = timeout
        self.address = self.actors[0].address.remote()  # answers once rank 0 has loaded the model
        if start:
            start_groups([self])

    def call(self, method: str, *args, num_returns: int = 1):
        """Call ``method`` on every rank (a group's collectives need all); returns rank 0's ref(s)."""
        refs = [getattr(a, method).options(num_returns=num_returns).remote(*args) for a in self.actors]
        return refs[0]

    def alive(self, timeout: float = 30.0) -> bool:
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=timeout)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def kill(self) -> None:
        """Free the group's resources first: Ray would re-create a lost node's placement group elsewhere."""
        remove_placement_group(self.pg)
        for actor in self.actors:
            try:
                ray.kill(actor)
            except RayActorError:
                pass


def start_groups(groups: list[TrainerGroup]) -> None:
    """Join each group's ranks and build their engines; the groups' models load side by side. If one
    fails (e.g. placed on a node that was leaving), all are freed and TimeoutError says why."""
    try:
        started = []
        for group in groups:
            address, port = ray.get(group.address, timeout=group.timeout)
            started.append([a.start.remote(address, port) for a in group.actors])
        for group, refs in zip(groups, started):
            ray.get(refs, timeout=group.timeout)
    except (RayActorError, GetTimeoutError) as err:
        for group in groups:
            group.kill()
        raise TimeoutError(f"a trainer group did not start: {first_line(err)}") from None


class TrainerPool:
    def __init__(self, plan: Plan, cfg: ExperimentConfig) -> None:
        self.cfg, self.spec = cfg, plan.trainers
        self.timeout = cfg.cluster.round_timeout_s
        self.groups = [TrainerGroup(self.spec, cfg, self.timeout, start=False) for _ in range(plan.trainers.count)]
        start_groups(self.groups)
        self.lost = 0  # groups dropped because an actor died

    def initial_adapter(self) -> InitialAdapter:
        return ray.get(self.groups[0].actors[0].initial_adapter.remote(), timeout=self.timeout)

    def train(self, global_ref: ray.ObjectRef, tasks: list[ClientTask], stage=None, on_done=None) -> TrainOutcome:
        """Run ``tasks`` on idle groups, one in flight per group. A task whose trainer dies, raises, or gives
        no answer within ``cluster.client_timeout_s`` (its group is then killed) is retried on another group,
        at most ``cluster.max_retries`` times; then it is left out. Groups are started again (``resize``)
        when all have died.

        ``stage(task, update_ref)``: returns a reference that resolves once the update is safe (the
        coordinator's ``stage``); a task whose update is lost on the way counts as failed. Without ``stage``
        the outcome holds the update references. ``on_done(metrics)`` is called as each client finishes.
        Raises ``CoordinatorLost`` when the failure was the coordinator's (a dead global adapter or stage).
        """
        c = self.cfg.cluster
        out = TrainOutcome([None] * len(tasks), [None] * len(tasks), [])
        attempts = [0] * len(tasks)
        pending = list(range(len(tasks)))
        idle = list(self.groups)
        running: dict[ray.ObjectRef, tuple[int, TrainerGroup, float, ray.ObjectRef]] = {}
        staging: dict[ray.ObjectRef, int] = {}

        def fail(index: int, reason: str) -> None:
            attempts[index] += 1
            out.failures.append({"client_id": tasks[index].client_id, "attempt": attempts[index], "reason": reason})
            if attempts[index] <= c.max_retries:
                pending.insert(0, index)
            else:
                log.warning("client %d failed %d time(s); the round goes on without it", tasks[index].client_id,
                            attempts[index])

        while pending or running or staging:
            if pending and not idle and not running:
                self.resize(elastic=True)  # every group has died: start what the cluster allows now
                idle = list(self.groups)
            while pending and idle:
                index, group = pending.pop(0), idle.pop(0)
                update_ref, metrics_ref = group.call("train", global_ref, tasks[index], num_returns=2)
                running[metrics_ref] = (index, group, time.monotonic() + c.client_timeout_s, update_ref)
            deadline = min((d for _, _, d, _ in running.values()), default=time.monotonic() + self.timeout)
            done, _ = ray.wait([*running, *staging], num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                if not running:
                    raise CoordinatorLost(f"the coordinator staged no update within "
                                          f"cluster.round_timeout_s={self.timeout:g}s")
                silent = f"no answer within cluster.client_timeout_s={c.client_timeout_s:g}s"
                for ref, (index, group, due, _) in list(running.items()):
                    if due <= time.monotonic():
                        del running[ref]
                        self._drop(group, silent)
                        fail(index, f"timeout: {silent}")
                continue
            ref = done[0]
            if ref in staging:
                index = staging.pop(ref)
                try:
                    ray.get(ref, timeout=self.timeout)
                except RayActorError as err:
                    raise CoordinatorLost(first_line(err)) from None
                except (ObjectLostError, RayTaskError) as err:  # the update was lost with its trainer's node
                    out.metrics[index] = None
                    fail(index, f"update lost: {first_line(err)}")
                continue
            index, group, _, update_ref = running.pop(ref)
            try:
                metrics = ray.get(ref, timeout=self.timeout)
            except (RayActorError, RayTaskError, ObjectLostError) as err:
                alive = group.alive()
                if alive and isinstance(err, RayActorError):
                    raise CoordinatorLost(first_line(err)) from None  # the dead actor was not this group's
                if alive:
                    idle.append(group)
                    fail(index, f"training failed: {first_line(err)}")
                else:
                    self._drop(group, err)
                    fail(index, f"trainer died: {first_line(err)}")
                continue
            idle.append(group)
            out.metrics[index] = metrics
            if stage is None:
                out.updates[index] = update_ref
            else:
                staging[stage(tasks[index], update_ref)] = index
            if on_done is not None:
                on_done(metrics)
        return out

    def _drop(self, group: TrainerGroup, reason) -> None:
        log.warning("a trainer group is dropped (%s); its client goes to the other %d group(s)",
                    first_line(reason), len(self.groups) - 1)
        if group in self.groups:
            self.groups.remove(group)
            self.lost += 1
        group.kill()

    def resize(self, elastic: bool | None = None) -> dict:
        """Between rounds: drop dead groups; with ``cluster.elastic`` (or ``elastic=True``), add groups up to
        what the cluster as it is now gives (``make_plan`` on the alive nodes). Returns the change."""
        dropped = 0
        for group in [g for g in self.groups if not g.alive()]:
            self._drop(group, "not answering")
            dropped += 1
        added = 0
        if self.cfg.cluster.elastic if elastic is None else elastic:
            try:
                target = make_plan(self.cfg, alive_nodes()).trainers.count
            except ConfigError:
                target = len(self.groups)
            new: list[TrainerGroup] = []
            while len(self.groups) + len(new) < target:
                try:  # a node that is leaving may still count as alive: do not wait long for its room
                    new.append(TrainerGroup(self.spec, self.cfg, self.timeout, place_timeout=10.0, start=False))
                except TimeoutError:
                    break
            try:
                start_groups(new)
                self.groups += new
                added = len(new)
            except TimeoutError as err:
                log.warning("%s; the pool stays at %d group(s)", err, len(self.groups))
        if not self.groups:
            raise RuntimeError("no trainer group is left and none could be started; add nodes to the cluster")
        return {"trainer_groups": len(self.groups), "added": added, "dropped": dropped}

    def response_loss(self, global_ref: ray.ObjectRef, records: list[dict], batch_size: int, max_length: int) -> float:
        """Held-out loss on the first group that answers (a dead group is dropped, the next one asked)."""
        while True:
            if not self.groups:
                self.resize(elastic=True)
            group = self.groups[0]
            try:
                return ray.get(group.call("response_loss", global_ref, records, batch_size, max_length),
                               timeout=self.timeout)
            except RayActorError as err:
                if group.alive():
                    raise
                self._drop(group, err)

    def shutdown(self) -> None:
        for group in self.groups:
            group.kill()


class CoordinatorLost(RuntimeError):
    """The coordinator actor died (or stopped answering); restart it from the last checkpoint."""


class CoordinatorHandle:
    """The coordinator actor, pinned to the driver's node (it writes the run's checkpoints). A call that
    finds it dead raises ``CoordinatorLost``."""

    def __init__(self, init: InitialAdapter, cfg: ExperimentConfig, run_dir: str, resume_from: str | None) -> None:
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(num_cpus=0)(Coordinator).options(scheduling_strategy=here)
        self.timeout = cfg.cluster.round_timeout_s
        a = cfg.aggregation
        self.actor = remote.remote(init.vector, init.spec, init.peft_config, a.rule, a.params,
                                   cfg.expected_malicious, a.server_opt, run_dir, cfg.output.keep_checkpoints,
                                   cfg.seed, resume_from, cfg.evaluation.client_similarity, a.max_update_norm,
                                   a.min_updates)

    def _get(self, ref):
        try:
            return ray.get(ref, timeout=self.timeout)
        except (RayActorError, GetTimeoutError) as err:
            raise CoordinatorLost(first_line(err)) from None

    def global_ref(self) -> ray.ObjectRef:
        """The global adapter's reference, once the coordinator has answered (so a trainer that fails on
        it has failed on its own)."""
        self._get(self.actor.ready.remote())
        return self.actor.global_vector.remote()

    def stage(self, round_idx: int, task: ClientTask, update_ref) -> ray.ObjectRef:
        """Hand a finished client's update to the coordinator (``TrainerPool.train``'s ``stage``)."""
        return self.actor.stage.remote(round_idx, task.client_id, update_ref)

    def aggregate(self, round_idx: int) -> dict:
        """Validate and aggregate the updates staged for ``round_idx``; checkpoint."""
        return self._get(self.actor.aggregate.remote(round_idx))

    def apply_delta(self, update_ref) -> ray.ObjectRef:
        return self.actor.apply_delta.remote(update_ref)

    def similarity(self) -> dict:
        return self._get(self.actor.similarity.remote())

    def shutdown(self) -> None:
        try:
            ray.kill(self.actor)
        except RayActorError:
            pass

    def export(self, vector_ref: ray.ObjectRef, name: str) -> str:
        return self._get(self.actor.export.remote(vector_ref, name))


@dataclass
class TrainOutcome:
    """What ``TrainerPool.train`` returns, in task order: update references (None when staged or failed),
    metrics (None for a client that failed every try) and every failed try."""

    updates: list
    metrics: list[TrainMetrics | None]
    failures: list[dict]  # {"client_id", "attempt", "reason"}
