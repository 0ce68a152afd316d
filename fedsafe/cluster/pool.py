"""The trainer pool and the coordinator handle: every ``ray.*`` call of a run lives here.

Tasks go to idle trainer groups, one in flight per group; updates go through the object store straight
from the trainers to the coordinator, which stages each as its client finishes; the driver only sees small
metrics. A trainer group is the actors of one client (``trainer.processes``, usually 1) in one placement
group, so its GPUs are reserved together on one node.

Several federations may train at once (threads of one driver, ``fedsafe.matrix``): each ``train`` call
leases idle groups from the pool as its clients need them and gives each back as soon as it has no client
left to start, so federations fill the groups between them; alone, a call takes the groups its clients need.

Faults and elasticity: a client whose group dies, fails or hangs (past ``cluster.client_timeout_s``; the
group is killed) is retried on the next idle group, at most ``cluster.max_retries`` times; dead groups are
dropped. Between rounds ``resize`` drops dead groups and, with ``cluster.elastic``, starts groups on
resources that joined, up to what ``make_plan`` gives the cluster as it is now.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from fedsafe.actors.coordinator import Coordinator, CoordinatorSettings
from fedsafe.actors.trainer import InitialAdapter, Trainer
from fedsafe.checkpoint import load_checkpoint, save_adapter
from fedsafe.cluster.plan import ActorPlan, Plan, make_plan
from fedsafe.cluster.runtime import EXTENSIONS_DIR, actor_env, alive_nodes, first_line, setup_failure
from fedsafe.config import ConfigError, ExperimentConfig
from fedsafe.errors import WorkerSetupError
from fedsafe.updates import ClientTask, TrainMetrics

log = logging.getLogger(__name__)


def split_batches(num_records: int, batch_size: int, parts: int) -> list[slice]:
    """``num_records`` records cut into at most ``parts`` contiguous slices of whole batches, as even as
    the batches allow (the response loss's share for each free trainer group)."""
    batches = -(-num_records // batch_size)
    parts = max(1, min(parts, batches))
    edges = [batches * k // parts * batch_size for k in range(parts)] + [num_records]
    return [slice(a, min(b, num_records)) for a, b in itertools.pairwise(edges)]


class TrainerGroup:
    """The trainer actors of one client, rank 0 first, in one placement group; started and joined into a
    torch.distributed group (when more than one) before use."""

    def __init__(self, spec: ActorPlan, cfg: ExperimentConfig, timeout: float, place_timeout: float | None = None,
                 start: bool = True, trainer_cls: type = Trainer) -> None:
        """``place_timeout``: how long to wait for the resources (default ``timeout``), ``timeout``: for the
        actors to load the model and join. ``start=False`` leaves the start to ``start_groups`` (several
        groups loading the model at once). ``trainer_cls``: the actor class (a stand-in in benchmarks)."""
        self.pg = placement_group(spec.bundles, strategy="STRICT_PACK")
        wait = timeout if place_timeout is None else place_timeout
        try:
            ray.get(self.pg.ready(), timeout=wait)
        except GetTimeoutError:
            remove_placement_group(self.pg)
            raise TimeoutError(f"a trainer group of {spec.bundles} could not be placed within {wait:g}s; the "
                               "cluster lacks the resources (raise cluster.round_timeout_s if it is scaling up)") from None
        remote = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0)(trainer_cls)
        self.actors = [
            remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                           runtime_env=actor_env(spec.num_gpus))
            .remote(cfg.model, cfg.adapter_lora, cfg.seed, cfg.train.threads_per_trainer, cfg.trainer, i,
                    spec.group_size, cfg.train.gradient_checkpointing, False, cfg.lora.r)
            for i in range(spec.group_size)
        ]
        self.timeout = timeout
        self.model, self.engine = cfg.model.name, cfg.trainer.engine
        self.placements: list[dict] = []
        self.loading: list = []
        self.address = None
        if start:
            start_groups([self])

    def begin_loading(self) -> None:
        """Learn where each rank was placed, then load the model on every rank, each seeing the group's GPUs."""
        self.placements = ray.get([a.placement.remote() for a in self.actors], timeout=self.timeout)
        gpus = [g for p in self.placements for g in p["gpus"]]
        self.loading = [a.load.remote(gpus or None) for a in self.actors]
        self.address = self.actors[0].address.remote()  # answers once rank 0 has loaded the model

    @property
    def node(self) -> str:
        return self.placements[0]["node"] if self.placements else "an unknown node"

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
    """Load each group's model (side by side), join its ranks and build their engines. A rank that cannot
    load the model or a package stops the run with ``WorkerSetupError`` (one line: the node, what failed,
    the fix); if a group does not start in time (e.g. placed on a node that was leaving), all are freed and
    TimeoutError says why."""
    current = None
    try:
        for group in groups:
            current = group
            group.begin_loading()
        started = []
        for group in groups:
            current = group
            ray.get(group.loading, timeout=group.timeout)
            address, port = ray.get(group.address, timeout=group.timeout)
            started.append([a.start.remote(address, port) for a in group.actors])
        for group, refs in zip(groups, started):
            current = group
            ray.get(refs, timeout=group.timeout)
    except RayTaskError as err:
        for group in groups:
            group.kill()
        raise WorkerSetupError(setup_failure(err, f"a trainer on {current.node}", current.model)) from None
    except (RayActorError, GetTimeoutError) as err:
        for group in groups:
            group.kill()
        hint = ""
        if current is not None and current.engine == "deepspeed":
            hint = (f"; a DeepSpeed extension build may be waiting on a lock another build left in "
                    f"{EXTENSIONS_DIR} on {current.node}: remove that folder")
        raise TimeoutError(f"a trainer group did not start: {first_line(err)}{hint}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """When a client's local round is tried again: after a trainer died, raised, lost its update, or
    gave no answer within ``client_timeout_s``, up to ``max_retries`` more tries; a staging that takes
    longer than ``round_timeout_s`` means the coordinator is lost (``cluster.*``)."""

    max_retries: int
    client_timeout_s: float
    round_timeout_s: float

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> RetryPolicy:
        c = cfg.cluster
        return cls(c.max_retries, c.client_timeout_s, c.round_timeout_s)

    def again(self, attempts: int) -> bool:
        return attempts <= self.max_retries

    @property
    def silence(self) -> str:
        return f"no answer within cluster.client_timeout_s={self.client_timeout_s:g}s"


class Schedule:
    """One ``TrainerPool.train`` call's state: tasks waiting (``pending``, retries first), groups ``idle``,
    trainings ``running`` (result ref -> task index, group, deadline, update ref), updates ``staging`` on
    their way to the coordinator, and the ``outcome`` (failed tries included)."""

    def __init__(self, tasks: list[ClientTask], groups: list[TrainerGroup], policy: RetryPolicy) -> None:
        self.tasks, self.policy = tasks, policy
        self.outcome = TrainOutcome([None] * len(tasks), [None] * len(tasks), [])
        self.attempts = [0] * len(tasks)
        self.pending = list(range(len(tasks)))
        self.idle = groups
        self.running: dict[ray.ObjectRef, tuple[int, TrainerGroup, float, ray.ObjectRef]] = {}
        self.staging: dict[ray.ObjectRef, int] = {}

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running or self.staging)

    def dispatch(self, global_ref: ray.ObjectRef) -> None:
        """Start pending tasks on idle groups."""
        while self.pending and self.idle:
            index, group = self.pending.pop(0), self.idle.pop(0)
            update_ref, metrics_ref = group.call("train", global_ref, self.tasks[index], num_returns=2)
            self.running[metrics_ref] = (index, group, time.monotonic() + self.policy.client_timeout_s, update_ref)

    def wait(self) -> ray.ObjectRef | None:
        """The next finished training or staging, or None when the earliest training's deadline passed.
        Raises ``CoordinatorLost`` when only stagings are left and none ends within ``round_timeout_s``."""
        deadline = min((d for _, _, d, _ in self.running.values()),
                       default=time.monotonic() + self.policy.round_timeout_s)
        done, _ = ray.wait([*self.running, *self.staging], num_returns=1,
                           timeout=max(0.0, deadline - time.monotonic()))
        if done:
            return done[0]
        if not self.running:
            raise CoordinatorLost(f"the coordinator staged no update within "
                                  f"cluster.round_timeout_s={self.policy.round_timeout_s:g}s")
        return None

    def expire(self) -> list[TrainerGroup]:
        """Trainings past their deadline: each counts as a failed try; returns their groups (to kill)."""
        expired = []
        for ref, (index, group, due, _) in list(self.running.items()):
            if due <= time.monotonic():
                del self.running[ref]
                expired.append(group)
                self.fail(index, f"timeout: {self.policy.silence}")
        return expired

    def fail(self, index: int, reason: str) -> None:
        self.attempts[index] += 1
        self.outcome.failures.append({"client_id": self.tasks[index].client_id, "attempt": self.attempts[index],
                                      "reason": reason})
        if self.policy.again(self.attempts[index]):
            self.pending.insert(0, index)
        else:
            log.warning("client %d failed %d time(s); the round goes on without it", self.tasks[index].client_id,
                        self.attempts[index])


def put(value) -> ray.ObjectRef:
    """``value`` in the object store."""
    return ray.put(value)


def fetch(ref):
    """The value of an object-store reference."""
    return ray.get(ref)


@ray.remote(num_cpus=0)
def _plus_delta(vector, update):
    """The adapter ``vector`` plus an update's delta (float32, on whichever node runs it)."""
    return vector + update.delta


class TrainerPool:
    def __init__(self, plan: Plan, cfg: ExperimentConfig, federations: int = 1, trainer_cls: type = Trainer) -> None:
        """``federations``: how many federations share the pool (the elastic target of ``resize``);
        ``trainer_cls``: the trainer actor class (a stand-in in benchmarks)."""
        self.cfg, self.spec, self.federations, self.trainer_cls = cfg, plan.trainers, federations, trainer_cls
        self.timeout = cfg.cluster.round_timeout_s
        self.groups = [TrainerGroup(self.spec, cfg, self.timeout, start=False, trainer_cls=trainer_cls)
                       for _ in range(plan.trainers.count)]
        start_groups(self.groups)
        self.lost = 0  # groups dropped because an actor died
        self.free = list(self.groups)  # groups no train call holds
        self.changed = threading.Condition()  # a group was given back, dropped or added
        self.closed = False  # shut down: calls still running in other threads stop at their next lease

    def take(self, want: int, block: bool) -> list[TrainerGroup]:
        """Up to ``want`` free groups. ``block``: wait (up to ``cluster.round_timeout_s``) until one is free
        or none is left in the pool."""
        with self.changed:
            if block:
                self.changed.wait_for(lambda: self.free or not self.groups or self.closed, timeout=self.timeout)
            if self.closed:
                raise RuntimeError("the trainer pool was shut down (the run is stopping)")
            taken, self.free = self.free[:want], self.free[want:]
            return taken

    def give_back(self, groups: list[TrainerGroup]) -> None:
        with self.changed:
            self.free += [g for g in groups if g in self.groups and g not in self.free]
            self.changed.notify_all()

    def initial_adapter(self) -> InitialAdapter:
        return ray.get(self.groups[0].actors[0].initial_adapter.remote(), timeout=self.timeout)

    def train(self, global_ref: ray.ObjectRef, tasks: list[ClientTask], stage=None, on_done=None) -> TrainOutcome:
        """Run ``tasks`` on idle groups, one in flight per group. A task whose trainer dies, raises, or gives
        no answer within ``cluster.client_timeout_s`` (its group is then killed) is retried on another group
        as ``RetryPolicy`` says; then it is left out. Groups are started again (``resize``) when all have died.

        ``stage(task, update_ref)``: returns a reference that resolves once the update is safe (the
        coordinator's ``stage``); a task whose update is lost on the way counts as failed. Without ``stage``
        the outcome holds the update references. ``on_done(metrics)`` is called as each client finishes.
        Raises ``CoordinatorLost`` when the failure was the coordinator's (a dead global adapter or stage).
        """
        run = Schedule(tasks, [], RetryPolicy.from_config(self.cfg))
        try:
            while run.busy:
                if len(run.idle) < len(run.pending):  # lease what the waiting clients need; wait if holding none
                    run.idle += self.take(len(run.pending) - len(run.idle), block=not run.idle and not run.running)
                if run.pending and not run.idle and not run.running and not self.groups:
                    self.resize(elastic=True)  # every group has died: start what the cluster allows now
                    continue
                run.dispatch(global_ref)
                if not run.pending and run.idle:  # nothing left to start here: free the groups for others
                    self.give_back(run.idle)
                    run.idle = []
                if not run.running and not run.staging:
                    continue  # clients wait for a group another federation holds
                ref = run.wait()
                if ref is None:
                    for group in run.expire():
                        self._drop(group, run.policy.silence)
                elif ref in run.staging:
                    self._staged(run, ref)
                else:
                    self._trained(run, ref, stage, on_done)
        finally:  # groups still training for an abandoned call go back too: their next task queues behind
            self.give_back(run.idle + [group for _, group, _, _ in run.running.values()])
        return run.outcome

    def _staged(self, run: Schedule, ref: ray.ObjectRef) -> None:
        index = run.staging.pop(ref)
        try:
            ray.get(ref, timeout=self.timeout)
        except RayActorError as err:
            raise CoordinatorLost(first_line(err)) from None
        except (ObjectLostError, RayTaskError) as err:  # the update was lost with its trainer's node
            run.outcome.metrics[index] = None
            run.fail(index, f"update lost: {first_line(err)}")

    def _trained(self, run: Schedule, ref: ray.ObjectRef, stage, on_done) -> None:
        index, group, _, update_ref = run.running.pop(ref)
        try:
            metrics = ray.get(ref, timeout=self.timeout)
        except (RayActorError, RayTaskError, ObjectLostError) as err:
            alive = group.alive()
            if alive and isinstance(err, RayActorError):
                raise CoordinatorLost(first_line(err)) from None  # the dead actor was not this group's
            if alive:
                run.idle.append(group)
                run.fail(index, f"training failed: {first_line(err)}")
            else:
                self._drop(group, err)
                run.fail(index, f"trainer died: {first_line(err)}")
            return
        run.idle.append(group)
        run.outcome.metrics[index] = metrics
        if stage is None:
            run.outcome.updates[index] = update_ref
        else:
            run.staging[stage(run.tasks[index], update_ref)] = index
        if on_done is not None:
            on_done(metrics)

    def train_server(self, global_ref: ray.ObjectRef, task: ClientTask) -> ray.ObjectRef:
        """Train the server's own ``task`` (the post-hoc fine-tune) from ``global_ref``; returns the
        reference of the fine-tuned adapter (``global + delta``), which no round state sees."""
        outcome = self.train(global_ref, [task])
        if outcome.updates[0] is None:
            raise RuntimeError(f"the server's training task failed on every try: {outcome.failures}")
        return _plus_delta.remote(global_ref, outcome.updates[0])

    def _drop(self, group: TrainerGroup, reason) -> None:
        log.warning("a trainer group is dropped (%s); its client goes to the other %d group(s)",
                    first_line(reason), len(self.groups) - 1)
        with self.changed:
            if group in self.groups:
                self.groups.remove(group)
                self.lost += 1
            if group in self.free:
                self.free.remove(group)
            self.changed.notify_all()
        group.kill()

    def resize(self, elastic: bool | None = None) -> dict:
        """Between rounds: drop dead groups; with ``cluster.elastic`` (or ``elastic=True``), add groups up to
        what the cluster as it is now gives (``make_plan`` on the alive nodes). Returns the change."""
        dropped = 0
        checked = self.take(len(self.groups), block=False)  # only free groups: a busy one answers late
        for group in [g for g in checked if not g.alive()]:
            self._drop(group, "not answering")
            dropped += 1
        self.give_back(checked)
        added = 0
        if self.cfg.cluster.elastic if elastic is None else elastic:
            try:
                target = make_plan(self.cfg, alive_nodes(), self.federations).trainers.count
            except ConfigError:
                target = len(self.groups)
            new: list[TrainerGroup] = []
            while len(self.groups) + len(new) < target:
                try:  # a node that is leaving may still count as alive: do not wait long for its room
                    new.append(TrainerGroup(self.spec, self.cfg, self.timeout, place_timeout=10.0, start=False,
                                            trainer_cls=self.trainer_cls))
                except TimeoutError:
                    break
            try:
                start_groups(new)
                with self.changed:
                    self.groups += new
                self.give_back(new)
                added = len(new)
            except TimeoutError as err:
                log.warning("%s; the pool stays at %d group(s)", err, len(self.groups))
        if not self.groups:
            raise RuntimeError("no trainer group is left and none could be started; add nodes to the cluster")
        return {"trainer_groups": len(self.groups), "added": added, "dropped": dropped}

    def response_loss(self, global_ref: ray.ObjectRef, records: list[dict], batch_size: int, max_length: int) -> float:
        """Mean loss per response token of ``records``, split in parts of whole batches over the groups that
        are free (at least one); a dead group is dropped and the loss asked again."""
        if not records:
            raise ValueError("the response loss needs at least one held-out record")
        while True:
            if not self.groups:
                self.resize(elastic=True)
            taken = self.take(-(-len(records) // batch_size), block=True)
            if not taken:
                continue
            parts = split_batches(len(records), batch_size, len(taken))
            refs = [g.call("response_loss", global_ref, records[part], batch_size, max_length)
                    for g, part in zip(taken, parts)]
            try:
                sums = ray.get(refs, timeout=self.timeout)
            except RayActorError as err:
                dead = [g for g in taken if not g.alive()]
                if not dead:
                    raise
                for group in dead:
                    self._drop(group, err)
                continue
            finally:
                self.give_back(taken)
            tokens = sum(count for _, count in sums)
            if not tokens:
                raise ValueError(f"no held-out record keeps a response token within train.max_length={max_length}")
            return sum(total for total, _ in sums) / tokens

    def shutdown(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        for group in list(self.groups):
            group.kill()


class CoordinatorLost(RuntimeError):
    """The coordinator actor died (or stopped answering); restart it from the last checkpoint."""


class CoordinatorHandle:
    """The coordinator actor, pinned to the driver's node (it writes the run's checkpoints). A call that
    finds it dead raises ``CoordinatorLost``."""

    def __init__(self, init: InitialAdapter, cfg: ExperimentConfig, run_dir: str, resume_from: str | None,
                 start=None, hook=None) -> None:
        """``start``: the adapter (or its reference) round 0 starts from (default ``init.vector``); ``hook``:
        the defense's ``AggregateHook``, applied to every round's aggregate."""
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(num_cpus=0)(Coordinator).options(scheduling_strategy=here, runtime_env=actor_env(0))
        self.timeout = cfg.cluster.round_timeout_s
        self.actor = remote.remote(init.vector if start is None else start, init.spec, init.peft_config,
                                   CoordinatorSettings.from_config(cfg, run_dir), resume_from, hook)

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

    def uploads(self, round_idx: int, attacking: list[int] = ()) -> list[int]:
        """The clients whose uploads for ``round_idx`` arrived sound (after the attack's ``collude``)."""
        return self._get(self.actor.uploads.remote(round_idx, list(attacking)))

    def candidate(self, client_id: int) -> ray.ObjectRef:
        """The reference of the global adapter plus ``client_id``'s staged upload."""
        return self.actor.candidate.remote(client_id)

    def aggregate(self, round_idx: int, attacking: list[int] = (), reject: dict | None = None,
                  scale: dict | None = None) -> dict:
        """Validate and aggregate the updates staged for ``round_idx`` (the ``attacking`` clients' through the
        attack's ``collude``), without the ``reject``ed clients' and with ``scale``d ones; checkpoint."""
        return self._get(self.actor.aggregate.remote(round_idx, list(attacking), reject or {}, scale or {}))

    def similarity(self) -> dict:
        return self._get(self.actor.similarity.remote())

    def shutdown(self) -> None:
        try:
            ray.kill(self.actor)
        except RayActorError:
            pass

    def export(self, vector_ref: ray.ObjectRef, folder: str) -> str:
        """Write the adapter ``vector_ref`` as a PEFT folder at ``folder`` (on the driver's node)."""
        return self._get(self.actor.export.remote(vector_ref, folder))


class FinishedFederation:
    """A federation whose rounds are all done: its final adapter, read from the last checkpoint on the driver
    (what a defense and the evaluation need of it), without starting a coordinator actor."""

    def __init__(self, init: InitialAdapter, checkpoint: str) -> None:
        self.init = init
        self.ref = ray.put(load_checkpoint(Path(checkpoint)).vector_for(init.spec))

    def global_ref(self) -> ray.ObjectRef:
        return self.ref

    def export(self, vector_ref: ray.ObjectRef, folder: str) -> str:
        return str(save_adapter(Path(folder), ray.get(vector_ref), self.init.spec, self.init.peft_config))

    def shutdown(self) -> None:
        pass


@dataclass
class TrainOutcome:
    """What ``TrainerPool.train`` returns, in task order: update references (None when staged or failed),
    metrics (None for a client that failed every try) and every failed try."""

    updates: list
    metrics: list[TrainMetrics | None]
    failures: list[dict]  # {"client_id", "attempt", "reason"}
