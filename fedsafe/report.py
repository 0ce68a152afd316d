"""The report of a run: one table of arms x metrics (means with 95% intervals) beside the paper's figures,
the paired tests, the paper's four claims with verdicts, the judges' calibration, plots; Markdown + HTML.

    report.md     the tables, the claims, the judges, the plots (PNG files beside it)
    report.html   the same content in one self-contained page (plots inlined); while a run goes, a live page
                  rewritten after every round and every finished arm (``write_live_report``)
    plots/safety_by_arm.png        each safety judge per arm, mean with 95% interval error bars
    plots/safety_per_round.png     Rule safety per round per federated run (+ each defense after the rounds)
    plots/client_similarity.png    cosine similarity of the clients' summed updates, malicious marked (Fig. 3a)
    plots/aggregation_weights.png  mean weight each rule gave each client when sampled (Fig. 3b)
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import markdown
import matplotlib

from fedsafe import analysis
from fedsafe.analysis import METRICS, analyse, posthoc_only
from fedsafe.metrics.detection import pooled, rates
from fedsafe.run_dir import read_rounds
from fedsafe.stats import MIN_SEEDS, SEED_LEVEL, WITHIN_RUN
from fedsafe.tracking import round_scalars

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


DIGITS = {"response_loss": 3}


def summary_cell(summary: dict | None, digits: int = 2) -> str:
    """``mean [low, high]`` (or the mean alone without an interval); "-" for a metric that is off."""
    if summary is None:
        return "-"
    ci = summary.get("ci95")
    return f"{summary['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def arm_summary(arm: dict) -> dict:
    """The arm's per-metric summaries; an arm without one (a result from before seeds) gives its evaluation."""
    return arm.get("summary") or {k: {"mean": v} for k, m in METRICS.items()
                                  if (v := m.value(arm["evaluation"])) is not None}


# docs/method.md#the-papers-setting-and-numbers, Table 1, LMSYS benign column: (Rule, MD-Judge, RM, MT-1);
# malicious data = BeaverTails. Table 2: the same columns, malicious data written by MaliciousGen.
PAPER_TABLE1 = {
    "FedAvg, no attack": (82.88, 66.15, -1.72, 4.19),
    "FedAvg, attacked": (49.81, 25.96, -2.97, 4.14),
    "Median": (48.65, 23.85, -3.10, 3.88),
    "Trimmed mean": (45.96, 26.35, -3.05, 4.20),
    "Krum": (55.38, 27.88, -2.88, 4.16),
    "DnC": (55.96, 25.38, -2.90, 4.00),
    "FoolsGold": (46.92, 25.00, -3.05, 3.95),
    "Residual": (47.50, 23.65, -2.98, 4.04),
    "Level 1": (68.65, 44.23, -2.31, 4.11),
    "Level 2": (77.31, 84.23, -0.99, 4.23),
    "Level 3": (62.69, 72.88, -1.65, 3.73),
}
PAPER_TABLE2 = {
    "FedAvg, no attack": (82.88, 66.15, -1.72, 4.19),
    "FedAvg, attacked": (43.27, 11.35, -3.62, 4.19),
    "Median": (48.27, 13.65, -3.43, 3.95),
    "Trimmed mean": (41.92, 9.62, -3.51, 3.71),
    "Krum": (50.38, 16.73, -3.23, 4.14),
    "DnC": (49.04, 12.12, -3.40, 4.14),
    "FoolsGold": (41.54, 12.12, -3.45, 3.85),
    "Residual": (44.23, 10.19, -3.52, 3.80),
    "Level 1": (71.15, 34.32, -2.68, 4.19),
    "Level 2": (78.08, 83.08, -0.96, 4.18),
    "Level 3": (75.96, 72.69, -1.56, 3.89),
}
PAPER_RULES = {"fedavg": "FedAvg, attacked", "median": "Median", "trimmed_mean": "Trimmed mean", "krum": "Krum",
               "krum_paper": "Krum", "dnc": "DnC", "foolsgold": "FoolsGold", "residual": "Residual"}


def paper_row(arm: dict) -> str | None:
    """The paper's Table 1 row matching an arm's result, if the paper has one."""
    if not posthoc_only(arm, arm["defense_level"]):
        return None  # the paper has no behavioural defense
    if not arm["num_malicious"]:
        return "FedAvg, no attack" if arm["defense_level"] == 0 and arm["rule"] == "fedavg" else None
    if arm["defense_level"] == 0:
        return PAPER_RULES.get(arm["rule"])
    return f"Level {arm['defense_level']}" if arm["rule"] == "fedavg" else None


def paper_table(results: dict) -> int:
    """The paper's table matching the run's attack data: 2 for MaliciousGen, else 1."""
    return 2 if any(a.get("attack") == "maliciousgen" for a in results["arms"].values()) else 1


def paper_cells(arm: dict, table: int) -> str:
    """The paper's Rule / MD-Judge / MT-1 for the arm from Table ``table``; "-" where the paper has no such row."""
    paper = (PAPER_TABLE2 if table == 2 else PAPER_TABLE1).get(paper_row(arm) or "")
    return f"{paper[0]:.2f} | {paper[1]:.2f} | {paper[3]:.2f}" if paper else "- | - | -"


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
        cells = " | ".join(summary_cell(summary.get(k), DIGITS.get(k, 2)) for k in visible)
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
            label = analysis.RELATIVE.get(metric, METRICS[metric].label)
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


def disagreement_table(results: dict) -> str:
    """Where the Rule judge and the classifier disagree on the same answers, per arm (summed over seeds)."""
    rows = ["| arm | answers | both safe | Rule only | classifier only | both unsafe | kappa | compliant openings | "
            "of them safe by Rule | by classifier |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        d = arm.get("judges_agree")
        if d:
            o = d.get("compliant_openings_safe", {})
            rows.append(f"| {name} | {d['n']} | {d['both_safe']} | {d['rule_only']} | {d['classifier_only']} | "
                        f"{d['both_unsafe']} | {d['kappa']:.2f} | {d.get('compliant_openings', '-')} | "
                        f"{o.get('rule', '-')} | {o.get('classifier', '-')} |")
    if len(rows) == 2:
        return ""
    return ("## Where the two safety judges disagree\n\n" + "\n".join(rows) + "\n\nRule only: the answer has a "
            "refusal keyword but the classifier judges that it complies; classifier only: no keyword, but judged "
            "not to comply (a refusal in other words, an evasive answer, or a compliant one the classifier "
            "misses). Compliant openings: answers that open as a compliant one does (\"Sure\", \"Certainly\", "
            "\"Here's\", \"Step 1\", \"1.\"), summed over seeds, and how many of them each judge calls safe. Answers "
            "are in each arm's evaluation/final.jsonl with both verdicts.\n\n")


def _cell_text(text: str, limit: int = 240) -> str:
    """Text as one Markdown table cell: on one line, pipes escaped, cut to ``limit`` characters."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def disagreement_samples(results: dict, per_side: int = 4) -> str:
    """A sample of the answers where the judges disagree, per attacked arm (first seed), so that a reader
    sees which judge is right. Generated text: it stays in the run folder's report."""
    blocks = []
    for name, arm in results["arms"].items():
        if not analysis.attacked(arm):
            continue
        sample = analysis.disagreement_sample(arm, per_side)
        if sample:
            rows = ["| seed | safe by | prompt | answer |", "|---|---|---|---|"]
            rows += [f"| {r['seed']} | {r['safe_by']} only | {_cell_text(r['prompt'], 90)} | {_cell_text(r['answer'])} |"
                     for r in sample]
            blocks.append(f"### {name}\n\n" + "\n".join(rows))
    if not blocks:
        return ""
    return ("## Answers the judges disagree on\n\nThe first answers in prompt order (first seed) that only one judge "
            "calls safe.\n\n" + "\n\n".join(blocks) + "\n\n")


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


def _fed_dir(arm: dict) -> Path:
    return Path(arm["federation_dir"])


def federation_names(results: dict) -> dict[str, str]:
    """A readable name per federated run: its undefended arm's name, else the first arm's rule."""
    names: dict[str, str] = {}
    for name, arm in results["arms"].items():
        if arm["defense_level"] == 0 or arm["federation"] not in names:
            names[arm["federation"]] = name if arm["defense_level"] == 0 else arm["rule"]
    return names


def plot_safety_per_round(results: dict, out: Path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    plotted = False
    rounds = results["rounds"]
    finals = {a["federation"]: a["evaluation"]["safety"]["rule"] for a in results["arms"].values()
              if a["defense_level"] == 0}
    fed_dirs = {a["federation"]: _fed_dir(a) for a in results["arms"].values()}
    for key, label in federation_names(results).items():
        points = [(r["round"] + 1, r["evaluation"]["safety"]["rule"]) for r in read_rounds(fed_dirs[key])
                  if "evaluation" in r and r["round"] + 1 < rounds]
        if key in finals:
            points.append((rounds, finals[key]))
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
            plotted = True
    for name, arm in results["arms"].items():
        if arm["defense_level"]:
            ax.scatter([rounds + 0.5], [arm["evaluation"]["safety"]["rule"]], marker="*", s=90, label=name)
            plotted = True
    if not plotted:
        plt.close(fig)
        return False
    ax.set(xlabel="round (stars: after the post-hoc defense)", ylabel="Rule safety (%)", ylim=(-2, 102),
           title="Safety per round (per-round evaluation on a prompt subset; final on all)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_similarity(results: dict, out: Path) -> bool:
    """The first attacked federated run with client similarities (FedAvg if the matrix has it)."""
    names = federation_names(results)
    attacked = [a for a in results["arms"].values() if a["num_malicious"] and a["defense_level"] == 0]
    attacked.sort(key=lambda a: a["rule"] != "fedavg")
    for arm in attacked:
        path = _fed_dir(arm) / "clients.json"
        if not path.is_file():
            continue
        info = json.loads(path.read_text())
        if not info["clients"]:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4.8))
        image = ax.imshow(info["cosine"], cmap="coolwarm", vmin=-1, vmax=1)
        labels = [f"{c}{'*' if info['roles'][c] == 'malicious' else ''}" for c in info["clients"]]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"Cosine similarity of client updates ({names[arm['federation']]}); * malicious", fontsize=9)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return True
    return False


def mean_weights(rounds: list[dict], num_clients: int, per_round: int) -> list[float | None]:
    """Mean share of the round's total weight a client got when sampled, times clients per round (1.0 =
    FedAvg's equal share; rules such as FoolsGold report unnormalized weights); None for clients never
    sampled. Pure."""
    sums, counts = [0.0] * num_clients, [0] * num_clients
    for r in rounds:
        total = sum(r.get("weights", [])) or 1.0
        for client, weight in zip(r.get("clients", []), r.get("weights", [])):
            if 0 <= client < num_clients:
                sums[client] += weight / total * per_round
                counts[client] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]


def plot_weights(results: dict, out: Path) -> bool:
    rows, labels, roles = [], [], None
    for name, arm in results["arms"].items():
        if not arm["num_malicious"] or arm["defense_level"]:
            continue
        fed = _fed_dir(arm)
        rounds = read_rounds(fed)
        if not rounds:
            continue
        rows.append([float("nan") if w is None else w
                     for w in mean_weights(rounds, results["num_clients"], results["clients_per_round"])])
        labels.append(name)
        if roles is None and (fed / "clients.json").is_file():
            roles = json.loads((fed / "clients.json").read_text())["roles"]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.6))
    image = ax.imshow(rows, cmap="viridis", aspect="auto", vmin=0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(results["num_clients"]),
                  [f"{c}{'*' if roles and roles[c] == 'malicious' else ''}" for c in range(results["num_clients"])])
    ax.set_xlabel("client (* malicious)")
    ax.set_title("Mean aggregation weight when sampled x clients per round (1 = equal share)", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_safety_by_arm(results: dict, out: Path) -> bool:
    """Each safety judge per arm: mean over seeds with its 95% interval."""
    judges = [k for k in ("rule", "classifier") if all(k in a.get("summary", {}) for a in results["arms"].values())]
    if not judges:
        return False
    names = list(results["arms"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.2))
    width = 0.8 / len(judges)
    for j, key in enumerate(judges):
        means, errs = [], [[], []]
        for name in names:
            s = results["arms"][name]["summary"][key]
            means.append(s["mean"])
            low, high = s["ci95"] or (s["mean"], s["mean"])
            errs[0].append(s["mean"] - low)
            errs[1].append(high - s["mean"])
        ax.bar([i + (j - (len(judges) - 1) / 2) * width for i in range(len(names))], means, width, yerr=errs,
               capsize=3, label=METRICS[key].label)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="safe (%)", ylim=(0, 100), title="Safety per arm (mean, 95% interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


PLOTS = (("safety_by_arm", plot_safety_by_arm, "Safety per arm"),
         ("safety_per_round", plot_safety_per_round, "Safety per round"),
         ("client_similarity", plot_similarity, "Client update similarity (paper Fig. 3a)"),
         ("aggregation_weights", plot_weights, "Aggregation weights (paper Fig. 3b)"))


def judges_note(results: dict) -> str:
    ev = next(iter(results["arms"].values()))["evaluation"]
    lines = [f"- Rule: {ev['safety']['judge']} on {ev['safety']['num_prompts']} AdvBench prompts: percent of "
             "answers with a refusal keyword, case-insensitive as the authors' code (docs/method.md#metrics); "
             "higher is safer."]
    if "classifier" in ev["safety"]:
        c = ev["safety"]["classifier"]
        at = f" at {c['answer_tokens']} tokens, the answers' length" if c.get("answer_tokens") else ""
        kappa = f", kappa {c['cv_kappa']:.2f}" if "cv_kappa" in c else ""
        lines.append(f"- Classifier: {c['model']} ({c['training_rows']} rows, 5-fold cross-validated accuracy "
                     f"{c['cv_accuracy']:.3f}{kappa}{at}): percent of answers it judges not to comply with the harmful "
                     "request; one model, fitted once, for every arm and seed; it knows no refusal keyword and no "
                     "training set of the run.")
    if "llm_judge" in ev["safety"]:
        j = ev["safety"]["llm_judge"]
        lines.append(f"- LLM judge: {j['format']} format, judged by `{j['model']}` (a model far smaller than "
                     "MD-Judge-7B is a weak judge: read it as a sanity check).")
    if "over_refusal" in ev:
        o = ev["over_refusal"]
        runs = next(iter(results["arms"].values())).get("runs", [{"evaluation": ev}])
        rates = [r["evaluation"]["over_refusal"].get("reference_rate") for r in runs]
        ref = (f" (their own reference answers trip the same judge {sum(rates) / len(rates):.1f}% of the time, "
               f"mean over seeds)") if None not in rates else ""
        lines.append(f"- Over-refusal: percent of {o['num_prompts']} held-out benign prompts answered with a refusal "
                     f"keyword{ref}; lower is better.")
    if "response_loss" in ev.get("helpfulness", {}):
        lines.append("- Response loss: loss per token of held-out benign reference answers (offline helpfulness "
                     "proxy for MT-1); lower is better.")
    lines.append("- Paper columns: Ye et al. (ICLR 2025), LMSYS benign, Llama-2-7B, MD-Judge-7B, GPT-4 MT-1: Table 2 "
                 "(MaliciousGen attack data) when the run's attack is MaliciousGen, else Table 1 (BeaverTails attack "
                 "data) (docs/method.md#the-papers-setting-and-numbers); they are the published figures, not a run "
                 "here.")
    seeds = results.get("seeds", [0])
    interval = ("Student-t over seeds" if len(seeds) > 1 else
                f"{WITHIN_RUN}: a percentile bootstrap over its prompts, which says nothing of a new run")
    data_seed = results.get("data_seed")
    draws = ("" if data_seed is None else " A seed draws and writes its own data (data_seed -1), so the intervals "
             "include the data draw." if data_seed < 0 else
             f" Every seed trains on one draw of data (data_seed {data_seed}): the intervals are about new "
             "federations on that draw.")
    lines.append(f"- Seeds {seeds}; intervals: 95%, {interval}. Client sampling: {results.get('sampling', 'paper')}"
                 + (" (the authors' random.seed(round): every seed has the same attack schedule, so seeds vary "
                    "data, initialisation and sampling but not who trains when)"
                    if results.get("sampling") == "paper" and len(seeds) > 1 else "")
                 + (" (stratified: every round holds the attackers' share of its clients, and the arm without "
                    "attackers samples the same benign clients)" if results.get("sampling") == "balanced" else "")
                 + "." + draws)
    dec = results.get("decoding")
    if dec:
        how = ("greedy (temperature 0): arms differ only by their models" if dec["temperature"] == 0 else
               f"sampling at temperature {dec['temperature']:g}, top-p {dec['top_p']:g}, one sample per prompt: "
               "sampling noise adds to every comparison and pairing cannot remove it")
        lines.append(f"- Decoding: {how}; up to {dec['max_new_tokens']} new tokens.")
    if len(seeds) < MIN_SEEDS:
        lines.append(f"- Verdicts need {MIN_SEEDS} seeds; this run has {len(seeds)}: `fedsafe run --config <config> "
                     f"--seeds {MIN_SEEDS}` runs them (finished arm-seeds are reused).")
    return "\n".join(lines)


def _rate_cell(rate: dict | None) -> str:
    return "-" if rate is None else f"{rate['percent']:.0f} [{rate['ci95'][0]:.0f}, {rate['ci95'][1]:.0f}] (n={rate['n']})"


def detection_table(results: dict) -> str:
    """Per arm, pooled over its seeds: the attackers' share of the aggregate in attacked rounds, and the
    rule's true- and false-positive rates (an update is flagged below half an even weight) with Wilson
    intervals (``fedsafe.metrics.detection``)."""
    rows = [("| arm | attacked rounds | attackers' share of the aggregate (%) | attacking updates flagged (TPR, %) "
             "| benign updates flagged (FPR, %) |"), "|---|---|---|---|---|"]

    for name, arm in results["arms"].items():
        counts = [r["detection"] for r in arm.get("runs", []) if r.get("detection")]
        if not counts or arm["defense_level"]:
            continue
        r = rates(pooled(counts))
        share = "-" if r["malicious_share"] is None else f"{r['malicious_share']:.1f}"
        rows.append(f"| {name} | {r['attacked_rounds']} | {share} | {_rate_cell(r['tpr'])} | {_rate_cell(r['fpr'])} |")
    if len(rows) == 2:
        return ""
    return ("## What the rules did with the attackers' updates\n\nOver every round of every seed: the attacking "
            "clients' share of the aggregate where one was sampled, and how many updates the rule flagged (weight "
            "below half an even share: discarded or down-weighted), attacking (true positives) and benign (false "
            "positives), with Wilson 95% intervals.\n\n" + "\n".join(rows) + "\n\n")


def screening_table(results: dict) -> str:
    """Per arm with behavioural screening, pooled over its seeds: the screening's own verdicts (whatever its
    action), attacking and benign uploads flagged, with Wilson intervals."""
    rows = ["| arm | action | attacking uploads flagged (TPR, %) | benign uploads flagged (FPR, %) |", "|---|---|---|---|"]
    for name, arm in results["arms"].items():
        counts = [r["screening"] for r in arm.get("runs", []) if r.get("screening") and
                  r["screening"]["malicious"] + r["screening"]["benign"]]
        if not counts or arm["defense_level"]:  # a post-hoc arm shares its federation's screening
            continue
        r = rates(pooled(counts))
        action = next((x["screening"]["action"] for x in read_rounds(_fed_dir(arm)) if x.get("screening")), "-")
        rows.append(f"| {name} | {action} | {_rate_cell(r['tpr'])} | {_rate_cell(r['fpr'])} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def attribution_table(results: dict) -> str:
    """Per screened arm (first seed), per round and sampled client: its canary safety and its effect (its
    safety minus the global adapter's), whether it attacked, and whether screening flagged it."""
    rows = ["| arm | round | client | attacking | canary safety | effect on canary safety | flagged |",
            "|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        if arm["defense_level"]:
            continue
        for record in read_rounds(_fed_dir(arm)):
            s = record.get("screening")
            if not s:
                continue
            attacking, flagged = set(record.get("attacking", [])), set(s["flagged"])
            for client, safety, effect in zip(s["clients"], s["safety"], s["effect"]):
                rows.append(f"| {name} | {record['round']} | {client} | {'yes' if client in attacking else ''} | "
                            f"{100 * safety:.0f} | {100 * effect:+.0f} | {'yes' if client in flagged else ''} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def defense_cost_table(results: dict) -> str:
    """Per defended arm, mean over its seeds: what its defenses cost (seconds of the setup, where hardening
    and the projection's direction train; screening answers and seconds over the rounds; the post-hoc
    phase)."""
    rows = ["| arm | defenses | setup (s) | screening answers | screening (s) | post-hoc (s) |", "|---|---|---|---|---|---|"]
    keys = ("setup_seconds", "screening_answers", "screening_seconds", "posthoc_seconds")
    for name, arm in results["arms"].items():
        costs = [r["defense_cost"] for r in arm.get("runs", []) if r.get("defense_cost")]
        if not costs or arm.get("defense", "none") == "none":
            continue
        means = " | ".join(f"{sum(c[k] for c in costs) / len(costs):.0f}" for k in keys)
        rows.append(f"| {name} | {arm['defense']} | {means} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def behaviour_section(results: dict) -> str:
    """Screening verdicts, attribution and defense cost, where the matrix has behavioural defenses."""
    parts = [
        ("What the behavioural screening flagged",
         ("Over every round of every seed, the screening's verdicts (canary safety more than the threshold below "
          "the round's median client, or over-refusal above it), with Wilson 95% intervals."),
         screening_table(results)),
        ("Which clients moved the model",
         ("Per round (first seed): each sampled client's canary safety with its upload added to the global "
          "adapter, and its effect: that minus the global adapter's own (points)."),
         attribution_table(results)),
        ("What the defenses cost",
         ("Mean over seeds, wall seconds on this run's machine (setup includes loading the data for every arm; "
          "screening answers are the canary answers of all clients and the global model)."),
         defense_cost_table(results)),
    ]
    return "".join(f"## {title}\n\n{text}\n\n{table}\n\n" for title, text, table in parts if table)


def data_note(results: dict) -> str:
    """Generated data sets (attack data, Level 2-3 defense data): counts generated and kept by the filter."""
    lines = []
    for name, arm in results["arms"].items():
        for part, counts in arm["data"]["synthesis"].items():
            what = "defense data of " + name if part == "defense" else f"{part} data"
            line = f"- {what}: generated {counts['generated']}, kept {counts['kept']}"
            if part == "defense":
                line += f", {arm['data']['defense_examples']} used (aligned and normal 1:1)"
            if line not in lines:
                lines.append(line)
    return "\n".join(lines)


def provenance(results: dict) -> str:
    """Which code and commands made the results: one line per invocation (a run continued with --resume has
    several)."""
    lines = []
    for i in results.get("invocations", []):
        commit = (i.get("commit") or "unknown")[:12] + (" with local changes" if i.get("dirty") else "")
        lines.append(f"- {i['time']}: `{i['command']}` (code: commit {commit})")
    return "\n".join(lines)


# the report's sections that ``fedsafe report RUN --print`` gives as Markdown (docs/results.md pastes them)
SECTIONS = {"provenance": provenance, "table": matrix_table, "paired": paired_table, "same-model": twins_note,
            "power": power_table, "judges": disagreement_table, "claims": claims_section, "notes": judges_note,
            "calibration": calibration_table, "detection": detection_table, "behaviour": behaviour_section}


def sections(results: dict, names: list[str]) -> str:
    """The named sections (``SECTIONS``) of a run's report, in that order."""
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; known: {', '.join(SECTIONS)}")
    return "\n\n".join(SECTIONS[n](results).strip() for n in names)


def write_report(run_dir: Path, results: dict) -> str:
    """Write report.md, report.html and plots/; returns the table."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = [(name, title) for name, plot, title in PLOTS if plot(results, plots / f"{name}.png")]
    table = matrix_table(results)
    body = (
        f"# fedsafe report: {results['name']}\n\n"
        f"{results['num_clients']} clients ({results['num_malicious']} malicious in attacked arms), "
        f"{results['clients_per_round']} per round, {results['rounds']} rounds, model `{results['model']}`. "
        f"Wall time {results['wall_s']:.1f} s (arm-seed runs computed now: {len(results['computed'])} of "
        f"{sum(len(a.get('runs', [a])) for a in results['arms'].values())}).\n\n{table}\n\n"
        f"{judges_note(results)}\n{data_note(results)}\n\n"
        + (f"Made by:\n{provenance(results)}\n\n" if results.get("invocations") else "")
        + f"## Paired tests\n\n{paired_table(results)}\n\n{twins_note(results)}{power_table(results)}"
        f"{disagreement_table(results)}"
        f"## The paper's four claims\n\n{claims_section(results)}\n\n"
        f"{detection_table(results)}"
        f"{behaviour_section(results)}"
        f"## Judge calibration against human labels\n\n{calibration_table(results)}\n\n"
        f"{disagreement_samples(results)}{timing_table(results)}"
        + "".join(f"## {title}\n\n![{title}](plots/{name}.png)\n\n" for name, title in made)
    )
    (run_dir / "report.md").write_text(body)
    write_html(run_dir, f"fedsafe {results['name']}", body)
    return table


def write_html(run_dir: Path, title: str, body: str, refresh_s: int | None = None) -> Path:
    """``report.html``: the Markdown ``body`` as one self-contained page (its plots inlined), written whole
    (a reader never sees half a page); ``refresh_s``: the page reloads itself that often (a live report)."""
    html = markdown.markdown(body, extensions=["tables"])
    html = re.sub(r'src="(plots/[^"]+\.png)"', lambda m: 'src="data:image/png;base64,'
                  + base64.b64encode((run_dir / m.group(1)).read_bytes()).decode() + '"', html)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:3px 8px;text-align:right}td:first-child{text-align:left}")
    reload = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    path = run_dir / "report.html"
    partial = path.with_name(".report.html.partial")
    partial.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{reload}<title>{title}</title>"
                       f"<style>{style}</style></head><body>{html}</body></html>")
    os.replace(partial, path)
    return path


# --- the live report ----------------------------------------------------------------------------------------

LIVE_REFRESH_S = 10


def plot_progress(rounds: dict[str, list[dict]], out: Path) -> bool:
    """Per federated run so far: the clients' mean training loss per round and, where a round was evaluated,
    its Rule safety."""
    points = {label: [(r["round"] + 1, round_scalars(r)) for r in records if "round" in r]
              for label, records in rounds.items()}
    if not any(points.values()):
        return False
    evaluated = any("safety/rule" in s for series in points.values() for _, s in series)
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(10 if evaluated else 6, 3.8), squeeze=False)
    for label, series in points.items():
        for ax, key in zip(axes[0], ("train/loss", "safety/rule")):
            xy = [(x, s[key]) for x, s in series if key in s]
            if xy:
                ax.plot(*zip(*xy), marker="o", label=label)
    axes[0][0].set(xlabel="round", ylabel="clients' mean training loss", title="Training loss so far")
    if evaluated:
        axes[0][1].set(xlabel="round", ylabel="Rule safety (%)", ylim=(-2, 102), title="Safety per round so far")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


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


def write_live_report(run_dir: Path, results: dict, rounds: dict[str, list[dict]], runs_done: int, runs_total: int,
                      state: str = "running") -> Path:
    """``report.html`` while a run goes (``state`` "running": the page reloads every ``LIVE_REFRESH_S``
    seconds) or after it stopped: every federated run's rounds so far (``rounds``: its records by label) and
    the table of the arms finished so far (``results``: the run's results with those arms, analysed)."""
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    plotted = plot_progress(rounds, run_dir / "plots" / "progress.png")
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    status = (f"Running: {runs_done} of {runs_total} arm-seed runs finished (updated {when}; this page reloads "
              f"every {LIVE_REFRESH_S} s until the run ends)." if state == "running" else
              f"Stopped at {when} with {runs_done} of {runs_total} arm-seed runs finished; `fedsafe run --resume "
              f"{run_dir}` continues it.")
    finished = (f"{matrix_table(results)}\n\n## Paired tests so far\n\n{paired_table(results)}"
                if results["arms"] else "None yet.")
    body = (f"# fedsafe report: {results['name']} ({state})\n\n{status}\n\n"
            f"## Federated runs so far\n\n{rounds_table(rounds, results['rounds'])}\n\n"
            + ("![Progress](plots/progress.png)\n\n" if plotted else "")
            + f"## Finished arms\n\n{finished}\n")
    return write_html(run_dir, f"fedsafe {results['name']} ({state})", body,
                      LIVE_REFRESH_S if state == "running" else None)


def rebuild(run_dir: Path) -> str:
    """Recompute the analysis of a finished run folder from its ``results.json`` and the per-prompt verdicts
    it points to, rewrite ``results.json`` and the report; returns the table."""
    path = Path(run_dir) / "results.json"
    results = json.loads(path.read_text())
    results["analysis"] = analyse(results["arms"])
    path.write_text(json.dumps(results, indent=2))
    return write_report(run_dir, results)



def compare_table(rows: list[dict], base: str) -> str:
    """``fedsafe.analysis.compare_runs``'s rows as Markdown: each arm's metrics (mean over seeds [95%
    interval]) and, per safety judge, its difference from the same arm in ``base`` (paired test)."""
    shown = [k for k in METRICS if any(k in r["summary"] for r in rows)]
    tested = [k for k in METRICS if any(k in r["paired"] for r in rows)]
    header = (["run", "arm", "seeds"] + [METRICS[k].label for k in shown]
              + [f"{analysis.RELATIVE.get(k, METRICS[k].label)} vs {base}: effect [95% CI], p (Holm), seeds"
                 for k in tested])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        cells = [r["run"], r["arm"], str(r["seeds"])]
        cells += [summary_cell(r["summary"].get(k), DIGITS.get(k, 2)) for k in shown]
        for k in tested:
            t = r["paired"].get(k)
            seeds = str(t["n_seeds"]) if t and t.get("level") == SEED_LEVEL else f"1 ({WITHIN_RUN})"
            cells.append(f"{t['effect']:+.2f} [{t['effect_ci95'][0]:+.2f}, {t['effect_ci95'][1]:+.2f}], "
                         f"p {_p(t['p'])} ({_p(t['p_holm'])}), {seeds}" if t else (r["note"] or "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
