"""Makespan of a matrix's federated runs side by side on one trainer pool, on a simulated cluster.

    .venv/bin/python benchmarks/matrix_throughput.py                          # 3 seeds; 3, 9, 24 groups
    .venv/bin/python benchmarks/matrix_throughput.py --rounds 4 --groups 3 9  # a quick variant

The cluster is Ray's local multi-node test cluster (``ray.cluster_utils.Cluster``: nodes of 8 logical CPUs
on this machine). Its trainers are stand-ins (``SleepTrainer``) whose local round sleeps a fixed time, so
the schedule, not this machine's two cores, sets the pace. The matrix is configs/paper_gpu.yaml's 17 arms
with seeds 0-2 (24 federated runs, 51 arms), scheduled by fedsafe's own code: ``matrix.group_by_federation``
and ``matrix.run_side_by_side`` with as many runs side by side as ``experiment.side_by_side`` gives, every
client's round through ``TrainerPool.train`` (the real leases). A federated run is --rounds rounds of
``clients_per_round`` clients of --client-s seconds each; an arm with a defense trains one server task of
--defense-s; every arm's evaluation holds a lock for --eval-s, as ``GenerationPool`` takes one call at a
time. The sequential schedule is the same code with ``cluster.concurrent_federations=1`` on 3 groups (what
a run got before federated runs shared the pool). Utilisation: the trainers' busy seconds over groups x
makespan.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import types
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsafe.cluster.plan import ActorPlan  # noqa: E402
from fedsafe.cluster.pool import TrainerPool  # noqa: E402
from fedsafe.config import load_config  # noqa: E402
from fedsafe.experiment import side_by_side  # noqa: E402
from fedsafe.matrix import expand_arms, group_by_federation, run_side_by_side  # noqa: E402
from fedsafe.updates import ClientTask, ClientUpdate, TrainMetrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SleepTrainer:
    """A trainer actor's interface; ``train`` sleeps the task's ``attack_params["sleep_s"]``."""

    def __init__(self, *args) -> None:
        pass

    def placement(self) -> dict:
        return {"node": "127.0.0.1", "gpus": []}

    def load(self, group_gpus=None) -> bool:
        return True

    def address(self) -> tuple[str, int]:
        return "127.0.0.1", 0

    def start(self, address: str = "127.0.0.1", port: int = 0) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def train(self, global_vector, task: ClientTask):
        seconds = task.attack_params["sleep_s"]
        time.sleep(seconds)
        return (ClientUpdate(task.client_id, 1, torch.zeros(1)),
                TrainMetrics(task.client_id, task.role, 0.0, 0.0, seconds, 0.0))


def sleep_task(client_id: int, round_idx: int, seconds: float) -> ClientTask:
    return ClientTask(client_id, round_idx, "benign", [], [0.0], 1, 1, 0.0, 0, attack_params={"sleep_s": seconds})


def simulate(cfg, groups: int, concurrent: int, args) -> dict:
    """Run the matrix's schedule on ``groups`` stand-in trainer groups; returns makespan and utilisation."""
    cfg.cluster.concurrent_federations = concurrent
    plan = types.SimpleNamespace(trainers=ActorPlan("trainer", groups, 1.0, 0.0, 1))
    pool = TrainerPool(plan, cfg, trainer_cls=SleepTrainer)
    arms = expand_arms(cfg)
    by_federation = list(group_by_federation(arms).values())
    workers = side_by_side(len(pool.groups), cfg.federation.clients_per_round, concurrent, len(by_federation))
    generation, trained, busy = threading.Lock(), set(), []
    global_ref = ray.put(torch.zeros(1))

    def train(tasks):
        busy.extend(m.seconds for m in pool.train(global_ref, tasks).metrics if m is not None)

    def finish(arm, after_round) -> None:
        if arm.fed_dir not in trained:  # the group's first arm trains the federated run, the others load it
            for r in range(args.rounds):
                train([sleep_task(c, r, args.client_s) for c in range(cfg.federation.clients_per_round)])
                after_round({"round": r})
            trained.add(arm.fed_dir)
        if arm.spec.defense_level:
            train([sleep_task(-1, 0, args.defense_s)])
        with generation:
            time.sleep(args.eval_s)

    started = time.perf_counter()
    if workers > 1:
        run_side_by_side(by_federation, workers, finish, None)
    else:
        for arm in arms:
            finish(arm, lambda record: None)
    makespan = time.perf_counter() - started
    pool.shutdown()
    return {"makespan": makespan, "side_by_side": workers, "utilisation": sum(busy) / (groups * makespan),
            "federations": len(by_federation), "arms": len(arms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "paper_gpu.yaml"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--groups", type=int, nargs="+", default=[3, 9, 24])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--client-s", type=float, default=0.2)
    p.add_argument("--defense-s", type=float, default=0.4)
    p.add_argument("--eval-s", type=float, default=0.2)
    args = p.parse_args()
    from ray.cluster_utils import Cluster

    cfg = load_config(args.config, [f"seeds={list(range(args.seeds))}", "output.root=/tmp/fedsafe-matrix-throughput"])
    nodes = -(-max(args.groups) // 8)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=8)
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        sequential = simulate(cfg, 3, 1, args)
        print(f"{sequential['arms']} arms, {sequential['federations']} federated runs; {args.rounds} rounds of "
              f"{cfg.federation.clients_per_round} x {args.client_s:g} s, defense {args.defense_s:g} s, "
              f"evaluation {args.eval_s:g} s (one at a time); {nodes} simulated node(s) of 8 CPUs\n")
        print("| schedule | trainer groups | side by side | makespan (s) | / sequential | trainer utilisation |")
        print("|---|---|---|---|---|---|")
        print(f"| sequential | 3 | 1 | {sequential['makespan']:.1f} | 1.00 | {sequential['utilisation']:.0%} |",
              flush=True)
        rows = {}
        for groups in args.groups:
            r = rows[groups] = simulate(cfg, groups, 0, args)
            print(f"| side by side | {groups} | {r['side_by_side']} | {r['makespan']:.1f} | "
                  f"{r['makespan'] / sequential['makespan']:.2f} | {r['utilisation']:.0%} |", flush=True)
        if 24 in rows:
            ratio = rows[24]["makespan"] / sequential["makespan"]
            print(f"\n| target | measured | met |\n|---|---|---|\n| at 24 groups, makespan at most 1/5 of the "
                  f"sequential one | {ratio:.3f} (1/{1 / ratio:.1f}) | {'met' if ratio <= 0.2 else 'not met'} |")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
