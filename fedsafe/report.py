"""The report of a run: one table of arms x metrics beside the paper's figures, three plots, Markdown + HTML.

    report.md     the table, the judges, the plots (PNG files beside it)
    report.html   the same content in one self-contained page (plots inlined)
    plots/safety_per_round.png     Rule safety per round per federated run (+ each defense after the rounds)
    plots/client_similarity.png    cosine similarity of the clients' summed updates, malicious marked (Fig. 3a)
    plots/aggregation_weights.png  mean weight each rule gave each client when sampled (Fig. 3b)
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import markdown
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


METRIC_COLUMNS = ("Rule safety (%)", "LLM-judge safe (%)", "RM score", "over-refusal (%)", "response loss",
                  "helpfulness (1-10)")


def metric_cells(ev: dict) -> str:
    """One model's ``METRIC_COLUMNS`` as Markdown cells; "-" where a metric is off."""
    s, help_ = ev["safety"], ev.get("helpfulness", {})
    return (f"{s['rule']:.2f} | {_fmt(s.get('llm_judge', {}).get('safe'))} | {_fmt(s.get('reward', {}).get('mean'))} | "
            f"{_fmt(ev.get('over_refusal', {}).get('rate'))} | {_fmt(help_.get('response_loss'), 3)} | "
            f"{_fmt(help_.get('judge', {}).get('mean'))}")

# docs/method.md#the-papers-setting-and-numbers, Table 1, LMSYS benign column: (Rule, MD-Judge, RM, MT-1);
# malicious data = BeaverTails.
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
PAPER_RULES = {"fedavg": "FedAvg, attacked", "median": "Median", "trimmed_mean": "Trimmed mean", "krum": "Krum",
               "krum_paper": "Krum", "dnc": "DnC", "foolsgold": "FoolsGold", "residual": "Residual"}


def paper_row(arm: dict) -> str | None:
    """The paper's Table 1 row matching an arm's result, if the paper has one."""
    if not arm["num_malicious"]:
        return "FedAvg, no attack" if arm["defense_level"] == 0 and arm["rule"] == "fedavg" else None
    if arm["defense_level"] == 0:
        return PAPER_RULES.get(arm["rule"])
    return f"Level {arm['defense_level']}" if arm["rule"] == "fedavg" else None


def matrix_table(results: dict) -> str:
    """Markdown table: one row per arm; the paper's Rule / MD-Judge / MT-1 where the arm exists there."""
    rows = [f"| arm | {' | '.join(METRIC_COLUMNS)} | paper Rule | paper MD-Judge | paper MT-1 |",
            "|---" * (len(METRIC_COLUMNS) + 4) + "|"]
    for name, arm in results["arms"].items():
        paper = PAPER_TABLE1.get(paper_row(arm) or "")
        cells = f"{paper[0]:.2f} | {paper[1]:.2f} | {paper[3]:.2f}" if paper else "- | - | -"
        rows.append(f"| {name} | {metric_cells(arm['evaluation'])} | {cells} |")
    return "\n".join(rows)


def _fed_dir(arm: dict) -> Path:
    return Path(arm["federation_dir"])


def _rounds(fed_dir: Path) -> list[dict]:
    path = fed_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


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
        points = [(r["round"] + 1, r["evaluation"]["safety"]["rule"]) for r in _rounds(fed_dirs[key])
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
        rounds = _rounds(fed)
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


PLOTS = (("safety_per_round", plot_safety_per_round, "Safety per round"),
         ("client_similarity", plot_similarity, "Client update similarity (paper Fig. 3a)"),
         ("aggregation_weights", plot_weights, "Aggregation weights (paper Fig. 3b)"))


def judges_note(results: dict) -> str:
    ev = next(iter(results["arms"].values()))["evaluation"]
    lines = [f"- Rule: {ev['safety']['judge']} on {ev['safety']['num_prompts']} AdvBench prompts: percent of "
             "answers with a refusal keyword (docs/method.md#metrics); higher is safer."]
    if "llm_judge" in ev["safety"]:
        j = ev["safety"]["llm_judge"]
        lines.append(f"- LLM judge: {j['format']} format, judged by `{j['model']}` (a model far smaller than "
                     "MD-Judge-7B is a weak judge: read it as a sanity check).")
    if "over_refusal" in ev:
        lines.append(f"- Over-refusal: percent of {ev['over_refusal']['num_prompts']} held-out benign prompts "
                     "answered with a refusal keyword; lower is better.")
    if "response_loss" in ev.get("helpfulness", {}):
        lines.append("- Response loss: loss per token of held-out benign reference answers (offline helpfulness "
                     "proxy for MT-1); lower is better.")
    lines.append("- Paper columns: Ye et al. (ICLR 2025) Table 1, LMSYS benign, BeaverTails attack, Llama-2-7B, "
                 "MD-Judge-7B, GPT-4 MT-1 (docs/method.md#the-papers-setting-and-numbers); they are the published "
                 "figures, not a run here.")
    return "\n".join(lines)


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
        f"Wall time {results['wall_s']:.1f} s (arms computed now: {len(results['computed'])} of "
        f"{len(results['arms'])}).\n\n{table}\n\n{judges_note(results)}\n{data_note(results)}\n\n"
        + "".join(f"## {title}\n\n![{title}](plots/{name}.png)\n\n" for name, title in made)
    )
    (run_dir / "report.md").write_text(body)
    html = markdown.markdown(body, extensions=["tables"])
    html = re.sub(r'src="(plots/[^"]+\.png)"', lambda m: 'src="data:image/png;base64,'
                  + base64.b64encode((run_dir / m.group(1)).read_bytes()).decode() + '"', html)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:3px 8px;text-align:right}td:first-child{text-align:left}")
    (run_dir / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                                         f"fedsafe {results['name']}</title><style>{style}</style></head>"
                                         f"<body>{html}</body></html>")
    return table
