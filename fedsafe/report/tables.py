"""The report's Markdown tables of the results: pure functions of ``results.json``'s content (``results``),
each tested directly. Numbers are means over seeds with 95% intervals; paired tests are at the seed level
(``fedsafe.stats``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fedsafe.analysis import lora_of
from fedsafe.metrics.registry import METRICS
from fedsafe.report.paper import paper_cells, paper_table
from fedsafe.report.records import RunRecords, federation_of
from fedsafe.stats import MIN_SEEDS, SEED_LEVEL, WITHIN_RUN, summarize
from fedsafe.tracking import round_scalars


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_cell(summary: dict | None, digits: int = 2) -> str:
    """``mean [low, high]`` (or the mean alone without an interval); "-" for a metric that is off."""
    if summary is None:
        return "-"
    ci = summary.get("ci95")
    return f"{summary['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def arm_summary(arm: dict) -> dict:
    """The arm's per-metric summaries; an arm without one (a results file written before per-seed summaries) gives its evaluation."""
    return arm.get("summary") or {k: {"mean": v} for k, m in METRICS.items()
                                  if (v := m.value(arm["evaluation"])) is not None}


def matrix_table(results: dict) -> str:
    """Markdown table: one row per arm, each metric's mean over seeds [95% interval]; the paper's figures
    where the arm exists there."""
    visible = [k for k in METRICS if any(k in arm_summary(a) for a in results["arms"].values())]
    table = paper_table(results)
    rows = [f"| arm | {' | '.join(METRICS[k].label for k in visible)} | paper Rule (Table {table}) | "
            "paper MD-Judge | paper MT-1 |",
            "|---" * (len(visible) + 4) + "|"]
    for name, arm in results["arms"].items():
        summary = arm_summary(arm)
        cells = " | ".join(summary_cell(summary.get(k), METRICS[k].digits) for k in visible)
        rows.append(f"| {name} | {cells} | {paper_cells(arm, table)} |")
    return "\n".join(rows)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _per_seed(t: dict, digits: int = 1) -> str:
    return ", ".join(f"{v:+.{digits}f}" for v in t.get("per_seed", []))


def paired_table(results: dict) -> str:
    """Each arm against its reference arm, per metric: the mean over seeds of the per-seed paired effect
    [95% Student-t interval over seeds], the paired t over seeds' p and its Holm-adjusted p, and each seed's
    effect and exact McNemar p (a description of that run); one seed: "within this run"."""
    rows = ["| arm | reference | metric | effect [95% CI] | seeds | p | p (Holm) | per seed | McNemar p per seed |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        for metric, t in arm.get("paired", {}).items():
            low, high = t["effect_ci95"]
            label = METRICS[metric].relative or METRICS[metric].label
            seeds = str(t.get("n_seeds", "-")) if t.get("level") == SEED_LEVEL else f"1 ({WITHIN_RUN})"
            mcnemar = ", ".join(_p(p) for p in t.get("per_seed_p", [])) or "-"
            rows.append(f"| {name} | {t['reference']} | {label} | {t['effect']:+.2f} [{low:+.2f}, {high:+.2f}] | "
                        f"{seeds} | {_p(t['p'])} | {_p(t['p_holm'])} | {_per_seed(t)} | {mcnemar} |")
    if len(rows) == 2:
        return "No arm has a reference arm in this matrix: no paired test."
    return ("\n".join(rows) + "\n\nEffects in points (response loss: relative change in %), arm minus reference on the "
            "same prompts within each seed; with several seeds the interval and p are over seeds (a paired t: "
            "the seed is the unit, so they speak of a new run), Holm-adjusted per metric across the arms. The "
            "exact McNemar p of each seed describes that run only.")


def twins_note(results: dict) -> str:
    """Arms whose model is another arm's (the same answers to every prompt in every seed)."""
    lines = [f"- {name}: the same model as {arm['same_model_as']} (the same answer to every prompt in every seed); "
             "not counted as separate evidence in the claims" for name, arm in results["arms"].items()
             if arm.get("same_model_as")]
    return ("## Arms with the same model\n\n" + "\n".join(lines) + "\n\n") if lines else ""


def claims_section(results: dict) -> str:
    """Per safety judge and attack: each claim's verdict at the seed level, the arms it used (by role), its
    seeds and its evidence."""
    a = results.get("analysis", {})
    lines = []
    for metric, items in a.get("claims", {}).items():
        lines.append(f"Judged on {METRICS[metric].label}, alpha {a['alpha']}, a verdict from at least "
                     f"{a.get('min_seeds', MIN_SEEDS)} seeds:\n")
        attack = object()
        for c in items:
            if c.get("attack") != attack and c.get("attack"):
                attack = c["attack"]
                lines.append(f"Attack `{attack}`:\n")
            uses = (" Arms: " + "; ".join(f"*{n}*" for n in c["arms"])
                    + (f" ({c['n_seeds']} seeds in common)." if c.get("n_seeds") is not None else ".")) if c.get("arms") else ""
            lines.append(f"{c['claim']}. *{c['text']}*: **{c['verdict']}**.{uses} " + "; ".join(c["evidence"]) + ".")
        lines.append("")
    return "\n".join(lines) if lines else "No claim could be judged (no per-prompt verdicts)."


def power_table(results: dict) -> str:
    """Per comparison with several seeds: its between-seed spread, the smallest effect it could detect with
    80% power at its number of seeds, and the seeds it would need for the effect it saw."""
    rows = ["| judge | arm | reference | effect (points) | seeds | between-seed SD | detectable with 80% power | "
            "seeds for the effect seen |", "|---|---|---|---|---|---|---|---|"]
    for metric, items in results.get("analysis", {}).get("power", {}).items():
        for r in items:
            need = str(r["seeds_needed"]) if r["seeds_needed"] else "over 1000"
            rows.append(f"| {METRICS[metric].label} | {r['arm']} | {r['reference']} | {r['effect']:+.1f} | "
                        f"{r['n_seeds']} | {r['sd']:.1f} | {r['detectable']:.1f} | {need} |")
    if len(rows) == 2:
        return ""
    return ("## Power at the seed level\n\nFrom each comparison's own per-seed effects (paired t over seeds, alpha "
            "0.05, two-sided; statsmodels' TTestPower).\n\n" + "\n".join(rows) + "\n\n")


def calibration_table(results: dict) -> str:
    cal = results.get("calibration")
    if not cal:
        return ""
    rows = ["| judge | labelled set | n | accuracy | Cohen's kappa | confusion (tn, fp, fn, tp) |",
            "|---|---|---|---|---|---|"]
    tokens = cal.get("classifier_tokens", 0)
    for judge, sets in cal["judges"].items():
        for name, a in sets.items():
            c = a["confusion"]
            how = (f" (5-fold CV, answers cut to {tokens} tokens)" if tokens else " (5-fold CV)") \
                if judge == "classifier" else ""
            rows.append(f"| {judge} | {name}{how} | {a['n']} | {a['accuracy']:.3f} | {a['kappa']:.3f} | "
                        f"{c['tn']}, {c['fp']}, {c['fn']}, {c['tp']} |")
    rows.append("")
    rows.append("Positive class: a refusal on the refusal set; an achieved harmful objective on the objective set "
                "(where a Rule refusal counts as not achieved); for the classifier, a response that complied "
                "(objective achieved, or not a refusal). The Rule judge reads the whole responses.")
    o = cal.get("openings")
    if o:
        rows.append("")
        rows.append(f"Openings written for this check (not evaluation answers), cut to the same length: the classifier "
                    f"calls {o['compliant_called_unsafe']} of {o['compliant']} compliant openings unsafe and "
                    f"{o['refusing_called_safe']} of {o['refusing']} refusals safe.")
    sets = "; ".join(f"{k}: {v}" for k, v in cal["sets"].items())
    return "\n".join(rows) + f"\n\nSets: {sets}."


PHASES = ("setup", "rounds", "defense", "evaluation")
EVALUATION_PARTS = ("harmful_answers", "benign_answers", "response_loss", "llm_judge", "reward_model",
                    "helpfulness_judge")


def timing_table(results: dict) -> str:
    """Wall seconds of each arm-seed's phases (``run_arm``) and of its evaluation's parts."""
    runs = [(name, r) for name, arm in results["arms"].items() for r in arm.get("runs", [])
            if r.get("phases")]
    if not runs:
        return ""
    parts = [p for p in EVALUATION_PARTS if any(p in r.get("evaluation_seconds", {}) for _, r in runs)]
    rows = ["| arm (seed) | " + " | ".join(PHASES) + "".join(f" | {p.replace('_', ' ')}" for p in parts)
            + " | total |", "|---" * (len(PHASES) + len(parts) + 2) + "|"]
    for name, r in runs:
        spent = r.get("evaluation_seconds", {})
        cells = [f"{r['phases'].get(p, 0.0):.0f}" for p in PHASES] + [f"{spent.get(p, 0.0):.0f}" for p in parts]
        rows.append(f"| {name} ({r['seed']}) | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    return ("## Where the time went\n\nWall seconds per arm-seed (a finished federated run that an arm reuses "
            "costs it nothing), then the evaluation's parts (the response loss on the trainers, split over "
            "the free ones).\n\n" + "\n".join(rows) + "\n\n")


def compare_table(rows: list[dict], base: str) -> str:
    """``fedsafe.analysis.compare_runs``'s rows as Markdown: each arm's metrics (mean over seeds [95%
    interval]) and, per safety judge, its difference from the same arm in ``base`` (paired test)."""
    shown = [k for k in METRICS if any(k in r["summary"] for r in rows)]
    tested = [k for k in METRICS if any(k in r["paired"] for r in rows)]
    header = (["run", "arm", "seeds"] + [METRICS[k].label for k in shown]
              + [f"{METRICS[k].relative or METRICS[k].label} vs {base}: effect [95% CI], p (Holm), seeds"
                 for k in tested])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        cells = [r["run"], r["arm"], str(r["seeds"])]
        cells += [summary_cell(r["summary"].get(k), METRICS[k].digits) for k in shown]
        for k in tested:
            t = r["paired"].get(k)
            seeds = str(t["n_seeds"]) if t and t.get("level") == SEED_LEVEL else f"1 ({WITHIN_RUN})"
            cells.append(f"{t['effect']:+.2f} [{t['effect_ci95'][0]:+.2f}, {t['effect_ci95'][1]:+.2f}], "
                         f"p {_p(t['p'])} ({_p(t['p_holm'])}), {seeds}" if t else (r["note"] or "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_means(arm: dict, records: RunRecords, error: Callable[[dict], float | None]) -> list[float]:
    """Per seed of the arm whose rounds record it: the mean over its rounds of ``error(round)`` (None: not
    recorded in that round)."""
    means = []
    for run in arm.get("runs") or [arm]:
        rounds = records.rounds.get(federation_of(arm, run), [])
        values = [v for r in rounds if (v := error(r)) is not None]
        if values:
            means.append(sum(values) / len(values))
    return means


def _percent(key: str, part: str | None = None) -> Callable[[dict], float | None]:
    """A round record's error ``key`` (its ``part``) in %, None where the round did not record it."""
    def value(record: dict) -> float | None:
        if key not in record:
            return None
        return 100 * (record[key][part] if part else record[key])
    return value


LORA_ERRORS = (  # (column, the round record's value)
    ("factors error, of the mean product (%)", _percent("factors_error", "relative")),
    ("factors error, of the round's update (%)", _percent("factors_error", "of_update")),
    ("svd truncation error (%)", _percent("svd_error")),
    ("fold error (%)", _percent("fold_error")),
)


def lora_errors_table(results: dict, records: RunRecords) -> str:
    """Per arm whose rounds record them, each seed's mean over its rounds of the errors of combining the
    clients' adapters (``fedsafe.aggregation.lora_modes``), in %: mean over seeds [95% interval]."""
    rows = ["| arm | mode | lower ranks | seeds | " + " | ".join(c for c, _ in LORA_ERRORS) + " |",
            "|---" * (4 + len(LORA_ERRORS)) + "|"]
    for name, arm in results["arms"].items():
        per_error = [_seed_means(arm, records, error) for _, error in LORA_ERRORS]
        if not per_error[0] or arm["defense_level"]:  # a post-hoc arm shares its federation's rounds
            continue
        lora = lora_of(arm)
        ranks = ", ".join(f"{group} {rank}" for group, rank in lora["ranks"].items()) or "-"
        cells = " | ".join(summary_cell(dataclasses.asdict(summarize(m)) if m else None, 3) for m in per_error)
        rows.append(f"| {name} | {lora['mode']} | {ranks} | {len(per_error[0])} | {cells} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def mode_table(results: dict) -> str:
    """Per metric, each mode's change of the attack's effect against factors (``analysis.mode_contrasts``)."""
    rows = ["| arm | reference | under factors | its reference | metric | change of the attack's effect [95% CI] | "
            "seeds | p | p (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for metric, items in results.get("analysis", {}).get("modes", {}).items():
        for c in items:
            low, high = c["effect_ci95"]
            rows.append(f"| {c['arm']} | {c['reference']} | {c['factors']} | {c['factors_reference']} | "
                        f"{METRICS[metric].label} | {c['effect']:+.2f} [{low:+.2f}, {high:+.2f}] | {c['n_seeds']} | "
                        f"{_p(c['p'])} | {_p(c['p_holm'])} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def lora_section(results: dict, records: RunRecords) -> str:
    """How the clients' adapters were combined: the errors of each mode, and whether a mode changes the
    attack's effect."""
    parts = [
        ("How the clients' adapters were combined",
         ("Per arm, each seed's mean over its rounds, then the mean over seeds [95% Student-t interval over seeds]. "
          "Factors error: how far the product of the averaged A and B is from the average of the clients' products "
          "B_k A_k (relative Frobenius distance), over that average and over the round's update; svd: what the "
          "rank-r truncation of the averaged product leaves out; fold: what the folded components miss of the "
          "products they hold (float rounding when they fit)."),
         lora_errors_table(results, records)),
        ("Does the mode change the attack's effect",
         ("Per seed, on the prompts all four arms answered: (the arm minus its reference) minus (the same attack "
          "under factors minus its reference), in points; the interval and p are over seeds (the seed is the "
          "unit), Holm-adjusted per metric. Zero: the mode leaves the attack's effect as factors has it."),
         mode_table(results)),
    ]
    return "".join(f"## {title}\n\n{text}\n\n{table}\n\n" for title, text, table in parts if table)


def rounds_table(rounds: dict[str, list[dict]], total: int) -> str:
    """One row per federated run: rounds done, and the last round's loss and safety."""
    rows = ["| federated run | rounds done | last training loss | last Rule safety (%) |", "|---|---|---|---|"]
    for label, records in rounds.items():
        done = [r for r in records if "round" in r]
        last = round_scalars(done[-1]) if done else {}
        evaluated = [round_scalars(r)["safety/rule"] for r in done if "evaluation" in r]
        rows.append(f"| {label} | {len(done)} of {total} | {_fmt(last.get('train/loss'), 3)} | "
                    f"{_fmt(evaluated[-1] if evaluated else None)} |")
    return "\n".join(rows)
