"""The report's plots (PNG files under the run folder's ``plots/``), each a function of the results and the
run's records that writes one file and says whether it had anything to draw.

    plots/safety_by_arm.png        each safety judge per arm, mean with 95% interval error bars
    plots/safety_per_round.png     Rule safety per round per federated run (+ each defense after the rounds)
    plots/client_similarity.png    cosine similarity of the clients' summed updates, malicious marked (Fig. 3a)
    plots/aggregation_weights.png  mean weight each rule gave each client when sampled (Fig. 3b)
    plots/progress.png             the live page: training loss and Rule safety per round so far
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from fedsafe.metrics.registry import METRICS
from fedsafe.report.records import RunRecords
from fedsafe.tracking import round_scalars

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def federation_names(results: dict) -> dict[str, str]:
    """A readable name per federated run: its undefended arm's name, else the first arm's rule."""
    names: dict[str, str] = {}
    for name, arm in results["arms"].items():
        if arm["defense_level"] == 0 or arm["federation"] not in names:
            names[arm["federation"]] = name if arm["defense_level"] == 0 else arm["rule"]
    return names


def plot_safety_per_round(results: dict, records: RunRecords, out: Path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    plotted = False
    rounds = results["rounds"]
    finals = {a["federation"]: a["evaluation"]["safety"]["rule"] for a in results["arms"].values()
              if a["defense_level"] == 0}
    for key, label in federation_names(results).items():
        points = [(r["round"] + 1, r["evaluation"]["safety"]["rule"]) for r in records.rounds.get(key, [])
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


def plot_similarity(results: dict, records: RunRecords, out: Path) -> bool:
    """The first attacked federated run with client similarities (FedAvg if the matrix has it)."""
    names = federation_names(results)
    attacked = [a for a in results["arms"].values() if a["num_malicious"] and a["defense_level"] == 0]
    attacked.sort(key=lambda a: a["rule"] != "fedavg")
    for arm in attacked:
        info = records.clients.get(arm["federation"])
        if not info or not info["clients"]:
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


def plot_weights(results: dict, records: RunRecords, out: Path) -> bool:
    rows, labels, roles = [], [], None
    for name, arm in results["arms"].items():
        if not arm["num_malicious"] or arm["defense_level"]:
            continue
        rounds = records.rounds.get(arm["federation"], [])
        if not rounds:
            continue
        rows.append([float("nan") if w is None else w
                     for w in mean_weights(rounds, results["num_clients"], results["clients_per_round"])])
        labels.append(name)
        if roles is None and arm["federation"] in records.clients:
            roles = records.clients[arm["federation"]]["roles"]
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


def plot_safety_by_arm(results: dict, records: RunRecords, out: Path) -> bool:
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
