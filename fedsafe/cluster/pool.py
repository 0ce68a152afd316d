"""The trainer pool and the coordinator handle: every ``ray.*`` call of a run lives here.

Tasks go to idle trainer groups, one in flight per group; updates stay in the object store and go straight
from the trainers to the coordinator; the driver only sees small metrics. A trainer group is the actors
of one client (``trainer.processes``, usually 1) in one placement group, so its GPUs are reserved
together on one node.

Elastic: a group whose actor dies (its node left, it crashed) is dropped and its client goes to the next
idle group in the same round; between rounds ``resize`` drops dead groups and, with ``cluster.elastic``,
starts groups on resources that joined, up to what ``make_plan`` gives the cluster as it is now.
"""

from __future__ import annotations

import logging

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from fedsafe.actors.coordinator import Coordinator
from fedsafe.actors.trainer import InitialAdapter, Trainer
from fedsafe.cluster.plan import ActorPlan, Plan, make_plan
from fedsafe.cluster.runtime import alive_nodes
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
        raise TimeoutError(f"a trainer group did not start: {str(err).splitlines()[0]}") from None


class TrainerPool:
    def __init__(self, plan: Plan, cfg: ExperimentConfig) -> None:
        self.cfg, self.spec = cfg, plan.trainers
        self.timeout = cfg.cluster.round_timeout_s
        self.groups = [TrainerGroup(self.spec, cfg, self.timeout, start=False) for _ in range(plan.trainers.count)]
        start_groups(self.groups)
        self.lost = 0  # groups dropped because an actor died

    def initial_adapter(self) -> InitialAdapter:
        return ray.get(self.groups[0].actors[0].initial_adapter.remote(), timeout=self.timeout)

    def train(self, global_ref: ray.ObjectRef, tasks: list[ClientTask], on_done=None) -> tuple[list, list[TrainMetrics]]:
        """Run ``tasks`` on idle groups. Returns update refs and metrics, both in task order. A task whose
        group dies goes back to the queue. ``on_done(metrics)`` is called as each client finishes."""
        pending = list(enumerate(tasks))
        idle = list(self.groups)
        in_flight: dict[ray.ObjectRef, tuple[int, TrainerGroup]] = {}
        update_refs: list = [None] * len(tasks)
        metrics: list = [None] * len(tasks)
        while pending or in_flight:
            while pending and idle:
                index, task = pending.pop(0)
                group = idle.pop(0)
                update_refs[index], metrics_ref = group.call("train", global_ref, task, num_returns=2)
                in_flight[metrics_ref] = (index, group)
            if not in_flight:
                raise RuntimeError("every trainer group has died; see the actors' logs (ray logs) and the "
                                   "cluster's nodes")
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.timeout)
            if not done:
                raise TimeoutError(f"no client finished within cluster.round_timeout_s={self.timeout}s; "
                                   "raise it or check the trainers' logs")
            index, group = in_flight.pop(done[0])
            try:
                metrics[index] = ray.get(done[0])
            except RayActorError as err:
                self._drop(group, err)
                pending.insert(0, (index, tasks[index]))
                continue
            idle.append(group)
            if on_done is not None:
                on_done(metrics[index])
        return update_refs, metrics

    def _drop(self, group: TrainerGroup, reason) -> None:
        log.warning("a trainer group died (%s); its client goes to the other %d group(s)",
                    str(reason).splitlines()[0], len(self.groups) - 1)
        if group in self.groups:
            self.groups.remove(group)
            self.lost += 1
        group.kill()

    def resize(self) -> dict:
        """Between rounds: drop dead groups; with ``cluster.elastic``, add groups up to what the cluster as
        it is now gives (``make_plan`` on the alive nodes). Returns the change."""
        dropped = 0
        for group in [g for g in self.groups if not g.alive()]:
            self._drop(group, "not answering")
            dropped += 1
        added = 0
        if self.cfg.cluster.elastic:
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
        ref = self.groups[0].call("response_loss", global_ref, records, batch_size, max_length)
        return ray.get(ref, timeout=self.timeout)

    def shutdown(self) -> None:
        for group in self.groups:
            group.kill()


class CoordinatorHandle:
    """The coordinator actor, pinned to the driver's node (it writes the run's checkpoints)."""

    def __init__(self, init: InitialAdapter, cfg: ExperimentConfig, run_dir: str, resume_from: str | None) -> None:
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(num_cpus=0)(Coordinator).options(scheduling_strategy=here)
        self.timeout = cfg.cluster.round_timeout_s
        a = cfg.aggregation
        self.actor = remote.remote(init.vector, init.spec, init.peft_config, a.rule, a.params,
                                   cfg.expected_malicious, a.server_opt, run_dir, cfg.output.keep_checkpoints,
                                   cfg.seed, resume_from, cfg.evaluation.client_similarity, a.max_update_norm,
                                   a.min_updates)

    def global_ref(self) -> ray.ObjectRef:
        return self.actor.global_vector.remote()

    def aggregate(self, round_idx: int, update_refs: list, server_ref=None) -> dict:
        """``server_ref``: the server's own update this round (rules such as FLTrust), or None."""
        return ray.get(self.actor.aggregate.remote(round_idx, server_ref, *update_refs), timeout=self.timeout)

    def apply_delta(self, update_ref) -> ray.ObjectRef:
        return self.actor.apply_delta.remote(update_ref)

    def similarity(self) -> dict:
        return ray.get(self.actor.similarity.remote(), timeout=self.timeout)

    def shutdown(self) -> None:
        ray.kill(self.actor)

    def export(self, vector_ref: ray.ObjectRef, name: str) -> str:
        return ray.get(self.actor.export.remote(vector_ref, name), timeout=self.timeout)
