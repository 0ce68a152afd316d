"""The trainer pool and the coordinator handle: every ``ray.*`` call of a run lives here.

Tasks go to idle trainers, one in flight per trainer; updates stay in the object store and go straight
from the trainers to the coordinator; the driver only sees small metrics.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsafe.actors.coordinator import Coordinator
from fedsafe.actors.trainer import InitialAdapter, Trainer
from fedsafe.cluster.plan import Plan
from fedsafe.config import ExperimentConfig
from fedsafe.updates import ClientTask, TrainMetrics


class TrainerPool:
    def __init__(self, plan: Plan, cfg: ExperimentConfig) -> None:
        remote = ray.remote(num_cpus=plan.trainers.num_cpus, num_gpus=plan.trainers.num_gpus)(Trainer)
        self.timeout = cfg.cluster.round_timeout_s
        self.actors = [
            remote.remote(cfg.model, cfg.lora, cfg.seed, cfg.train.threads_per_trainer)
            for _ in range(plan.trainers.count)
        ]
        ray.get([a.ready.remote() for a in self.actors], timeout=self.timeout)

    def initial_adapter(self) -> InitialAdapter:
        return ray.get(self.actors[0].initial_adapter.remote(), timeout=self.timeout)

    def train(self, global_ref: ray.ObjectRef, tasks: list[ClientTask], on_done=None) -> tuple[list, list[TrainMetrics]]:
        """Run ``tasks`` on idle trainers. Returns update refs and metrics, both in task order.
        ``on_done(metrics)`` is called as each client finishes (progress bars)."""
        pending = list(enumerate(tasks))
        idle = list(self.actors)
        in_flight: dict[ray.ObjectRef, tuple[int, object]] = {}
        update_refs: list = [None] * len(tasks)
        metrics: list = [None] * len(tasks)
        while pending or in_flight:
            while pending and idle:
                index, task = pending.pop(0)
                actor = idle.pop(0)
                update_ref, metrics_ref = actor.train.options(num_returns=2).remote(global_ref, task)
                update_refs[index] = update_ref
                in_flight[metrics_ref] = (index, actor)
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.timeout)
            if not done:
                raise TimeoutError(f"no client finished within cluster.round_timeout_s={self.timeout}s; "
                                   "raise it or check the trainers' logs")
            index, actor = in_flight.pop(done[0])
            metrics[index] = ray.get(done[0])
            idle.append(actor)
            if on_done is not None:
                on_done(metrics[index])
        return update_refs, metrics

    def response_loss(self, global_ref: ray.ObjectRef, records: list[dict], batch_size: int, max_length: int) -> float:
        return ray.get(self.actors[0].response_loss.remote(global_ref, records, batch_size, max_length),
                       timeout=self.timeout)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class CoordinatorHandle:
    """The coordinator actor, pinned to the driver's node (it writes the run's checkpoints)."""

    def __init__(self, init: InitialAdapter, cfg: ExperimentConfig, run_dir: str, resume_from: str | None) -> None:
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(num_cpus=0)(Coordinator).options(scheduling_strategy=here)
        self.timeout = cfg.cluster.round_timeout_s
        a = cfg.aggregation
        self.actor = remote.remote(init.vector, init.spec, init.peft_config, a.rule, a.params,
                                   cfg.expected_malicious, a.server_opt, run_dir, cfg.output.keep_checkpoints,
                                   cfg.seed, resume_from, cfg.evaluation.client_similarity)

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
