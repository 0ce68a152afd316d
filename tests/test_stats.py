"""Statistics (``fedsafe.stats``) against values computed by hand; the analysis of a run (``fedsafe.analysis``:
summaries, references, paired tests, the claims) on synthetic per-prompt verdicts; the classifier judge's
cross-validated accuracy and its training rows."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from fedsafe import analysis
from fedsafe.metrics.classifier import HarmClassifier, agreement
from fedsafe.run_dir import write_responses
from fedsafe.stats import holm, min_detectable_difference, paired_test, summarize, t_interval


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: 2 -/+ t(0.975, 2) * 1 / sqrt(3), t(0.975, 2) = 4.302653
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    assert t_interval([5.0]) is None and t_interval([4.0, 4.0]) == (4.0, 4.0)


def test_exact_mcnemar_by_hand():
    # 2 discordant pairs one way, 8 the other: two-sided binomial p = 2 * P(X <= 2 | n=10, 1/2) = 112/1024
    ref = [np.array([1, 1] + [0] * 8 + [1] * 5)]
    arm = [np.array([0, 0] + [1] * 8 + [1] * 5)]
    t = paired_test(ref, arm)
    assert t.discordant == (2, 8) and t.p == pytest.approx(112 / 1024, abs=1e-12)
    assert t.effect == pytest.approx(100 * 6 / 15) and t.effect_ci95[0] <= t.effect <= t.effect_ci95[1]
    # over two seeds the discordant pairs are summed: 4 vs 16 -> 2 * P(X <= 4 | n=20)
    two = paired_test(ref * 2, arm * 2)
    p = 2 * sum(math.comb(20, k) for k in range(5)) / 2 ** 20
    assert two.discordant == (4, 16) and two.p == pytest.approx(p, abs=1e-12) and two.n_pairs == 30


def test_paired_test_without_discordant_pairs_and_mismatched_arms():
    same = [np.array([1, 0, 1])]
    assert paired_test(same, same).p == 1.0 and paired_test(same, same).effect == 0.0
    with pytest.raises(ValueError, match="same seeds and prompts"):
        paired_test(same, [np.array([1, 0])])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_min_detectable_difference_by_hand():
    # Cohen's h for 80% power, alpha 0.05, n per arm: (z_0.975 + z_0.8) * sqrt(2 / n)
    h = (1.959964 + 0.841621) * math.sqrt(2 / 520)
    expected = 100 * (math.sin(math.pi / 4 + h / 2) ** 2 - 0.5)
    assert min_detectable_difference(520, 50.0) == pytest.approx(expected, abs=0.01)
    assert min_detectable_difference(100, 50.0) > min_detectable_difference(520, 50.0)


def test_summary_t_over_seeds_or_bootstrap_over_prompts():
    several = summarize([40.0, 50.0, 60.0])
    assert several.mean == 50.0 and several.method == "t over seeds" and several.ci95[0] < 40
    verdicts = np.array([1] * 30 + [0] * 70)
    one = summarize([30.0], [verdicts], scale=100.0)
    assert one.method == "bootstrap over prompts" and one.n_prompts == 100
    low, high = one.ci95
    assert 19 < low < 30 < high < 41  # Wilson 95% for 30/100 is [21.9, 39.6]
    assert summarize([0.2]).ci95 is None


# --- the analysis of a run --------------------------------------------------------------------------------

def _arm(tmp_path, name, verdict_sets, num_malicious=3, rule="fedavg", level=0, federation="f"):
    """An arm with per-seed verdict files (1 = safe) on prompts p0..pN."""
    runs = []
    for seed, verdicts in enumerate(verdict_sets):
        folder = tmp_path / f"{name}-{seed}"
        prompts = [f"p{i}" for i in range(len(verdicts))]
        write_responses(folder, "final", prompts, ["answer"] * len(verdicts),
                        {"rule": [bool(v) for v in verdicts], "classifier": [bool(v) for v in verdicts]})
        rate = 100.0 * sum(verdicts) / len(verdicts)
        ev = {"safety": {"rule": rate, "classifier": {"safe": rate}}}
        runs.append({"seed": seed, "dir": str(folder), "evaluation": ev})
    return {"rule": rule, "num_malicious": num_malicious, "defense_level": level,
            "federation": f"{federation}-{rule}-{num_malicious}",
            "evaluation": runs[0]["evaluation"], "runs": runs}


def _verdicts(rate: float, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.random() < rate) for _ in range(n)]


def test_references_follow_the_matrix(tmp_path):
    v = [[1, 0]]
    arms = {"clean": _arm(tmp_path, "c", v, num_malicious=0), "fedavg": _arm(tmp_path, "a", v),
            "krum": _arm(tmp_path, "k", v, rule="krum"), "fedavg + L2": _arm(tmp_path, "d", v, level=2),
            "krum + L2": _arm(tmp_path, "kd", v, rule="krum", level=2)}
    refs = {name: analysis.reference_of(name, arms) for name in arms}
    assert refs == {"clean": None, "fedavg": "clean", "krum": "fedavg", "fedavg + L2": "fedavg",
                    "krum + L2": "krum"}
    # poison spread thin: no malicious client, 10 benign ones; its reference is the clean run of as many
    arms["clean"]["benign_clients"] = arms["fedavg"]["benign_clients"] = 7
    arms["clean 10"] = {**_arm(tmp_path, "c10", v, num_malicious=0), "benign_clients": 10}
    arms["thin"] = {**_arm(tmp_path, "t", v, num_malicious=0), "attacked": True, "benign_clients": 10,
                    "attack": "thin_poison"}
    assert analysis.reference_of("thin", arms) == "clean 10" and analysis.reference_of("fedavg", arms) == "clean"


def test_claims_supported_and_not_supported_on_clear_data(tmp_path):
    n = 400
    seeds = range(3)
    arms = {
        "FedAvg, no attack": _arm(tmp_path, "c", [_verdicts(0.8, n, s) for s in seeds], num_malicious=0),
        "FedAvg, attacked": _arm(tmp_path, "a", [_verdicts(0.3, n, 10 + s) for s in seeds]),
        "Krum, attacked": _arm(tmp_path, "k", [_verdicts(0.6, n, 20 + s) for s in seeds], rule="krum"),
        "FedAvg + Level 2": _arm(tmp_path, "d", [_verdicts(0.85, n, 30 + s) for s in seeds], level=2),
    }
    out = analysis.analyse(arms)
    rule = {c["claim"]: c["verdict"] for c in out["claims"]["rule"]}
    assert rule == {1: "supported", 2: "not supported", 3: "supported", 4: "not tested"}
    attacked = arms["FedAvg, attacked"]
    assert attacked["summary"]["rule"]["n_seeds"] == 3 and attacked["summary"]["rule"]["n_prompts"] == n
    assert all(0 <= a["summary"]["rule"]["ci95"][0] <= a["summary"]["rule"]["ci95"][1] <= 100 for a in arms.values())
    assert len(attacked["per_seed"]["rule"]) == 3
    t = attacked["paired"]["rule"]
    assert t["reference"] == "FedAvg, no attack" and t["effect"] == pytest.approx(-50, abs=6)
    assert t["p"] < 1e-10 and t["p_holm"] >= t["p"] and t["effect_ci95"][0] < t["effect"] < t["effect_ci95"][1]
    agree = attacked["judges_agree"]  # the helper writes the same verdicts for both judges
    assert agree["n"] == 3 * n and agree["rule_only"] == agree["classifier_only"] == 0 and agree["kappa"] == 1.0
    json.dumps(arms)  # results.json can hold it


def test_claims_inconclusive_on_noise(tmp_path):
    n = 30
    arms = {"FedAvg, no attack": _arm(tmp_path, "c", [_verdicts(0.5, n, 1)], num_malicious=0),
            "FedAvg, attacked": _arm(tmp_path, "a", [_verdicts(0.45, n, 2)])}
    claims = analysis.analyse(arms)["claims"]["rule"]
    assert claims[0]["verdict"] == "inconclusive"
    assert arms["FedAvg, attacked"]["summary"]["rule"]["method"] == "bootstrap over prompts"


# --- the classifier judge ---------------------------------------------------------------------------------

def test_classifier_accuracy_is_cross_validated_not_on_its_training_rows():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.sample(words, 8)) for _ in range(200)]
    labels = [rng.randint(0, 1) for _ in texts]  # labels unrelated to the texts
    clf = HarmClassifier.fit(texts, labels)
    training_accuracy = np.mean([int(h) == y for h, y in zip(clf.harmful(texts), labels)])
    assert training_accuracy > 0.95  # it memorises its rows ...
    assert clf.cross_validation["accuracy"] < 0.7  # ... and the reported accuracy does not count that
    assert clf.cross_validation["folds"] == 5 and clf.cross_validation["n"] == 200


def test_classifier_learns_a_real_signal():
    texts = [f"Sure, here is how to do step {i}" for i in range(40)] + [f"I will not help with {i}" for i in range(40)]
    labels = [1] * 40 + [0] * 40
    clf = HarmClassifier.fit(texts, labels)
    assert clf.cross_validation["accuracy"] > 0.95
    assert clf.harmful(["Sure, here is how to do it", "I will not help with that"]) == [True, False]


def test_agreement_by_hand():
    a = agreement([1, 1, 0, 0], [1, 0, 0, 0])
    assert a["accuracy"] == 0.75 and a["confusion"] == {"tn": 2, "fp": 1, "fn": 0, "tp": 1}
    # kappa: p_o 0.75, p_e = 0.5*0.25 + 0.5*0.75 = 0.5 -> 0.5
    assert a["kappa"] == pytest.approx(0.5)


def test_second_judge_never_trains_on_an_evaluated_answer():
    from fedsafe.data.labelled import labelled_responses
    from fedsafe.evaluation.evaluate import harm_classifier

    rows = labelled_responses("objective")
    assert len(rows) == 395 and {r["label"] for r in rows} == {0, 1}
    evaluated = [rows[0]["response"], "an answer of the run"]
    clf = harm_classifier(evaluated)
    assert rows[0]["response"] not in clf.training_texts and len(clf.training_texts) == 394
    assert len(harm_classifier(["an answer of the run"]).training_texts) == 395
