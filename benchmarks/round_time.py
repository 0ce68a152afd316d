"""Time of one federated round in the smoke setting, and how busy the trainers were.

    .venv/bin/python benchmarks/round_time.py                      # smoke config, 8 rounds
    .venv/bin/python benchmarks/round_time.py federation.num_rounds=20 train.local_steps=20

Prints each round's wall time, the median over rounds after the first (warm-up), and trainer utilisation:
the clients' summed training seconds over (trainers x round seconds). The rest of a round is
orchestration: dispatch, object-store transfers, aggregation and checkpointing.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsafe.cluster import runtime  # noqa: E402
from fedsafe.cluster.plan import generation_reserve, make_plan  # noqa: E402
from fedsafe.config import load_config  # noqa: E402
from fedsafe.matrix import run_experiment  # noqa: E402
from fedsafe.run_dir import create_run_dir  # noqa: E402


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "smoke.yaml",
                          ["federation.num_rounds=8", "evaluation.num_prompts=16", "output.trackers=[]",
                           f"output.root={tmp}", *overrides])
        started = time.perf_counter()
        resources = runtime.connect(cfg.cluster, generation_reserve(cfg)[0])
        ray_start = time.perf_counter() - started
        run_dir = create_run_dir(cfg)
        results = run_experiment(cfg, run_dir)
        rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runtime.shutdown()

    trainers = make_plan(cfg, resources).trainers.count
    print(f"ray start: {ray_start:.1f} s; whole run: {results['wall_s']:.1f} s; trainers: {trainers}")
    print("round  seconds  client train seconds (sum)  utilisation")
    for r in rounds:
        busy = sum(c["seconds"] for c in r["client_metrics"])
        print(f"{r['round']:5d}  {r['seconds']:7.2f}  {busy:26.2f}  {busy / (trainers * r['seconds']):10.0%}")
    steady = rounds[1:] or rounds
    median = statistics.median(r["seconds"] for r in steady)
    busy = statistics.median(sum(c["seconds"] for c in r["client_metrics"]) / (trainers * r["seconds"]) for r in steady)
    print(f"median round after warm-up: {median:.2f} s; median trainer utilisation: {busy:.0%}")


if __name__ == "__main__":
    main(sys.argv[1:])
