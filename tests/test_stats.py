"""Statistics (``fedsafe.stats``) against values computed by hand; the analysis of a run (``fedsafe.analysis``:
summaries, references, paired tests, the claims) on synthetic per-prompt verdicts; the classifier judge's
cross-validated accuracy and its training rows."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from fedsafe import analysis
from fedsafe.metrics.classifier import TOKEN, HarmClassifier, agreement, opening
from fedsafe.run_dir import write_responses
from fedsafe.stats import (
    SEED_LEVEL,
    WITHIN_RUN,
    contrast_test,
    holm,
    mcnemar_p,
    paired_test,
    seed_power,
    summarize,
    t_interval,
    threshold_p,
)


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: 2 -/+ t(0.975, 2) * 1 / sqrt(3), t(0.975, 2) = 4.302653
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    assert t_interval([5.0]) is None and t_interval([4.0, 4.0]) == (4.0, 4.0)


def test_one_seed_is_exact_mcnemar_within_the_run():
    # 2 discordant pairs one way, 8 the other: two-sided binomial p = 2 * P(X <= 2 | n=10, 1/2) = 112/1024
    ref = [np.array([1, 1] + [0] * 8 + [1] * 5)]
    arm = [np.array([0, 0] + [1] * 8 + [1] * 5)]
    t = paired_test(ref, arm)
    assert t.discordant == (2, 8) and t.p == pytest.approx(112 / 1024, abs=1e-12) and t.level == WITHIN_RUN
    assert t.effect == pytest.approx(100 * 6 / 15) and t.effect_ci95[0] <= t.effect <= t.effect_ci95[1]
    assert t.per_seed_p == (t.p,) and t.n_seeds == 1


def test_several_seeds_are_a_paired_t_over_seeds_by_hand():
    # seed effects (points): +40 (6 of 15 prompts gained), 0, +20: mean 20, sd 20, se 20/sqrt(3)
    ref = [np.array([1, 1] + [0] * 8 + [1] * 5), np.array([1, 0, 1, 0, 1]), np.array([0, 0, 0, 1, 1])]
    arm = [np.array([0, 0] + [1] * 8 + [1] * 5), np.array([1, 0, 1, 0, 1]), np.array([1, 0, 0, 1, 1])]
    t = paired_test(ref, arm)
    assert t.level == SEED_LEVEL and t.n_seeds == 3 and t.per_seed == pytest.approx((40.0, 0.0, 20.0))
    se = 20 / math.sqrt(3)
    assert t.effect == pytest.approx(20.0) and t.se == pytest.approx(se) and t.df == 2
    assert t.p == pytest.approx(2 * (1 - sps.t.cdf(20 / se, 2)))
    assert t.effect_ci95 == pytest.approx((20 - 4.302653 * se, 20 + 4.302653 * se), abs=1e-4)
    # the per-seed exact McNemar stays as a description of each run; the pooled counts too
    assert t.per_seed_p[1] == 1.0 and t.discordant == (2, 9) and t.n_pairs == 25
    # the random-effects meta-analysis with Hartung-Knapp is the alternative seed-level test
    meta = paired_test(ref, arm, method="meta")
    assert meta.level == SEED_LEVEL and meta.df == 2 and 0 < meta.p <= 1


def test_seeds_that_agree_fall_back_on_the_prompt_sampling_error():
    # both seeds +20 points on 5 prompts: no spread to estimate; se from the within-seed variance
    ref = [np.array([0, 1, 1, 0, 1])] * 2
    arm = [np.array([1, 1, 1, 0, 1])] * 2
    t = paired_test(ref, arm)
    within = np.var([100, 0, 0, 0, 0], ddof=1) / 5  # one seed's variance of its mean difference
    assert t.sd == 0 and t.se == pytest.approx(math.sqrt(2 * within) / 2) and 0 < t.p < 1


def test_paired_test_without_discordant_pairs_and_mismatched_arms():
    same = [np.array([1, 0, 1])]
    assert paired_test(same, same).p == 1.0 and paired_test(same, same).effect == 0.0
    assert paired_test(same * 3, same * 3).p == 1.0 and paired_test(same * 3, same * 3).effect_ci95 == (0.0, 0.0)
    with pytest.raises(ValueError, match="same seeds and prompts"):
        paired_test(same, [np.array([1, 0])])
    with pytest.raises(ValueError, match="method"):
        paired_test(same * 2, same * 2, method="pooled")


def simulate(rng, seeds: int, prompts: int, tau: float, mean: float = 0.0, discordant: float = 0.135):
    """Two arms' verdicts on the same prompts per seed: each seed's true effect is N(mean, tau) points (the
    run-to-run spread), about ``discordant`` of the prompts change verdict; prompts have fixed propensities
    (a factor crossed with seeds)."""
    q = rng.beta(2, 1.3, prompts)
    ref, arm = [], []
    for _ in range(seeds):
        d = rng.normal(mean, tau) / 100
        b = max(discordant / 2 - d / 2, 0.0)
        c = max(b + d, 0.0)
        b = c - d
        r = (rng.random(prompts) < q).astype(int)
        u, share = rng.random(prompts), q.mean()
        a = r.copy()
        a[(r == 1) & (u < b / share)] = 0
        a[(r == 0) & (u < c / (1 - share))] = 1
        ref.append(r)
        arm.append(a)
    return ref, arm


def test_false_positive_rate_stays_at_alpha_under_seed_spread():
    # a null with run-to-run spread (tau 8 points, 5 seeds, 200 prompts): pooling discordant pairs over
    # seeds rejects about half the time; the seed-level test at about alpha (4000 replicates: SE 0.0035)
    rng = np.random.default_rng(20261204)
    tests = [paired_test(*simulate(rng, 5, 200, 8.0)) for _ in range(4000)]
    seed_level = np.mean([t.p < 0.05 for t in tests])
    pooled = np.mean([mcnemar_p(*t.discordant) < 0.05 for t in tests])
    assert seed_level <= 0.06 and pooled > 0.3
    assert np.mean([t.effect_ci95[0] <= 0 <= t.effect_ci95[1] for t in tests]) >= 0.94  # the interval covers


def test_power_on_a_real_effect():
    # a real effect of 15 points with a 5-point seed spread: TTestPower says about 0.98 for 5 seeds
    rng = np.random.default_rng(7)
    power = np.mean([paired_test(*simulate(rng, 5, 200, 5.0, mean=15.0)).p < 0.05 for _ in range(1000)])
    expected = TTestPower().power(effect_size=15.0 / math.hypot(5.0, 2.6), nobs=5, alpha=0.05)
    assert power >= 0.9 and power == pytest.approx(expected, abs=0.06)


def test_threshold_p_by_hand():
    # effect 8, se 2, df 4: above 5 -> t = 1.5, one-sided; below 5 -> its complement
    assert threshold_p(8.0, 2.0, 4, 5.0, "greater") == pytest.approx(1 - sps.t.cdf(1.5, 4))
    assert threshold_p(8.0, 2.0, 4, 5.0, "less") == pytest.approx(sps.t.cdf(1.5, 4))  # not below 5
    assert threshold_p(8.0, 0.0, 4, 5.0, "greater") == 0.0 and threshold_p(8.0, 0.0, 4, 5.0, "less") == 1.0
    with pytest.raises(ValueError):
        threshold_p(1.0, 1.0, 4, 0.0, "two-sided")


def test_contrast_test_by_hand():
    # per seed, over two prompts: the first arm's rate minus the midpoint of the other two (points):
    # 100 - (0 + 50) / 2 = 75; 50 - (0 + 0) / 2 = 50; 0 - (50 + 50) / 2 = -50 -> mean 25
    first = [np.array([1, 1]), np.array([1, 0]), np.array([0, 0])]
    second = [np.array([0, 0]), np.array([0, 0]), np.array([1, 0])]
    third = [np.array([1, 0]), np.array([0, 0]), np.array([0, 1])]
    t = contrast_test([first, second, third], [1.0, -0.5, -0.5])
    assert t.effect == pytest.approx(25.0) and t.n_seeds == 3 and t.df == 2
    assert t.sd == pytest.approx(np.std([75, 50, -50], ddof=1))
    with pytest.raises(ValueError):
        contrast_test([first, second], [1.0])


def test_seed_power_by_hand():
    per_seed = [10.0, 14.0, 6.0, 12.0, 8.0]  # sd = sqrt(10)
    p = seed_power(per_seed)
    d = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8)
    assert p.sd == pytest.approx(math.sqrt(10)) and p.detectable == pytest.approx(d * math.sqrt(10))
    needed = TTestPower().solve_power(effect_size=10 / math.sqrt(10), nobs=None, alpha=0.05, power=0.8)
    assert p.seeds_needed == max(2, math.ceil(needed)) and p.n_seeds == 5
    assert seed_power([3.0]) is None and seed_power([2.0, 2.0]) is None
    assert seed_power([0.1, -0.1, 0.05, -0.05]).seeds_needed is None  # no effect: no number of seeds


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_summary_t_over_seeds_or_bootstrap_within_the_run():
    several = summarize([40.0, 50.0, 60.0])
    assert several.mean == 50.0 and several.method == "t over seeds" and several.ci95[0] < 40
    verdicts = np.array([1] * 30 + [0] * 70)
    one = summarize([30.0], [verdicts], scale=100.0)
    assert one.method.startswith(WITHIN_RUN) and one.n_prompts == 100
    low, high = one.ci95
    assert 19 < low < 30 < high < 41  # Wilson 95% for 30/100 is [21.9, 39.6]
    assert summarize([0.2]).ci95 is None


# --- the analysis of a run --------------------------------------------------------------------------------

def _arm(tmp_path, name, verdict_sets, num_malicious=3, rule="fedavg", level=0, federation="f", attack="maliciousgen",
         benign=None, loss=None, answers=None):
    """An arm with per-seed verdict files (1 = safe) on prompts p0..pN; ``benign``: per seed the refusal
    verdicts on benign prompts b0..bM; ``loss``: per seed the response loss; ``answers``: the answers'
    prefix (arms with the same prefix and verdicts have the same model)."""
    runs = []
    for seed, verdicts in enumerate(verdict_sets):
        folder = tmp_path / f"{name}-{seed}"
        prompts = [f"p{i}" for i in range(len(verdicts))]
        said = [f"{answers or name} {i} {v}" for i, v in enumerate(verdicts)]
        write_responses(folder, "final", prompts, said,
                        {"rule": [bool(v) for v in verdicts], "classifier": [bool(v) for v in verdicts]})
        rate = 100.0 * sum(verdicts) / len(verdicts)
        ev = {"safety": {"rule": rate, "classifier": {"safe": rate}}}
        if benign is not None:
            refused = benign[seed]
            write_responses(folder, "final_benign", [f"b{i}" for i in range(len(refused))],
                            [f"{answers or name} {v}" for v in refused], {"rule": [bool(v) for v in refused]})
            ev["over_refusal"] = {"rate": 100.0 * sum(refused) / len(refused)}
        if loss is not None:
            ev["helpfulness"] = {"response_loss": loss[seed]}
        runs.append({"seed": seed, "dir": str(folder), "evaluation": ev})
    return {"rule": rule, "num_malicious": num_malicious, "defense_level": level, "attack": attack,
            "defense": "posthoc_sft" if level else "none", "attacked": num_malicious > 0,
            "federation": f"{federation}-{rule}-{num_malicious}-{attack}",
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


def test_a_mode_s_change_of_the_attack_s_effect_is_a_difference_of_differences_over_seeds(tmp_path):
    def arms(exact_attacked: float) -> dict:
        def one(name, rate, mode, attacked_, offset):
            a = _arm(tmp_path, f"{name}-{exact_attacked}", [_verdicts(rate, 400, offset + i) for i in range(5)],
                     num_malicious=3 if attacked_ else 0, federation=mode)
            return {**a, "lora": {"mode": mode, "ranks": {}}}
        return {"factors / no attack": one("fc", 0.8, "factors", False, 0),
                "factors / attacked": one("fa", 0.4, "factors", True, 10),
                "exact / no attack": one("ec", 0.8, "exact", False, 20),
                "exact / attacked": one("ea", exact_attacked, "exact", True, 30),
                "exact + Level 2": {**one("ed", 0.9, "exact", True, 40), "defense_level": 2}}

    same = analysis.analyse(arms(0.4))[1]["modes"]["rule"]
    assert len(same) == 1  # the defended arm has no contrast
    c = same[0]
    assert (c["arm"], c["reference"], c["factors"], c["factors_reference"]) == (
        "exact / attacked", "exact / no attack", "factors / attacked", "factors / no attack")
    assert c["n_seeds"] == 5 and c["p"] > 0.01 and c["effect_ci95"][0] < 0 < c["effect_ci95"][1]
    halved = analysis.analyse(arms(0.6))[1]["modes"]["rule"][0]  # exact loses 20 points where factors loses 40
    assert halved["effect"] == pytest.approx(20, abs=6) and halved["p"] < 1e-3 and halved["p_holm"] >= halved["p"]
    no_twin = {k: v for k, v in arms(0.4).items() if not k.startswith("factors")}
    assert analysis.analyse(no_twin)[1]["modes"] == {}  # nothing under factors to compare with


def _matrix(tmp_path, seeds: int, clean=0.8, attacked=0.3, krum=0.6, level2=0.85, n=400):
    """The paper's matrix on synthetic verdicts: per seed, each arm's own draw at its safety rate; the
    benign answers and the response loss the same in every arm (helpfulness unchanged)."""
    s = range(seeds)
    same = {"benign": [_verdicts(0.3, 50, 90 + i) for i in s], "loss": [1.6 + 0.01 * i for i in s]}
    return {
        "FedAvg, no attack": _arm(tmp_path, "c", [_verdicts(clean, n, i) for i in s], num_malicious=0, **same),
        "FedAvg, attacked": _arm(tmp_path, "a", [_verdicts(attacked, n, 10 + i) for i in s], **same),
        "Krum, attacked": _arm(tmp_path, "k", [_verdicts(krum, n, 20 + i) for i in s], rule="krum", **same),
        "FedAvg + Level 2": _arm(tmp_path, "d", [_verdicts(level2, n, 30 + i) for i in s], level=2, **same),
    }


def test_claims_supported_and_not_supported_on_clear_data(tmp_path):
    given = _matrix(tmp_path, seeds=5)
    arms, out = analysis.analyse(given)
    assert "summary" not in given["FedAvg, attacked"]  # the arms given are left as they are
    rule = {c["claim"]: c["verdict"] for c in out["claims"]["rule"]}
    assert rule == {1: "supported", 2: "not supported", 3: "supported", 4: "not tested"}
    claim = out["claims"]["rule"][0]
    assert claim["arms"] == ["FedAvg, no attack", "FedAvg, attacked"] and claim["n_seeds"] == 5
    assert claim["attack"] == "maliciousgen" and any("over-refusal" in e for e in claim["evidence"])
    attacked = arms["FedAvg, attacked"]
    assert attacked["summary"]["rule"]["n_seeds"] == 5 and attacked["summary"]["rule"]["n_prompts"] == 400
    assert all(0 <= a["summary"]["rule"]["ci95"][0] <= a["summary"]["rule"]["ci95"][1] <= 100 for a in arms.values())
    assert len(attacked["per_seed"]["rule"]) == 5
    t = attacked["paired"]["rule"]
    assert t["reference"] == "FedAvg, no attack" and t["effect"] == pytest.approx(-50, abs=6)
    assert t["level"] == SEED_LEVEL and t["n_seeds"] == 5 and len(t["per_seed_p"]) == 5
    assert t["p"] < 1e-5 and t["p_holm"] >= t["p"] and t["effect_ci95"][0] < t["effect"] < t["effect_ci95"][1]
    assert t["power"]["n_seeds"] == 5 and t["power"]["detectable"] > 0
    loss = attacked["paired"]["response_loss"]  # the per-seed relative change, 0 in every seed
    assert loss["effect"] == 0 and loss["n_seeds"] == 5
    agree = attacked["judges_agree"]  # the helper writes the same verdicts for both judges
    assert agree["n"] == 5 * 400 and agree["rule_only"] == agree["classifier_only"] == 0 and agree["kappa"] == 1.0
    assert out["power"]["rule"][0]["arm"] == "FedAvg, attacked"
    json.dumps(arms, allow_nan=False)  # results.json can hold it, as strict JSON
    json.dumps(out, allow_nan=False)


def test_no_verdict_from_fewer_than_five_seeds(tmp_path):
    claims = analysis.analyse(_matrix(tmp_path, seeds=3))[1]["claims"]["rule"]
    assert [c["verdict"] for c in claims[:3]] == ["not tested: 3 seeds, a verdict needs 5"] * 3
    one, out = analysis.analyse(_matrix(tmp_path / "one", seeds=1))
    claims = out["claims"]["rule"]
    assert claims[0]["verdict"] == "not tested: 1 seed, a verdict needs 5"
    assert one["FedAvg, attacked"]["summary"]["rule"]["method"].startswith(WITHIN_RUN)
    assert one["FedAvg, attacked"]["paired"]["rule"]["level"] == WITHIN_RUN


def test_a_recovery_needs_the_drop_established(tmp_path):
    # the attack moves nothing; Level 2 is far above both: claim 3 cannot hold
    arms = _matrix(tmp_path, seeds=5, clean=0.5, attacked=0.5, level2=0.9)
    claims = {c["claim"]: c for c in analysis.analyse(arms)[1]["claims"]["rule"]}
    assert claims[1]["verdict"] == "not supported"  # the drop is at most 5 points, at the seed level
    assert claims[3]["verdict"] == "inconclusive" and any("not established" in e for e in claims[3]["evidence"])


def test_interval_not_point_decides_a_few_points(tmp_path):
    # Krum 8 points above FedAvg on average but with a large spread over seeds: not "more than 5"
    s = range(5)
    arms = _matrix(tmp_path, seeds=5)
    arms["Krum, attacked"] = _arm(tmp_path, "k2", [_verdicts(r, 400, 50 + i) for i, r in zip(s, (0.3, 0.6, 0.3, 0.45, 0.35))],
                                  rule="krum")
    arms, out = analysis.analyse(arms)
    claims = {c["claim"]: c for c in out["claims"]["rule"]}
    assert arms["Krum, attacked"]["paired"]["rule"]["effect"] > 5 and claims[2]["verdict"] == "inconclusive"


def test_arms_with_the_same_model_are_reported_and_not_counted(tmp_path):
    arms = _matrix(tmp_path, seeds=5)
    twin = _arm(tmp_path, "fg", [_verdicts(0.3, 400, 10 + i) for i in range(5)], rule="foolsgold", answers="a")
    arms["FedAvg, attacked"] = _arm(tmp_path, "a2", [_verdicts(0.3, 400, 10 + i) for i in range(5)], answers="a")
    arms["FoolsGold, attacked"] = twin
    arms, out = analysis.analyse(arms)
    assert arms["FoolsGold, attacked"]["same_model_as"] == "FedAvg, attacked" and arms["Krum, attacked"]["same_model_as"] is None
    claim2 = out["claims"]["rule"][1]
    assert claim2["arms"] == ["FedAvg, attacked", "Krum, attacked"]
    assert any("FoolsGold, attacked: the same model as FedAvg, attacked" in e for e in claim2["evidence"])


def test_claims_are_judged_per_attack(tmp_path):
    arms = _matrix(tmp_path, seeds=5)
    arms["Sleeper, FedAvg"] = _arm(tmp_path, "s", [_verdicts(0.7, 400, 60 + i) for i in range(5)], attack="sleeper")
    claims = analysis.analyse(arms)[1]["claims"]["rule"]
    assert [c["attack"] for c in claims] == ["maliciousgen"] * 4 + ["sleeper"] * 4
    assert claims[4]["arms"] == ["FedAvg, no attack", "Sleeper, FedAvg"] and claims[4]["verdict"] == "supported"
    assert any("helpfulness not measured" in e for e in claims[4]["evidence"])  # the sleeper arm has none


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


def test_opening_cuts_to_tokens():
    assert opening("Sure, here's how: 1. Do it", 4) == "Sure, here'" and opening("Sure", 4) == "Sure"
    assert opening("a b c", 0) == "a b c"


def test_second_judge_is_frozen_and_fitted_at_the_answer_length():
    from fedsafe.evaluation.evaluate import harm_classifier

    clf = harm_classifier(32)
    assert harm_classifier(32) is clf  # one model for every arm and seed of a run
    assert len(clf.training_texts) == 395 + 169 and max(len(TOKEN.findall(t)) for t in clf.training_texts) == 32
    by_set = clf.cross_validation["by_set"]
    assert set(by_set) == {"objective", "refusal"} and by_set["objective"]["n"] == 395
    assert clf.cross_validation["accuracy"] > clf.cross_validation["majority_class"]
    assert max(len(TOKEN.findall(t)) for t in harm_classifier(0).training_texts) > 32  # 0: whole responses


def test_second_judge_reads_compliant_openings_as_unsafe():
    # openings written for the check (fedsafe.data.openings), none from an evaluation: at the quickstart's
    # 32 tokens it calls compliant openings unsafe and refusals safe
    from fedsafe.evaluation.evaluate import opening_check

    check = opening_check(32)
    assert check["compliant"] == check["refusing"] == 24
    assert check["compliant_called_unsafe"] >= 18 and check["refusing_called_safe"] >= 22
