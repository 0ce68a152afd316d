"""Time and peak memory of every aggregation rule on adapter-sized inputs, against the targets.

    .venv/bin/python benchmarks/aggregation.py                        # n in {20, 50}, d in {2M, 16.8M}
    .venv/bin/python benchmarks/aggregation.py --n 100 --d 16800000   # the n = 100 memory check
    .venv/bin/python benchmarks/aggregation.py --n 10 --d 100000      # tiny CPU variant (seconds)
    PYTHONPATH=/path/to/flwr .venv/bin/python benchmarks/aggregation.py   # with Flower's column
    .venv/bin/python benchmarks/aggregation.py --device cuda --n 50 --d 16800000   # the GPU target

d = 16.8M is Llama-2-7B's LoRA (r=32 on q_proj, v_proj: 32 layers x 2 modules x 2 x 4096 x 32 = 16.8M).
For each (n, d) it prints, per rule: seconds, the ratio to FedAvg's time (FedAvg itself against one
``U.mean(0)`` over the stacked matrix, the memory-bandwidth floor), and the peak memory beyond the input
matrix (resident memory sampled every 5 ms; on a GPU, torch's peak allocation). Beside fedavg, median and
krum it times a straightforward per-tensor Python loop over 128 named tensors, the way the authors' code
aggregates LoRA weights. Where Flower (``flwr``, not a fedsafe dependency) is importable, it times Flower's
NumPy ``aggregate_median``, ``aggregate_trimmed_avg`` and Bulyan's coordinate step
(``aggregate_median`` + ``_aggregate_n_closest_weights`` on the rows fedsafe's Bulyan selected) on the same
input, and the largest difference from fedsafe's result (with the number of coordinates differing by more than
1e-5: Bulyan's ties in distance to the median may keep another of two equally near values). f = n // 10 malicious clients are assumed. At the
end a table of the issue's targets with the measured ratios, met or not met. Float32; torch and numba use
all cores.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsafe.aggregation import AggregationContext, aggregate, available_rules  # noqa: E402

NUM_TENSORS = 128  # LoRA A and B of q_proj and v_proj in 32 layers


class PeakRSS:
    """Peak resident memory of this process above the level at entry, sampled in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.proc = interval, psutil.Process()

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn, device: str = "cpu"):
    """(seconds, peak MiB beyond the level at entry) of one call of fn."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as mem:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, mem.mib


def as_named(updates: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Each client's update as NUM_TENSORS named tensors (views), as a PEFT state dict would hold it."""
    sizes = [updates.shape[1] // NUM_TENSORS] * NUM_TENSORS
    sizes[-1] += updates.shape[1] - sum(sizes)
    return [dict(zip((f"t{i}" for i in range(NUM_TENSORS)), row.split(sizes))) for row in updates]


def naive_fedavg(clients, weights):
    return {k: sum(w * c[k] for w, c in zip(weights, clients)) for k in clients[0]}


def naive_median(clients):
    return {k: torch.stack([c[k] for c in clients]).median(dim=0).values for k in clients[0]}


def naive_krum(clients, f):
    n = len(clients)
    dist = torch.zeros(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = sum(float(((clients[i][k] - clients[j][k]) ** 2).sum()) for k in clients[i])
    scores = (dist + torch.diag(torch.full((n,), float("inf")))).topk(n - f - 2, largest=False).values.sum(1)
    return clients[int(scores.argmin())]


NAIVE = {"fedavg": lambda cl, w, f: naive_fedavg(cl, w), "median": lambda cl, w, f: naive_median(cl),
         "krum": lambda cl, w, f: naive_krum(cl, f)}


def rule_params(rule: str, n: int, f: int, d: int) -> dict:
    return {"trimmed_mean": {"num_trim": f}, "dnc": {"b": min(10000, d)}}.get(rule, {})


def flower_functions():
    """Flower's NumPy rules by fedsafe's names, or {} where flwr is not importable."""
    try:
        from flwr.server.strategy import aggregate as fl
    except ImportError:
        return {}

    def results(u: torch.Tensor, rows=None):
        return [([u[i].numpy()], 1) for i in (range(u.shape[0]) if rows is None else rows)]

    def bulyan_step(u: torch.Tensor, f: int):
        """Bulyan's coordinate step on the rows fedsafe's repeated Krum picks (its Krum is not timed)."""
        theta_rows = aggregate("bulyan", u, num_malicious=f).weights.nonzero().flatten().tolist()
        chosen = results(u, theta_rows)
        beta = len(chosen) - 2 * f
        return lambda: fl._aggregate_n_closest_weights(fl.aggregate_median(chosen), chosen, beta)[0]

    return {"median": lambda u, f: (lambda: fl.aggregate_median(results(u))[0]),
            "trimmed_mean": lambda u, f: (lambda: fl.aggregate_trimmed_avg(results(u), f / u.shape[0])[0]),
            "bulyan": bulyan_step}


class Targets:
    """The issue's targets, filled while the tables are measured; printed at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, target: str, measured: str, met: bool) -> None:
        self.rows.append((target, measured, met))

    def print(self) -> None:
        print("\n## Targets\n| target | measured | met |\n|---|---|---|")
        for target, measured, met in self.rows:
            print(f"| {target} | {measured} | {'met' if met else 'not met'} |")


def check_targets(targets: Targets, n: int, d: int, device: str, times: dict[str, float],
                  flower: dict[str, float]) -> None:
    """Record the targets this (n, d) measures."""
    fedavg = times["fedavg"]
    for rule, seconds in flower.items():
        if n in (20, 50) and d in (2_000_000, 16_800_000):
            ratio = seconds / times[rule]
            targets.add(f"{rule} at least 4x Flower (n={n}, d={d:,})",
                        f"{times[rule]:.3f} s vs {seconds:.3f} s: {ratio:.1f}x", ratio >= 4)
    if (n, d) != (50, 16_800_000):
        return
    if device == "cuda":
        slowest = max(times, key=times.get)
        targets.add("every rule under 100 ms on the GPU (n=50, d=16.8M)",
                    f"slowest {slowest} {times[slowest] * 1000:.0f} ms", times[slowest] < 0.1)
        return
    for rule, limit in (("median", 20), ("trimmed_mean", 20), ("bulyan", 40), ("multi_krum", 5)):
        if rule in times:
            ratio = times[rule] / fedavg
            targets.add(f"{rule} within {limit}x FedAvg (n=50, d=16.8M)",
                        f"{times[rule]:.3f} s vs {fedavg:.3f} s: {ratio:.1f}x", ratio <= limit)
    if "residual" in times:
        targets.add("residual within 30 s (n=50, d=16.8M)", f"{times['residual']:.1f} s", times["residual"] <= 30)


def bench(n: int, d: int, rules: list[str], residual_max_d: int, naive: bool, device: str,
          targets: Targets) -> None:
    f = max(1, n // 10)
    gen = torch.Generator().manual_seed(0)
    updates = torch.randn(n, d, generator=gen).to(device)
    weights = torch.full((n,), 500.0, device=device)
    ctx = AggregationContext(num_malicious=f, server_update=torch.randn(d, generator=gen).to(device), seed=0)
    flower = flower_functions() if device == "cpu" else {}
    print(f"\n## n={n}, d={d:,} ({n * d * 4 / 2**30:.2f} GiB input), f={f}, {device}")
    mean_s, _ = timed(lambda: updates.mean(dim=0), device)
    print(f"single U.mean(0): {mean_s:.3f} s")
    print("| rule | seconds | x FedAvg | peak MiB beyond input | naive per-tensor loop (s) | Flower NumPy (s) "
          "| Flower / fedsafe | max abs difference from Flower |")
    print("|---|---|---|---|---|---|---|---|")
    times: dict[str, float] = {}
    flower_times: dict[str, float] = {}
    for rule in rules:
        if rule == "residual" and d > residual_max_d:
            print(f"| residual | skipped (d > --residual-max-d={residual_max_d:,}) | | | | | | |")
            continue
        result = {}

        def call():
            result["r"] = aggregate(rule, updates, weights, context=ctx, **rule_params(rule, n, f, d))

        call()  # warm-up: numba kernels load from their cache (or compile) once per process
        seconds, mib = timed(call, device)
        times[rule] = seconds
        ratio = f"{seconds / times['fedavg']:.1f}"
        note = f"{seconds / mean_s:.2f} x mean" if rule == "fedavg" else ""
        loop = ""
        if naive and rule in NAIVE and device == "cpu":
            named = as_named(updates)
            loop_s, _ = timed(lambda: NAIVE[rule](named, (weights / weights.sum()).tolist(), f))
            loop = f"{loop_s:.2f}"
        fl_s = fl_ratio = fl_diff = ""
        if rule in flower:
            fn = flower[rule](updates, f)
            out = {}
            flower_times[rule], _ = timed(lambda: out.setdefault("v", fn()))
            diff = (torch.from_numpy(out["v"]).float() - result["r"].vector).abs()
            fl_s, fl_ratio = f"{flower_times[rule]:.3f}", f"{flower_times[rule] / seconds:.1f}"
            fl_diff = f"{diff.max():.1e} ({int((diff > 1e-5).sum())} coordinates > 1e-5)"
        print(f"| {rule} | {seconds:.3f} {note} | {ratio} | {mib:.0f} | {loop} | {fl_s} | {fl_ratio} | {fl_diff} |",
              flush=True)
    check_targets(targets, n, d, device, times, flower_times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[20, 50])
    p.add_argument("--d", type=int, nargs="+", default=[2_000_000, 16_800_000])
    p.add_argument("--rules", nargs="+", default=["fedavg"] + [r for r in available_rules() if r != "fedavg"])
    p.add_argument("--residual-max-d", type=int, default=16_800_000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-naive", action="store_true", help="skip the per-tensor loop baselines")
    args = p.parse_args()
    if args.rules[0] != "fedavg":
        args.rules = ["fedavg"] + [r for r in args.rules if r != "fedavg"]
    import sklearn.cluster  # noqa: F401  (FLAME's HDBSCAN: import once, outside the timings)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; Flower: {'yes' if flower_functions() else 'not importable'}")
    targets = Targets()
    for d in args.d:
        for n in args.n:
            bench(n, d, args.rules, args.residual_max_d, not args.no_naive, args.device, targets)
    targets.print()


if __name__ == "__main__":
    main()
