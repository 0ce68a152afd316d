"""Soak: a long federated run on the tiny model, sampling the memory of every process of the run.

    .venv/bin/python benchmarks/soak.py                        # 300 rounds, warm-up 50, a sample every 10
    .venv/bin/python benchmarks/soak.py --rounds 500 --json runs/soak.json

Every ``--every`` rounds it records the unique memory (USS: pages no other process shares, so the object
store's shared pages do not count) and the resident memory (RSS) of the driver and of each process under
it (Ray's GCS and raylet, the coordinator, the trainers, idle workers). Growth of a process = its memory at
the end over its memory when warm-up ended, for processes alive at both samples. Target: every process
under 5% growth after warm-up. Evaluation is off (it is not a loop); checkpoints are written every round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.05


def label(proc: psutil.Process) -> str:
    """``driver``, ``ray::Trainer``, ``raylet`` ...: the process title without its method or arguments."""
    if proc.pid == psutil.Process().pid:
        return "driver"
    cmdline = proc.cmdline() or [proc.name()]
    first = cmdline[0].split(".")[0] if cmdline[0].startswith("ray::") else Path(cmdline[0]).name
    if first.startswith("python") and len(cmdline) > 1:  # Ray's helper scripts: name them by their script
        first = Path(next((a for a in cmdline[1:] if a.endswith(".py")), cmdline[1])).stem
    return first


def sample() -> dict[int, dict]:
    """pid -> {label, uss_mib, rss_mib} for the driver and every process under it."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            out[proc.pid] = {"label": label(proc), "uss_mib": info.uss / 2**20, "rss_mib": info.rss / 2**20}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def growth(first: dict[int, dict], last: dict[int, dict], key: str) -> list[dict]:
    """Per process alive at both samples: memory then and now, and the relative growth."""
    rows = []
    for pid in sorted(set(first) & set(last)):
        before, after = first[pid][key], last[pid][key]
        rows.append({"pid": pid, "label": last[pid]["label"], "before_mib": round(before, 1),
                     "after_mib": round(after, 1), "growth": (after - before) / before if before else 0.0})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50, help="rounds before the reference sample")
    p.add_argument("--every", type=int, default=10, help="sample memory every this many rounds")
    p.add_argument("--json", help="also write the samples and growth here")
    p.add_argument("overrides", nargs="*", help="config overrides on top of configs/smoke.yaml")
    args = p.parse_args()

    from fedsafe.cluster import runtime
    from fedsafe.config import load_config
    from fedsafe.experiment import Session, federate, load_data

    out = Path(tempfile.mkdtemp(prefix="fedsafe-soak-"))
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        f"federation.num_rounds={args.rounds}", "evaluation.every_n_rounds=0", "output.trackers=[]",
        f"output.root={out}", "output.keep_checkpoints=2", "cluster.num_cpus=2", *args.overrides])
    samples: list[dict] = []
    started = time.perf_counter()

    def on_round(record: dict) -> None:
        r = record["round"] + 1
        if r == args.warmup or r % args.every == 0 or r == args.rounds:
            samples.append({"round": r, "seconds": time.perf_counter() - started, "processes": sample()})
            total = sum(s["uss_mib"] for s in samples[-1]["processes"].values())
            print(f"round {r:4d}  {time.perf_counter() - started:7.1f} s  {len(samples[-1]['processes'])} processes  "
                  f"USS total {total:8.1f} MiB", flush=True)

    session = Session(cfg)
    data = load_data(cfg, session.synth)
    federate(session, cfg, data, out / "run", on_round=on_round).shutdown()
    session.close()
    runtime.shutdown()

    reference = next(s for s in samples if s["round"] >= args.warmup)
    final = samples[-1]
    result = {"rounds": args.rounds, "warmup": args.warmup, "wall_s": round(time.perf_counter() - started, 1),
              "uss": growth(reference["processes"], final["processes"], "uss_mib"),
              "rss": growth(reference["processes"], final["processes"], "rss_mib")}
    print(f"\nmemory from round {reference['round']} to round {final['round']} (processes alive at both):")
    print(f"{'process':28s} {'pid':>7s} {'USS MiB':>17s} {'growth':>8s} {'RSS MiB':>17s} {'growth':>8s}")
    for u, r in zip(result["uss"], result["rss"]):
        print(f"{u['label'][:28]:28s} {u['pid']:7d} {u['before_mib']:8.1f}->{u['after_mib']:7.1f} {u['growth']:8.2%} "
              f"{r['before_mib']:8.1f}->{r['after_mib']:7.1f} {r['growth']:8.2%}")
    worst = max(result["uss"], key=lambda row: row["growth"])
    print(f"\nlargest USS growth: {worst['growth']:.2%} ({worst['label']}), target < {TARGET:.0%}: "
          f"{'met' if worst['growth'] < TARGET else 'NOT met'}; {args.rounds} rounds in {result['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
