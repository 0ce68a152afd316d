"""Which experiment design detects the paper's effects at the lowest cost on this machine: for runs of the
quickstart's three arms (no attack, attacked FedAvg, + Level 2) under different designs, the per-seed spread
of the attack's effect and of Level 2's, split into the spread between federated runs (tau) and the prompt
sampling within a run, the CPU time of a seed, and from those the CPU time a design needs to detect each
effect with 80% power at the seed level (paired t over seeds), also with fewer evaluation prompts.

    .venv/bin/python benchmarks/design_power.py runs/design-a-* runs/design-b-* runs/design-c-*

Each argument is a finished run folder (results.json) with at least 3 seeds. The run's own timings give a
seed's cost: its federated runs, post-hoc defense and evaluations, plus the writing of that seed's data
(client refusals, attack and defense data: the same in every design that draws the same data, so it is
taken from whichever run wrote it, the largest setup time among the runs). With p' of the run's p harmful
prompts, a seed costs its time less (1 - p'/p) of its harmful answers, and the within-run variance of an
effect grows by p/p' (the between-run variance stays). Seeds for 80% power come from statsmodels'
TTestPower at the observed effect over the predicted per-seed spread; hours are wall hours of this
machine (2 cores), the seeds times a seed's cost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsafe.analysis import aligned_verdicts, claim_roles  # noqa: E402
from fedsafe.metrics.registry import METRICS  # noqa: E402
from fedsafe.stats import POWER  # noqa: E402

PROMPT_SHARES = (1.0, 0.5, 0.25)  # evaluation prompts as a share of the run's


def rejudged(runs: list[dict], tokens: int) -> list[dict]:
    """``runs`` whose classifier verdicts are judged again by today's classifier (``--rejudge``), from the
    answers they stored, in folders of their own under the system temp folder."""
    import tempfile

    from fedsafe.evaluation.evaluate import harm_classifier
    from fedsafe.run_dir import read_responses, write_responses

    clf, out = harm_classifier(tokens), []
    for run in runs:
        rows = read_responses(Path(run["dir"]), "final")
        folder = Path(tempfile.mkdtemp(prefix="fedsafe-rejudged-"))
        safe = [not h for h in clf.harmful([r["response"] for r in rows])]
        write_responses(folder, "final", [r["prompt"] for r in rows], [r["response"] for r in rows], {"classifier": safe})
        out.append({**run, "dir": str(folder)})
    return out


def effects(results: dict, metric: str, rejudge: bool = False) -> dict[str, dict]:
    """Per comparison (attack: attacked - clean; Level 2: + Level 2 - attacked): each seed's paired effect
    (points) and its within-seed variance."""
    arms = results["arms"]
    roles = claim_roles(arms)[0]
    tokens = results.get("decoding", {}).get("max_new_tokens", 0)
    runs = {n: rejudged(a["runs"], tokens) if rejudge and metric == "classifier" else a["runs"] for n, a in arms.items()}
    out = {}
    for label, (ref, arm) in {"attack": (roles.clean, roles.attacked), "Level 2": (roles.attacked, roles.level2)}.items():
        pairs = aligned_verdicts([runs[ref], runs[arm]], METRICS[metric])
        diffs = [100.0 * (a - r).astype(float) for r, a in zip(*pairs)]
        out[label] = {"per_seed": [float(d.mean()) for d in diffs],
                      "within": [float(d.var(ddof=1) / len(d)) for d in diffs], "prompts": len(diffs[0])}
    return out


def seed_cost(results: dict) -> dict[str, float]:
    """Median over seeds of a seed's seconds for the three arms (the median: other work on the machine slows
    some seeds): everything but data loading and generation (``setup``), the harmful answers among it, and
    the setup apart."""
    by_seed: dict[int, dict[str, float]] = {}
    for arm in results["arms"].values():
        for run in arm["runs"]:
            cost = by_seed.setdefault(run["seed"], {"compute": 0.0, "harmful_answers": 0.0, "setup": 0.0})
            phases = run.get("phases", {})
            cost["compute"] += sum(v for k, v in phases.items() if k != "setup")
            cost["setup"] += phases.get("setup", 0.0)
            cost["harmful_answers"] += run.get("evaluation_seconds", {}).get("harmful_answers", 0.0)
    return {k: float(np.median([c[k] for c in by_seed.values()])) for k in ("compute", "harmful_answers", "setup")}


def seeds_for_power(effect: float, sd: float) -> float | None:
    """Seeds (a real number, at least 2) a paired t over seeds needs for ``POWER`` at ``effect`` with per-seed
    spread ``sd`` (statsmodels' TTestPower); None beyond 1000."""
    import warnings

    from scipy.optimize import brentq
    from statsmodels.stats.power import TTestPower

    analysis, d = TTestPower(), abs(effect) / sd if sd > 0 else math.inf

    def gap(n: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = analysis.power(effect_size=d, nobs=n, alpha=0.05)
        return (1.0 if not math.isfinite(p) else p) - POWER

    if gap(2.0) >= 0:
        return 2.0
    if gap(1000.0) < 0:
        return None
    return float(brentq(gap, 2.0, 1000.0))


def design_rows(label: str, results: dict, metric: str, data_seconds: float, rejudge: bool = False) -> list[dict]:
    cost, rows = seed_cost(results), []
    for comparison, e in effects(results, metric, rejudge).items():
        per_seed, within = np.array(e["per_seed"]), float(np.mean(e["within"]))
        sd2 = float(per_seed.var(ddof=1))
        tau2 = max(sd2 - within, 0.0)
        for share in PROMPT_SHARES:
            seconds = cost["compute"] - (1 - share) * cost["harmful_answers"] + data_seconds
            sd = math.sqrt(tau2 + within / share)
            n = seeds_for_power(float(per_seed.mean()), sd)
            rows.append({"design": label, "comparison": comparison, "seeds": len(per_seed), "prompts": round(e["prompts"] * share),
                         "effect": float(per_seed.mean()), "sd": sd, "tau": math.sqrt(tau2), "within": math.sqrt(within / share),
                         "seed_minutes": seconds / 60, "seeds_for_power": n,
                         "cpu_hours": None if n is None else n * seconds / 3600})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders of the quickstart's arms, one per design")
    parser.add_argument("--metric", default="rule", choices=["rule", "classifier"])
    parser.add_argument("--rejudge", action="store_true", help="judge the stored answers again with today's "
                        "classifier (runs made with an earlier one)")
    args = parser.parse_args()
    runs = [json.loads((Path(folder) / "results.json").read_text()) for folder in args.runs]
    data_seconds = max(seed_cost(r)["setup"] for r in runs)
    rows = [row for r in runs for row in design_rows(r["name"], r, args.metric, data_seconds, args.rejudge)]
    print(f"| design | comparison | seeds | prompts | effect | per-seed SD | between runs (tau) | within a run | "
          f"minutes a seed | seeds for {POWER:.0%} power | hours for it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hours = "-" if r["cpu_hours"] is None else f"{r['cpu_hours']:.1f}"
        print(f"| {r['design']} | {r['comparison']} | {r['seeds']} | {r['prompts']} | {r['effect']:+.1f} | {r['sd']:.1f} | "
              f"{r['tau']:.1f} | {r['within']:.1f} | {r['seed_minutes']:.1f} | "
              f"{'-' if r['seeds_for_power'] is None else format(r['seeds_for_power'], '.1f')} | {hours} |")
    print(f"\nA seed's minutes include {data_seconds / 60:.1f} of writing its data (the largest setup among the runs).")
    for comparison in ("attack", "Level 2"):
        found = [r for r in rows if r["comparison"] == comparison and r["cpu_hours"] is not None]
        if found:
            best = min(found, key=lambda r: r["cpu_hours"])
            print(f"cheapest design to detect the {comparison} effect: {best['design']} with {best['prompts']} prompts "
                  f"({best['seeds_for_power']:.1f} seeds, {best['cpu_hours']:.1f} hours)")


if __name__ == "__main__":
    main()
