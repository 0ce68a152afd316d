"""Runs on Ray's local multi-node test cluster, each in its own process (a driver can join one Ray only,
and the other integration tests share one): ``python -m tests.cluster_scenarios NAME OUT_DIR MODEL_CACHE``
(NAME: elastic, lost_update, gpu_placement) prints one JSON line with what the run showed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def wait_until_dead(node_id: str, timeout: float = 300.0) -> None:
    """Block until Ray's GCS reports ``node_id`` dead (the event a removed node's faults depend on)."""
    import ray

    deadline = time.monotonic() + timeout
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray still reports node {node_id} alive {timeout:g}s after its removal")
        time.sleep(0.1)


def elastic(out: Path, model_cache: str) -> dict:
    """A run that starts on a 2-CPU head node; a 2-CPU worker node joins after round 0 and is removed
    without warning after round 1. Each change waits for its event before round 2 starts: the node
    registered (``wait_for_nodes``), then the node reported dead by Ray, so round 2 always finds the
    worker's groups dead, whatever the machine's speed."""
    import ray
    from ray.cluster_utils import Cluster

    from fedsafe.cluster.runtime import WORKER_ENV
    from fedsafe.config import load_config
    from fedsafe.matrix import run_experiment
    from tests.conftest import SMOKE

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, runtime_env={"env_vars": WORKER_ENV}, logging_level="ERROR")
    cfg = load_config(SMOKE, [f"model.cache_dir={model_cache}", f"output.root={out}", "output.trackers=[]",
                              "federation.num_rounds=5", "evaluation.num_prompts=8", "evaluation.num_benign=8",
                              "cluster.round_timeout_s=300"])
    events: list[str] = []
    worker = {}

    def on_round(record: dict) -> None:
        if record["round"] == 0:
            worker["node"] = cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            events.append("added a 2-CPU worker node")
        elif record["round"] == 1:
            node_id = worker["node"].node_id
            cluster.remove_node(worker["node"], allow_graceful=False)
            wait_until_dead(node_id)
            events.append("removed the worker node; Ray reports it dead")

    results = run_experiment(cfg, out / "run", on_round=on_round)
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    ray.shutdown()
    cluster.shutdown()
    return {
        "rounds": [r["round"] for r in records],
        "trainer_groups": [r["trainer_groups"] for r in records],
        "pool": [r.get("trainer_pool") for r in records],
        "clients_trained": [len(r["client_metrics"]) for r in records],
        "final_rule": next(iter(results["arms"].values()))["evaluation"]["safety"]["rule"],
        "events": events,
    }


def lost_update(out: Path, model_cache: str) -> dict:
    """One round on a 2-CPU head (the generation slot and 1 trainer group) and a 2-CPU worker (2 groups).
    The moment the first update that lives in the worker's object store is handed to the coordinator, the
    worker node is removed without warning: that update is lost on its way (LoRA r=16: 136 KB, above
    Ray's 100 KiB inline limit, so it sits in the worker's store), and the worker's other client dies
    mid-training."""
    import ray
    from ray.cluster_utils import Cluster

    from fedsafe.cluster.pool import CoordinatorHandle
    from fedsafe.cluster.runtime import WORKER_ENV
    from fedsafe.config import load_config
    from fedsafe.experiment import Session, client_task, load_data, round_clients
    from tests.conftest import SMOKE

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, runtime_env={"env_vars": WORKER_ENV}, logging_level="ERROR")
    cfg = load_config(SMOKE, [f"model.cache_dir={model_cache}", f"output.root={out}", "output.trackers=[]",
                              "lora.r=16", "lora.alpha=32", "cluster.round_timeout_s=300"])
    session = Session(cfg)
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    grown = session.pool.resize()
    data = load_data(cfg, session.synth)
    coordinator = CoordinatorHandle(session.init, cfg, str(out), None)
    sampled = round_clients(cfg, len(data.clients), 0)
    tasks = [client_task(cfg, data.clients[c], data.shards[c], 0, attack=data.attack) for c in sampled]
    events: list[str] = []

    def stage(task, update_ref):
        if not events:
            nodes = ray.experimental.get_object_locations([update_ref])[update_ref]["node_ids"]
            if worker.node_id in nodes:
                cluster.remove_node(worker, allow_graceful=False)
                events.append(f"removed the worker node holding client {task.client_id}'s update")
        return coordinator.stage(0, task, update_ref)

    outcome = session.pool.train(coordinator.global_ref(), tasks, stage=stage)
    summary = coordinator.aggregate(0)
    session.close()
    ray.shutdown()
    cluster.shutdown()
    return {"groups_after_join": grown["trainer_groups"], "events": events, "sampled": sampled,
            "failures": outcome.failures, "aggregated": summary["clients"]}


def gpu_placement(out: Path, model_cache: str) -> dict:
    """The paper plan on a CPU head and two nodes of 4 declared GPUs (Ray assigns the IDs, no CUDA needed):
    where each trainer rank, vLLM replica and the coordinator run and what each sees, with one GPU per
    client and with two. The actors are the probes of tests/test_gpu.py, which report and load nothing."""
    import os

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from fedsafe.actors.trainer import InitialAdapter
    from fedsafe.cluster import runtime
    from fedsafe.cluster.generation import GenerationPool
    from fedsafe.cluster.plan import generation_models, make_plan
    from fedsafe.cluster.pool import CoordinatorHandle, TrainerPool
    from fedsafe.config import load_config
    from fedsafe.training.lora import AdapterSpec
    from tests.test_gpu import PAPER_GPU, ProbeGenerator, ProbeTrainer

    os.environ["HF_TOKEN"] = "hf_test_token"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=8, num_gpus=4)
    ray.init(address=cluster.address, runtime_env={"env_vars": runtime.worker_env()}, logging_level="ERROR")
    cluster.wait_for_nodes()
    seen = []
    for overrides in ([], ["trainer.gpus_per_client=2"]):
        cfg = load_config(PAPER_GPU, ["cluster.address=auto", *overrides])
        plan = make_plan(cfg, runtime.alive_nodes())
        pool = TrainerPool(plan, cfg, trainer_cls=ProbeTrainer)
        gen = GenerationPool(cfg, generator_cls=ProbeGenerator)
        init = InitialAdapter(torch.zeros(4), AdapterSpec(("w",), ((4,),)), {})
        coordinator = CoordinatorHandle(init, cfg, str(out), None)
        try:
            trainers = [ray.get([a.placement.remote() for a in g.actors]) for g in pool.groups]
            replicas = [ray.get(a.placement.remote()) for m in generation_models(cfg) for a in gen._replicas(m)]
            coord = ray.get(coordinator.actor.placement.remote())
        finally:
            coordinator.shutdown()
            gen.shutdown()
            pool.shutdown()
        sizes = {"trainers": plan.trainers.count, "generators": plan.generators.count,
                 "group_size": plan.trainers.group_size}
        seen.append((sizes, trainers, replicas, coord))
    ray.shutdown()
    cluster.shutdown()
    return {"seen": seen}


if __name__ == "__main__":
    name, out, cache = sys.argv[1:4]
    print(json.dumps({"elastic": elastic, "lost_update": lost_update, "gpu_placement": gpu_placement}[name](Path(out), cache)))
