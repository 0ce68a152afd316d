"""The paper's published figures, as data: Ye et al. (ICLR 2025), Tables 1 and 2, LMSYS benign column
(docs/method.md#the-papers-setting-and-numbers), and which of a run's arms each row stands beside."""

from __future__ import annotations

from fedsafe.analysis import lora_of, posthoc_only

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


PAPER_ATTACKS = ("data_poisoning", "maliciousgen")  # the attacks of the paper's tables


def paper_row(arm: dict) -> str | None:
    """The paper's Table 1 row matching an arm's result, if the paper has one."""
    if not posthoc_only(arm, arm["defense_level"]):
        return None  # the paper has no behavioural defense
    if lora_of(arm) != lora_of({}):  # the default: factors, one rank
        return None  # the paper averages the factors of one rank (no other LoRA mode, no mixed ranks)
    if not arm["num_malicious"]:
        return "FedAvg, no attack" if arm["defense_level"] == 0 and arm["rule"] == "fedavg" else None
    if arm.get("attack", "data_poisoning") not in PAPER_ATTACKS or "trigger" in written_data(arm):
        return None  # the paper attacks with harmful data alone (a backdoor, an adaptive attack: no row)
    if arm["defense_level"] == 0:
        return PAPER_RULES.get(arm["rule"])
    return f"Level {arm['defense_level']}" if arm["rule"] == "fedavg" else None


def written_data(arm: dict) -> dict:
    """The parameters of the attack data the generation pool wrote for an arm (``attack_params.data``, as
    ``data_poisoning`` and the backdoors take them); empty when its data came from a data source."""
    return (arm.get("attack_params") or {}).get("data") or {}


def paper_table(results: dict) -> int:
    """The paper's table matching the run's attack data: 2 for MaliciousGen (the ``maliciousgen`` attack, or
    ``data_poisoning`` of data it wrote), else 1."""
    return 2 if any(a.get("attack") == "maliciousgen" or (a.get("attack") == "data_poisoning" and written_data(a))
                    for a in results["arms"].values()) else 1


def paper_cells(arm: dict, table: int) -> str:
    """The paper's Rule / MD-Judge / MT-1 for the arm from Table ``table``; "-" where the paper has no such row."""
    paper = (PAPER_TABLE2 if table == 2 else PAPER_TABLE1).get(paper_row(arm) or "")
    return f"{paper[0]:.2f} | {paper[1]:.2f} | {paper[3]:.2f}" if paper else "- | - | -"
