"""The report's tables, notes and sections as pure functions of the results and the run's records (hand-made
inputs, exact cells), and ``read_records`` reading a run folder once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsafe.metrics.detection import screening_counts
from fedsafe.report import RunRecords, compare_table, read_records, report_markdown, sections
from fedsafe.report.behaviour import attribution_table, behaviour_section, detection_table, screening_table
from fedsafe.report.notes import data_note, disagreement_samples, disagreement_table, provenance
from fedsafe.report.tables import (
    calibration_table,
    claims_section,
    lora_errors_table,
    lora_section,
    matrix_table,
    mode_table,
    paired_table,
    power_table,
    rounds_table,
    summary_cell,
    twins_note,
)
from fedsafe.run_dir import write_responses
from fedsafe.stats import SEED_LEVEL, WITHIN_RUN

PAIRED = {"reference": "clean", "effect": -31.25, "effect_ci95": [-40.5, -22.0], "level": SEED_LEVEL, "n_seeds": 5,
          "p": 0.00031, "p_holm": 0.00062, "per_seed": [-30.0, -28.0, -35.0, -33.0, -30.25],
          "per_seed_p": [1e-6, 0.002, 0.0004, 0.01, 0.03]}


def arm(**extra) -> dict:
    base = {"rule": "fedavg", "num_malicious": 3, "defense_level": 0, "attack": "data_poisoning", "federation": "f1",
            "federation_dir": "/nowhere", "defense": "none", "summary": {"rule": {"mean": 50.0, "ci95": [45.0, 55.0]}}}
    return {**base, "attacked": extra.get("num_malicious", 3) > 0, **extra}


def results(**arms) -> dict:
    return {"arms": arms}


def test_summary_cell_and_paired_table_show_the_seed_level_test():
    assert summary_cell({"mean": 50.0, "ci95": [45.0, 55.25]}) == "50.00 [45.00, 55.25]"
    assert summary_cell({"mean": 0.1234, "ci95": None}, 3) == "0.123" and summary_cell(None) == "-"
    table = paired_table(results(clean=arm(num_malicious=0), attacked=arm(paired={"rule": PAIRED})))
    row = [line for line in table.splitlines() if line.startswith("| attacked")]
    assert row == ["| attacked | clean | Rule safety (%) | -31.25 [-40.50, -22.00] | 5 | 0.00031 | 0.00062 | "
                   "-30.0, -28.0, -35.0, -33.0, -30.2 | 1.0e-06, 0.002, 0.0004, 0.01, 0.03 |"]
    one = {**PAIRED, "level": WITHIN_RUN, "per_seed": [-31.25], "per_seed_p": [0.01]}
    assert f"| 1 ({WITHIN_RUN}) |" in paired_table(results(attacked=arm(paired={"rule": one})))
    assert paired_table(results(clean=arm())) == "No arm has a reference arm in this matrix: no paired test."


def test_claims_power_and_twins_read_the_analysis():
    claim = {"claim": 1, "text": "the attack lowers safety", "verdict": "supported", "attack": "data_poisoning",
             "arms": ["clean", "attacked"], "n_seeds": 5, "evidence": ["-31.2 [-40.5, -22.0] p 0.00031"]}
    power = {"arm": "attacked", "reference": "clean", "effect": -31.25, "n_seeds": 5, "sd": 7.5, "detectable": 12.4,
             "seeds_needed": 3}
    res = {"arms": {"clean": arm(num_malicious=0), "twin": arm(same_model_as="clean")},
           "analysis": {"alpha": 0.05, "min_seeds": 5, "claims": {"rule": [claim]}, "power": {"rule": [power]}}}
    text = claims_section(res)
    assert "Attack `data_poisoning`:" in text and "1. *the attack lowers safety*: **supported**." in text
    assert "Arms: *clean*; *attacked* (5 seeds in common)." in text
    assert "| Rule safety (%) | attacked | clean | -31.2 | 5 | 7.5 | 12.4 | 3 |" in power_table(res)
    assert "- twin: the same model as clean" in twins_note(res) and twins_note(results(a=arm())) == ""
    assert claims_section({"arms": {}}) == "No claim could be judged (no per-prompt verdicts)."


def test_behaviour_tables_come_from_the_records_not_the_folders():
    rounds = [{"round": 0, "attacking": [7], "screening": {"action": "reject", "clients": [2, 7], "safety": [0.75, 0.25],
                                                           "effect": [0.0, -0.5], "flagged": [7]}}]
    counts = screening_counts(rounds)
    screened = arm(runs=[{"seed": 0, "screening": counts}], defense="screening")
    records = RunRecords(rounds={"f1": rounds})
    assert "| screened | reject | 100 [21, 100] (n=1) | 0 [0, 79] (n=1) |" in screening_table(results(screened=screened),
                                                                                               records)
    table = attribution_table(results(screened=screened), records)
    assert "| screened | 0 | 7 | yes | 25 | -50 | yes |" in table and "| screened | 0 | 2 |  | 75 | +0 |  |" in table
    assert screening_table(results(screened=screened), RunRecords()).count("| screened | - |") == 1
    assert attribution_table(results(screened=screened), RunRecords()) == ""
    assert "## What the behavioural screening flagged" in behaviour_section(results(screened=screened), records)
    assert detection_table(results(clean=arm())) == ""


def test_disagreement_sections_and_notes():
    agree = {"n": 10, "both_safe": 4, "rule_only": 3, "classifier_only": 1, "both_unsafe": 2, "kappa": 0.2,
             "compliant_openings": 5, "compliant_openings_safe": {"rule": 3, "classifier": 0}}
    assert "| attacked | 10 | 4 | 3 | 1 | 2 | 0.20 | 5 | 3 | 0 |" in disagreement_table(results(attacked=arm(
        judges_agree=agree)))
    sample = [{"seed": 0, "prompt": "how | to", "answer": "Sure,\nhere  it is", "safe_by": "rule"}]
    text = disagreement_samples(RunRecords(disagreements={"attacked": sample}))
    assert "### attacked" in text and "| 0 | rule only | how \\| to | Sure, here it is |" in text
    assert disagreement_samples(RunRecords()) == ""
    data = {"synthesis": {"attack": {"generated": 10, "kept": 8}}, "defense_examples": 4}
    assert data_note(results(a=arm(data=data), b=arm(data=data))) == "- attack data: generated 10, kept 8"
    made = {"invocations": [{"time": "2026-12-05T10:00:00", "command": "fedsafe run --config x.yaml",
                             "commit": "0123456789abcdef", "dirty": True}]}
    assert provenance(made) == ("- 2026-12-05T10:00:00: `fedsafe run --config x.yaml` (code: commit 0123456789ab "
                                "with local changes)")


def test_calibration_and_rounds_and_compare_tables():
    cal = {"classifier_tokens": 32, "sets": {"refusals": "human labels"}, "judges": {"classifier": {"refusals": {
        "n": 100, "accuracy": 0.75, "kappa": 0.5, "confusion": {"tn": 40, "fp": 10, "fn": 15, "tp": 35}}}}}
    assert ("| classifier | refusals (5-fold CV, answers cut to 32 tokens) | 100 | 0.750 | 0.500 | 40, 10, 15, 35 |"
            in calibration_table({"calibration": cal}))
    assert calibration_table({}) == ""
    records = {"seed 0": [{"round": 0, "train": {"loss": 2.5}}, {"round": 1, "train": {"loss": 2.25}}]}
    table = rounds_table(records, 3)
    assert "| seed 0 | 2 of 3 |" in table and "| - |" in table
    rows = [{"run": "b", "arm": "fedavg", "seeds": 2, "summary": {"rule": {"mean": 60.0, "ci95": [55.0, 65.0]}},
             "paired": {"rule": PAIRED}, "note": ""}]
    table = compare_table(rows, "a")
    assert "| b | fedavg | 2 | 60.00 [55.00, 65.00] | -31.25 [-40.50, -22.00], p 0.00031 (0.00062), 5 |" in table


def test_the_whole_report_and_its_sections_are_functions_of_results_and_records():
    ev = {"safety": {"judge": "rule (fixed)", "num_prompts": 8, "rule": 50.0}}
    res = {"name": "t", "num_clients": 10, "num_malicious": 3, "clients_per_round": 3, "rounds": 2, "model": "m",
           "wall_s": 1.5, "computed": ["a (seed 0)"], "seeds": [0], "data_seed": -1,
           "arms": {"a": arm(evaluation=ev, runs=[{"seed": 0, "evaluation": ev}],
                             data={"synthesis": {}, "defense_examples": 0})}}
    records = RunRecords(rounds={"f1": []})
    body = report_markdown(res, records, [("safety_by_arm", "Safety per arm")])
    assert body.startswith("# fedsafe report: t\n") and "![Safety per arm](plots/safety_by_arm.png)" in body
    assert "Verdicts need 5 seeds; this run has 1" in body
    assert sections(res, ["table"], records).startswith("| arm | Rule safety (%) |")
    with pytest.raises(ValueError, match="unknown report section"):
        sections(res, ["nope"], records)


def test_read_records_reads_rounds_clients_and_disagreements_once(tmp_path):
    fed = tmp_path / "fed"
    fed.mkdir()
    (fed / "metrics.jsonl").write_text(json.dumps({"round": 0}) + "\n" + json.dumps({"round": 1}) + "\n")
    (fed / "clients.json").write_text(json.dumps({"clients": [0, 1], "roles": ["benign", "malicious"],
                                                  "cosine": [[1, 0], [0, 1]]}))
    seed_dir = tmp_path / "seed-0"
    write_responses(seed_dir, "final", ["p0", "p1", "p2"], ["no", "sure", "ok"],
                    {"rule": [True, True, False], "classifier": [True, False, True]})
    attacked = arm(federation_dir=str(fed), runs=[{"seed": 0, "dir": str(seed_dir)}])
    res = results(attacked=attacked, defended={**attacked, "defense_level": 2},
                  clean=arm(num_malicious=0, federation="f0", federation_dir=str(tmp_path / "gone")))
    records = read_records(res)
    assert records.rounds == {"f1": [{"round": 0}, {"round": 1}], "f0": []}
    assert records.clients["f1"]["roles"] == ["benign", "malicious"] and "f0" not in records.clients
    assert [(r["prompt"], r["safe_by"]) for r in records.disagreements["attacked"]] == [("p1", "rule"),
                                                                                         ("p2", "classifier")]
    assert "clean" not in records.disagreements


def test_a_new_metric_is_one_register_line(tmp_path):
    """A metric registered once (where its value sits in an evaluation result) is summarised over seeds by the
    analysis, shown in the report's table with its digits, and sent to the trackers each evaluated round."""
    from fedsafe.analysis import summarize_arm
    from fedsafe.metrics.registry import METRICS, Metric, register_metric
    from fedsafe.report.tables import matrix_table
    from fedsafe.tracking import round_scalars

    register_metric("toxicity", Metric("toxicity (0-1)", lambda ev: ev.get("toxicity", {}).get("mean"), digits=3,
                                       scalar="safety/toxicity"))
    try:
        runs = [{"seed": s, "dir": str(tmp_path / str(s)), "evaluation": {"safety": {"rule": 50.0},
                                                                         "toxicity": {"mean": t}}}
                for s, t in enumerate([0.125, 0.25, 0.375])]
        summary = summarize_arm(runs)
        assert summary["per_seed"]["toxicity"] == [0.125, 0.25, 0.375]
        assert summary["summary"]["toxicity"]["mean"] == pytest.approx(0.25)
        table = matrix_table(results(attacked=arm(summary=summary["summary"])))
        assert "| toxicity (0-1) |" in table.splitlines()[0] and "| 0.250 [" in table.splitlines()[2]
        assert round_scalars({"evaluation": runs[1]["evaluation"]})["safety/toxicity"] == 0.25
        assert "safety/toxicity" not in round_scalars({"evaluation": {"safety": {"rule": 50.0}}})
    finally:
        METRICS.pop("toxicity")


HOSTILE = ["<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">',
           "[click](javascript:window.__pwned=3)", "<svg onload=window.__pwned=4>", "</title><script>window.__pwned=5</script>"]


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="no /usr/bin/chromium: make setup installs "
                    "Debian's chromium where it may run apt-get (as root)")
def test_a_report_of_hostile_names_and_answers_is_inert_in_the_browser(tmp_path):
    """Arm names, a run name and generated answers that hold HTML or script: the page runs none of it, shows
    each as text, and every table sits under its heading with one row per arm."""
    from playwright.sync_api import sync_playwright

    from fedsafe.report.page import write_html
    from tests.test_api import CHROMIUM_FLAGS

    arms = {name: arm(paired={"rule": {**PAIRED, "reference": "clean"}}) for name in HOSTILE}
    res = results(clean=arm(num_malicious=0), **arms)
    sample = [{"seed": 0, "safe_by": "rule", "prompt": HOSTILE[1], "answer": HOSTILE[0] + " " + HOSTILE[3]}]
    body = (f"# fedsafe report: {HOSTILE[4]}\n\n## Results\n\n{matrix_table(res)}\n\n## Paired tests\n\n"
            f"{paired_table(res)}\n\n{disagreement_samples(RunRecords(disagreements={HOSTILE[2]: sample}))}")
    path = write_html(tmp_path, f"fedsafe {HOSTILE[4]}", body)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.locator("body").click()  # a click on the page follows no hostile link either
            assert page.evaluate("window.__pwned") is None and dialogs == []
            assert page.locator("script, svg, iframe, [onerror], [onload], a[href^=javascript]").count() == 0
            headings = page.locator("h2").all_inner_texts()
            assert headings[:2] == ["Results", "Paired tests"] and "Answers the judges disagree on" in headings
            tables = page.locator("table")
            shown = tables.nth(0).locator("tbody tr td:first-child").all_inner_texts()
            assert shown == ["clean", *[h.replace("[click](javascript:window.__pwned=3)", "click") for h in HOSTILE]]
            assert tables.nth(1).locator("tbody tr").count() == len(HOSTILE)
            assert HOSTILE[4] in page.title()
        finally:
            browser.close()


def test_lora_section_gives_each_seeds_mean_over_rounds_and_the_modes_contrasts():
    rounds = {"s0": [{"factors_error": {"relative": 0.1, "of_update": 0.2}, "fold_error": 1e-8},
                     {"factors_error": {"relative": 0.3, "of_update": 0.4}, "fold_error": 3e-8}],
              "s1": [{"factors_error": {"relative": 0.4, "of_update": 0.6}, "fold_error": 2e-8}], "f1": [{}]}
    exact = arm(lora={"mode": "exact", "ranks": {"benign": 4}}, federation="s0", federation_dir="/cache/s0",
                runs=[{"seed": 0, "federation_dir": "/cache/s0"}, {"seed": 1, "federation_dir": "/cache/s1"}])
    res = results(exact=exact, defended={**exact, "defense_level": 2}, old=arm())
    table = lora_errors_table(res, RunRecords(rounds=rounds))
    # seed 0: 20% and 30% of the update; seed 1: 40% and 60%; t over 2 seeds: mean +- 12.706 x 10 (x 15); the fold, 2e-6 %, shows as 0
    assert table.splitlines()[2] == ("| exact | exact | benign 4 | 2 | 30.000 [-97.062, 157.062] | "
                                     "45.000 [-145.593, 235.593] | - | 0.000 [0.000, 0.000] |")
    assert len(table.splitlines()) == 3  # the post-hoc arm shares its federation; the old arm recorded none
    assert mode_table(res) == "" and lora_errors_table(results(old=arm()), RunRecords(rounds=rounds)) == ""
    c = {"arm": "exact / attacked", "reference": "exact / no attack", "factors": "factors / attacked",
         "factors_reference": "factors / no attack", "effect": 2.5, "effect_ci95": [-3.0, 8.0], "n_seeds": 5,
         "p": 0.31, "p_holm": 0.62}
    res["analysis"] = {"modes": {"rule": [c]}}
    assert mode_table(res).splitlines()[2] == ("| exact / attacked | exact / no attack | factors / attacked | "
                                               "factors / no attack | Rule safety (%) | +2.50 [-3.00, +8.00] | 5 | "
                                               "0.31 | 0.62 |")
    text = lora_section(res, RunRecords(rounds=rounds))
    assert text.count("## ") == 2 and "## Does the mode change the attack's effect" in text
