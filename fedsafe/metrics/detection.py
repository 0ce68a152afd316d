"""What the rule did with the attackers' updates, from the weights each round already records.

Per round (``exposure``): which attacking clients' updates were kept (weight > 0) and their share of the
aggregate (their weights over all weights; for coordinate-wise rules, their share of the values kept).
Per run (``detection_counts``): an update counts as *flagged* when its weight is below half an even share
(``FLAG_SHARE / n``), which covers rules that discard (weight 0: Krum, DnC, Multi-Krum) and rules that
down-weight (FoolsGold, FLTrust), or when it was rejected before the rule (screening, validation); the
true-positive rate is the share of attacking updates flagged, the
false-positive rate the share of benign ones. ``rates`` gives both with Wilson 95% intervals.
"""

from __future__ import annotations

from statsmodels.stats.proportion import proportion_confint

FLAG_SHARE = 0.5  # flagged: weight below half of 1/n


def exposure(clients: list[int], weights: list[float], attacking: list[int]) -> dict:
    """``kept_malicious``: attacking clients with weight > 0; ``malicious_share``: their weights' share of all
    (None when no weight is positive)."""
    attacking, total = set(attacking), sum(weights)
    mine = [(c, w) for c, w in zip(clients, weights) if c in attacking]
    return {"kept_malicious": [c for c, w in mine if w > 0],
            "malicious_share": sum(w for _, w in mine) / total if total > 0 else None}


def detection_counts(rounds: list[dict]) -> dict:
    """Attacking and benign updates over ``rounds`` (metrics.jsonl records with ``clients``, ``weights`` and
    ``attacking``), how many of each were flagged, and the attackers' share of each attacked round's
    aggregate. Rounds without weights (skipped, lost) are left out."""
    counts = _no_counts()
    for record in rounds:
        clients, weights = record.get("clients") or [], record.get("weights") or []
        attacking = set(record.get("attacking", []))
        for rejected in record.get("rejected", []):  # left out before the rule (screening, validation)
            if isinstance(rejected["client_id"], int):
                _count(counts, rejected["client_id"] in attacking, True)
        if not clients or len(clients) != len(weights):
            continue
        total = sum(weights)
        bar = FLAG_SHARE * total / len(weights)
        for client, weight in zip(clients, weights):
            _count(counts, client in attacking, weight < bar)
        share = exposure(clients, weights, attacking)["malicious_share"]
        if attacking & set(clients) and share is not None:
            counts["shares"].append(share)
    return counts


def _no_counts() -> dict:
    return {"malicious": 0, "malicious_flagged": 0, "benign": 0, "benign_flagged": 0, "shares": []}


def _count(counts: dict, malicious: bool, flagged: bool) -> None:
    kind = "malicious" if malicious else "benign"
    counts[kind] += 1
    counts[f"{kind}_flagged"] += flagged


def screening_counts(rounds: list[dict]) -> dict:
    """``detection_counts``' fields for the behavioural screening's own verdicts (records' ``screening``:
    its ``clients`` and ``flagged``), whatever its action was; no shares."""
    counts = _no_counts()
    for record in rounds:
        screening, attacking = record.get("screening") or {}, set(record.get("attacking", []))
        flagged = set(screening.get("flagged", []))
        for client in screening.get("clients", []):
            _count(counts, client in attacking, client in flagged)
    return counts


def pooled(per_run: list[dict]) -> dict:
    """``detection_counts`` of several runs (seeds) added up."""
    keys = ("malicious", "malicious_flagged", "benign", "benign_flagged")
    return {**{k: sum(c[k] for c in per_run) for k in keys}, "shares": [s for c in per_run for s in c["shares"]]}


def rates(counts: dict) -> dict:
    """True- and false-positive rates (percent) with Wilson 95% intervals, and the attackers' mean share of
    the aggregate (percent) over the attacked rounds; None where there is nothing to count."""

    def rate(flagged: int, total: int) -> dict | None:
        if total == 0:
            return None
        low, high = proportion_confint(flagged, total, alpha=0.05, method="wilson")
        return {"percent": 100.0 * flagged / total, "ci95": (100.0 * low, 100.0 * high), "n": total}

    shares = counts["shares"]
    return {"tpr": rate(counts["malicious_flagged"], counts["malicious"]),
            "fpr": rate(counts["benign_flagged"], counts["benign"]),
            "malicious_share": 100.0 * sum(shares) / len(shares) if shares else None, "attacked_rounds": len(shares)}
