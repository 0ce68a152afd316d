"""Scale-out benchmarks (issue 6); each prints its measured ratio against the target.

    .venv/bin/python benchmarks/scaleout.py loop        # Ray, 2 trainers vs a single-process loop (SmolLM2)
    .venv/bin/python benchmarks/scaleout.py clients     # 10 -> 100 -> 1000 virtual clients (tiny model)
    .venv/bin/python benchmarks/scaleout.py transport   # orchestration share of a SmolLM2 round, 1 trainer

loop: the same clients, tasks and FedAvg, once through fedsafe (trainer actors, object store, coordinator)
and once the way OpenFedLLM runs: one process that loads the model and trains the sampled clients one
after another (with 1 thread, and with one thread per core). Target: Ray >= 1.7x faster with 2 trainers.
clients: round time and driver/coordinator memory with 10, 100 and 1,000 clients, 3 per round, each size
in a fresh process. Target: flat within 10%.
transport: with one trainer a round is its clients' training plus everything else (dispatch, adapter
transfers through the object store, aggregation, checkpoint); the rest's share of the round. Target < 10%.
Rounds after the first (warm-up) count; medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsafe.config import from_yaml_text  # noqa: E402

SMOLLM2 = """
model: {name: "builtin:smollm2-135m-instruct"}
lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}
clients:
  - {name: benign, role: benign, count: 7, dataset: sharegpt, dataset_args: {part: train}}
  - {name: malicious, role: malicious, count: 3, dataset: harmful_qa}
federation: {num_rounds: 4, clients_per_round: 4, examples_per_client: 64}
train: {lr: 2.0e-3, min_lr: 2.0e-4, local_steps: 8, batch_size: 4, max_length: 128}
evaluation: {prompts: advbench, num_prompts: 8}
generation: {backend: hf}
cluster: {num_cpus: 2, num_trainers: 2}
output: {name: bench, trackers: []}
"""


def median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] or values)


def ray_rounds(cfg, out: Path) -> tuple[list[dict], dict]:
    """Round records of a federated run through fedsafe (no evaluation), and process memory (MiB)."""
    from fedsafe.cluster import runtime
    from fedsafe.experiment import Session, federate, load_data

    session = Session(cfg)
    data = load_data(cfg, session.synth)
    coordinator = federate(session, cfg, data, out)
    memory = {"driver_mib": rss_mib(), "coordinator_mib": rss_mib("ray::Coordinator")}
    coordinator.shutdown()
    session.close()
    runtime.shutdown()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], memory


def rss_mib(title: str | None = None) -> float:
    """Resident memory of this process, or of the process whose command line starts with ``title``
    (Ray names actor processes ``ray::ClassName``)."""
    import psutil

    if title is None:
        return psutil.Process().memory_info().rss / 2**20
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and p.info["cmdline"][0].startswith(title):
            return p.memory_info().rss / 2**20
    raise RuntimeError(f"no process named {title}")


def loop_rounds(cfg, threads: int) -> list[float]:
    """OpenFedLLM's way: one process, one model, the sampled clients trained in turn, FedAvg in place."""
    import torch

    from fedsafe.actors.trainer import Trainer
    from fedsafe.experiment import client_task, load_data, round_clients

    data = load_data(cfg)
    trainer = Trainer(cfg.model, cfg.lora, cfg.seed, threads, cfg.trainer)
    trainer.start()
    global_vector = trainer.initial_adapter().vector.clone()
    seconds = []
    for round_idx in range(cfg.federation.num_rounds):
        start = time.perf_counter()
        sampled = round_clients(cfg, len(data.clients), round_idx)
        updates = [trainer.train(global_vector, client_task(cfg, data.clients[c], data.shards[c], round_idx, attack=data.attack))[0]
                   for c in sampled]
        weights = torch.tensor([u.num_examples for u in updates], dtype=torch.float32)
        global_vector += (torch.stack([u.delta for u in updates]) * (weights / weights.sum())[:, None]).sum(0)
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_loop(args) -> None:
    cfg = from_yaml_text(SMOLLM2, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        rounds, _ = ray_rounds(cfg, Path(tmp))
    ray_s = median_after_warmup([r["seconds"] for r in rounds])
    loops = {threads: median_after_warmup(run_isolated("loop-only", [f"--threads={threads}", *args.overrides]))
             for threads in (1, 2)}
    print(f"clients per round {cfg.federation.clients_per_round}, {cfg.train.local_steps} steps x batch "
          f"{cfg.train.batch_size} x {cfg.train.max_length} tokens, {cfg.model.name}")
    print(f"fedsafe on Ray, {cfg.cluster.num_trainers} trainers x 1 thread: {ray_s:.1f} s per round")
    for threads, seconds in loops.items():
        print(f"single-process loop, {threads} thread(s): {seconds:.1f} s per round -> Ray is {seconds / ray_s:.2f}x faster")
    best = min(loops.values())
    print(f"against the faster loop: {best / ray_s:.2f}x (target >= 1.7x: {'met' if best / ray_s >= 1.7 else 'not met'})")


def run_isolated(mode: str, extra: list[str]) -> list[float] | dict:
    """Run one measurement in a fresh Python process (its own memory, its own Ray); returns its JSON."""
    proc = subprocess.run([sys.executable, __file__, mode, *extra], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loop_only(args) -> None:
    cfg = from_yaml_text(SMOLLM2, args.overrides)
    print(json.dumps(loop_rounds(cfg, args.threads)))


def clients_cfg(num_clients: int, overrides: list[str]):
    benign = num_clients * 7 // 10
    return from_yaml_text(
        (ROOT / "configs" / "smoke.yaml").read_text(),
        [f"clients.0.count={benign}", f"clients.1.count={num_clients - benign}", "federation.num_rounds=12",
         "federation.examples_per_client=16", "train.local_steps=2", "evaluation.num_prompts=8",
         "output.trackers=[]", *overrides])


def clients_only(args) -> None:
    cfg = clients_cfg(args.num_clients, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        rounds, memory = ray_rounds(cfg, Path(tmp))
    print(json.dumps({"round_s": median_after_warmup([r["seconds"] for r in rounds]), **memory}))


def bench_clients(args) -> None:
    rows = {n: run_isolated("clients-only", [f"--num-clients={n}", *args.overrides]) for n in (10, 100, 1000)}
    print("clients  round s  driver MiB  coordinator MiB")
    for n, r in rows.items():
        print(f"{n:7d}  {r['round_s']:7.3f}  {r['driver_mib']:10.0f}  {r['coordinator_mib']:15.0f}")
    base = rows[10]
    for key in ("round_s", "driver_mib", "coordinator_mib"):
        worst = max(rows[n][key] / base[key] for n in rows)
        print(f"{key}: 1000 clients / 10 clients = {rows[1000][key] / base[key]:.3f}, largest ratio {worst:.3f} "
              f"(target within 1.10: {'met' if worst <= 1.10 else 'not met'})")


def bench_transport(args) -> None:
    cfg = from_yaml_text(SMOLLM2, ["cluster.num_trainers=1", "cluster.num_cpus=1", "federation.clients_per_round=3",
                                   *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        rounds, _ = ray_rounds(cfg, Path(tmp))
    print("round  seconds  training s  rest s  rest share")
    shares = []
    for r in rounds:
        train = sum(c["seconds"] for c in r["client_metrics"])
        shares.append((r["seconds"] - train) / r["seconds"])
        print(f"{r['round']:5d}  {r['seconds']:7.2f}  {train:10.2f}  {r['seconds'] - train:6.2f}  {shares[-1]:9.1%}")
    share = median_after_warmup(shares)
    print(f"orchestration share after warm-up (median): {share:.1%} (target < 10%: {'met' if share < 0.10 else 'not met'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["loop", "clients", "transport", "loop-only", "clients-only"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = p.parse_args()
    {"loop": bench_loop, "clients": bench_clients, "transport": bench_transport, "loop-only": loop_only,
     "clients-only": clients_only}[args.mode](args)


if __name__ == "__main__":
    main()
