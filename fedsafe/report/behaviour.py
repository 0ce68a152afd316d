"""The report's sections on what rules and defenses did with the attackers' updates: detection by the
rules, the behavioural screening's verdicts and attribution, and what the defenses cost. Functions of the
results and the run's round records (``RunRecords``)."""

from __future__ import annotations

from fedsafe.metrics.detection import pooled, rates
from fedsafe.report.records import RunRecords


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


def screening_table(results: dict, records: RunRecords) -> str:
    """Per arm with behavioural screening, pooled over its seeds: the screening's own verdicts (whatever its
    action), attacking and benign uploads flagged, with Wilson intervals."""
    rows = ["| arm | action | attacking uploads flagged (TPR, %) | benign uploads flagged (FPR, %) |", "|---|---|---|---|"]
    for name, arm in results["arms"].items():
        counts = [r["screening"] for r in arm.get("runs", []) if r.get("screening") and
                  r["screening"]["malicious"] + r["screening"]["benign"]]
        if not counts or arm["defense_level"]:  # a post-hoc arm shares its federation's screening
            continue
        r = rates(pooled(counts))
        action = next((x["screening"]["action"] for x in records.rounds.get(arm["federation"], [])
                       if x.get("screening")), "-")
        rows.append(f"| {name} | {action} | {_rate_cell(r['tpr'])} | {_rate_cell(r['fpr'])} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def attribution_table(results: dict, records: RunRecords) -> str:
    """Per screened arm (first seed), per round and sampled client: its canary safety and its effect (its
    safety minus the global adapter's), whether it attacked, and whether screening flagged it."""
    rows = ["| arm | round | client | attacking | canary safety | effect on canary safety | flagged |",
            "|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        if arm["defense_level"]:
            continue
        for record in records.rounds.get(arm["federation"], []):
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
        if not costs or arm["defense"] == "none":
            continue
        means = " | ".join(f"{sum(c[k] for c in costs) / len(costs):.0f}" for k in keys)
        rows.append(f"| {name} | {arm['defense']} | {means} |")
    return "" if len(rows) == 2 else "\n".join(rows)


def behaviour_section(results: dict, records: RunRecords) -> str:
    """Screening verdicts, attribution and defense cost, where the matrix has behavioural defenses."""
    parts = [
        ("What the behavioural screening flagged",
         ("Over every round of every seed, the screening's verdicts (canary safety more than the threshold below "
          "the round's median client, or over-refusal above it), with Wilson 95% intervals."),
         screening_table(results, records)),
        ("Which clients moved the model",
         ("Per round (first seed): each sampled client's canary safety with its upload added to the global "
          "adapter, and its effect: that minus the global adapter's own (points)."),
         attribution_table(results, records)),
        ("What the defenses cost",
         ("Mean over seeds, wall seconds on this run's machine (setup includes loading the data for every arm; "
          "screening answers are the canary answers of all clients and the global model)."),
         defense_cost_table(results)),
    ]
    return "".join(f"## {title}\n\n{text}\n\n{table}\n\n" for title, text, table in parts if table)
