"""Experiment matrix: arm configs, what arms share (keys), the report's pure parts, and a real matrix run
on the tiny model whose second run recomputes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedsafe.config import ArmConfig, ConfigError, load_config
from fedsafe.matrix import arm_config, expand_arms, federation_key, run_experiment
from fedsafe.report import matrix_table, mean_weights, paper_row, timing_table
from fedsafe.report.notes import judges_note
from fedsafe.run_dir import create_run_dir
from tests.conftest import ROOT, SMOKE, adapter_digest

ARMS = [
    "arms=[{name: no attack, attack: false}, {name: FedAvg, rule: fedavg}, {name: Median, rule: median},"
    " {name: FedAvg + Level 1, rule: fedavg, defense_level: 1}, {name: Median + Level 1, rule: median,"
    " defense_level: 1}]",
    "defense.dataset=toy_defense", "defense.steps=4", "defense.rounds=2", "defense.batch_size=4",
    "defense.num_examples=32",
]


def test_arms_share_federated_runs_and_change_only_their_part():
    arms = expand_arms(load_config(SMOKE, ARMS))
    assert [a.dir.parent.name for a in arms] == ["arms"] * 5 and all(a.fed_dir.parent.name == "federations" for a in arms)
    by_name = {a.spec.name: a for a in arms}
    no_attack, fedavg, median = by_name["no attack"], by_name["FedAvg"], by_name["Median"]
    assert [g.count for g in no_attack.cfg.clients] == [7, 0] and [g.count for g in fedavg.cfg.clients] == [7, 3]
    assert median.cfg.aggregation.rule == "median" and fedavg.cfg.defense.name == "none"
    defended = by_name["FedAvg + Level 1"]
    assert defended.cfg.defense.name == "posthoc_sft" and defended.cfg.defense.level == 1
    assert defended.cfg.defense.dataset == "toy_defense"
    # the defended arm trains nothing new federally: same federated run as FedAvg, its own arm key
    assert defended.federation == fedavg.federation and defended.key != fedavg.key
    assert len({a.federation for a in arms}) == 3 and len({a.key for a in arms}) == 5
    # a change to the defense alone keeps the federated runs; a change to training does not
    again = expand_arms(load_config(SMOKE, ARMS + ["defense.steps=6"]))
    assert [a.federation for a in again] == [a.federation for a in arms]
    assert again[3].key != arms[3].key and again[1].key == arms[1].key
    assert expand_arms(load_config(SMOKE, ARMS + ["train.lr=1e-3"]))[1].federation != fedavg.federation


def test_an_arms_defense_level_is_the_configs_defense_level():
    cfg = load_config(ROOT / "configs" / "paper_cpu.yaml")
    levels = {a.spec.defense_level: a.cfg.defense for a in expand_arms(cfg) if a.spec.rule in ("", "fedavg")}
    assert {k: (d.name, d.level) for k, d in levels.items()} == {
        0: ("none", 2), 1: ("posthoc_sft", 1), 2: ("posthoc_sft", 2), 3: ("posthoc_sft", 3)}
    assert levels[1].dataset == cfg.defense.dataset == "sharegpt_defense"
    assert levels[2].synthesis == levels[3].synthesis == cfg.defense.synthesis


def test_a_config_without_arms_is_one_arm_or_two_with_a_defense(tmp_path):
    plain = expand_arms(load_config(SMOKE), tmp_path)
    assert [(a.spec.name, a.fed_dir, a.dir) for a in plain] == [("fedavg", tmp_path, tmp_path / "arms" / "fedavg")]
    defended = expand_arms(load_config(SMOKE, ["defense.name=posthoc_sft", "defense.level=3"]), tmp_path)
    assert [a.spec.defense_level for a in defended] == [0, 3] and defended[0].federation == defended[1].federation
    assert defended[1].dir == tmp_path / "arms" / "fedavg-posthoc-sft-level-3"


@pytest.mark.parametrize("arm, message", [
    ("{name: bad, rule: krum, defense_level: 0}", "arms[bad]"),  # Krum needs n >= 2f + 3: 3 clients cannot
    ("{name: bad, defense_level: 4}", "defense_level"),
    ("{name: '', rule: fedavg}", "needs a name"),
])
def test_bad_arms_fail_with_the_arm_named(arm, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand_arms(load_config(SMOKE, [f"arms=[{arm}]"]))


def test_the_notes_name_the_evaluation_prompts():
    safety = {"rule": 80.0, "num_prompts": 100, "judge": "rule (fixed keywords)"}
    note = lambda extra: judges_note({"arms": {"a": {"evaluation": {"safety": {**safety, **extra}}}}})  # noqa: E731
    assert "on 100 AdvBench prompts" in note({})  # written before the field: the evaluation set then
    assert "on 100 AdvBench prompts" in note({"prompts": {"source": "advbench", "args": {}}})
    heldout = {"source": "harmful_seeds", "args": {"part": "heldout"}}
    assert "on 100 harmful_seeds (part=heldout) prompts" in note({"prompts": heldout})


def test_paper_rows_and_table():
    arm = {"num_malicious": 3, "attacked": True, "rule": "fedavg", "defense_level": 0, "defense": "none", "federation": "f",
           "evaluation": {"safety": {"rule": 12.5}, "over_refusal": {"rate": 5.0}}}
    assert paper_row(arm) == "FedAvg, attacked"
    assert paper_row({**arm, "defense_level": 2, "defense": "posthoc_sft"}) == "Level 2"
    assert paper_row({**arm, "rule": "krum", "defense_level": 2, "defense": "posthoc_sft"}) is None  # Table 3 has no per-rule Rule figure
    assert paper_row({**arm, "num_malicious": 0, "attacked": False}) == "FedAvg, no attack"
    assert paper_row({**arm, "attack": "backdoor"}) is None  # no attack of the paper's: no row of its tables
    assert paper_row({**arm, "lora": {"mode": "factors", "ranks": {}}}) == "FedAvg, attacked"
    assert paper_row({**arm, "lora": {"mode": "exact", "ranks": {}}}) is None  # the paper averages factors
    assert paper_row({**arm, "lora": {"mode": "factors", "ranks": {"benign": 4}}}) is None
    table = matrix_table({"arms": {"FedAvg": arm}})
    assert "| FedAvg | 12.50 | 5.00 | 49.81 | 25.96 | 4.14 |" in table and "paper Rule (Table 1)" in table
    # MaliciousGen attack data: the paper's Table 2, also for the no-attack row
    gen = {**arm, "attack": "maliciousgen", "summary": {"rule": {"mean": 12.5, "ci95": [10.0, 15.0]}}}
    clean = {**gen, "num_malicious": 0, "attacked": False}
    table = matrix_table({"arms": {"FedAvg": gen, "clean": clean, "L3": {**gen, "defense_level": 3, "defense": "posthoc_sft"}}})
    assert "paper Rule (Table 2)" in table and "| FedAvg | 12.50 [10.00, 15.00] | 43.27 | 11.35 | 4.19 |" in table
    assert "| clean | 12.50 [10.00, 15.00] | 82.88 | 66.15 | 4.19 |" in table
    assert "| L3 | 12.50 [10.00, 15.00] | 75.96 | 72.69 | 3.89 |" in table
    # data_poisoning of data MaliciousGen wrote (attack_params.data): Table 2 too; with a trigger, a backdoor: no row
    naive = {**arm, "attack": "data_poisoning", "attack_params": {"data": {"instructions": "seeds"}}}
    assert "| FedAvg | 12.50 | 5.00 | 43.27 | 11.35 | 4.19 |" in matrix_table({"arms": {"FedAvg": naive}})
    assert paper_row({**naive, "attack_params": {"data": {"instructions": "seeds", "trigger": "cf"}}}) is None


def test_timing_table_lists_each_arm_seeds_phases_and_evaluation_parts():
    run = {"seed": 1, "seconds": 700.4, "phases": {"setup": 2.0, "rounds": 400.0, "defense": 0.0, "evaluation": 298.0},
           "evaluation_seconds": {"harmful_answers": 150.2, "benign_answers": 40.0, "response_loss": 45.0}}
    table = timing_table({"arms": {"FedAvg": {"runs": [run, {**run, "phases": {}}]}}})
    assert "| arm (seed) | setup | rounds | defense | evaluation | harmful answers | benign answers | response loss " \
           "| total |" in table
    assert "| FedAvg (1) | 2 | 400 | 0 | 298 | 150 | 40 | 45 | 700 |" in table and table.count("| FedAvg") == 1
    assert timing_table({"arms": {"FedAvg": {"runs": [{**run, "phases": {}}]}}}) == ""  # results from before


def test_mean_weights_are_relative_to_an_equal_share():
    rounds = [{"clients": [0, 1, 2], "weights": [0.5, 0.5, 0.0]}, {"clients": [0, 2, 3], "weights": [1 / 3] * 3}]
    w = mean_weights(rounds, 5, 3)
    assert w[0] == pytest.approx(1.25) and w[1] == pytest.approx(1.5) and w[2] == pytest.approx(0.5)
    assert w[3] == pytest.approx(1.0) and w[4] is None
    assert mean_weights([{"clients": [0, 1], "weights": [1.0, 1.0]}], 2, 2) == [1.0, 1.0]  # FoolsGold-style


@pytest.mark.integration
def test_matrix_runs_each_federation_once_and_reuses_finished_arms(ray_cluster, smoke_cfg):
    cfg = smoke_cfg(*ARMS, "federation.num_rounds=2", "evaluation.every_n_rounds=1", "evaluation.round_num_prompts=8",
                    "evaluation.client_similarity=true", "evaluation.num_prompts=16", "evaluation.num_benign=8",
                    "seeds=[0, 1]")
    run_dir = create_run_dir(cfg)
    results = run_experiment(cfg, run_dir)
    assert results["computed"] == [f"{a.name} (seed {s})" for s in (0, 1) for a in cfg.arms]
    arms = results["arms"]
    # seeds: every arm ran twice, in its own folders, with its own clients each round
    for arm in arms.values():
        assert [r["seed"] for r in arm["runs"]] == [0, 1] and len({r["dir"] for r in arm["runs"]}) == 2
        assert len(arm["per_seed"]["rule"]) == 2 and arm["summary"]["rule"]["n_seeds"] == 2
        assert arm["summary"]["rule"]["n_prompts"] == 16 and len(arm["summary"]["rule"]["ci95"]) == 2
    sampled = [[json.loads(line)["sampled"] for line in open(Path(r["federation_dir"]) / "metrics.jsonl")]
               for r in arms["FedAvg"]["runs"]]
    assert sampled[0] != sampled[1]
    # paired tests against each arm's reference, Holm-corrected
    assert arms["FedAvg"]["paired"]["rule"]["reference"] == "no attack"
    assert arms["Median"]["paired"]["rule"]["reference"] == "FedAvg"
    assert arms["Median + Level 1"]["paired"]["rule"]["reference"] == "Median"
    assert all(t["p_holm"] >= t["p"] for a in arms.values() for t in a.get("paired", {}).values())
    assert "no attack" not in [n for n, a in arms.items() if "paired" in a]
    assert results["calibration"]["judges"]["classifier"]["objective"]["n"] == 395
    assert {c["claim"] for c in results["analysis"]["claims"]["rule"]} == {1, 2, 3, 4}
    assert arms["FedAvg + Level 1"]["federation"] == arms["FedAvg"]["federation"]
    assert arms["FedAvg + Level 1"]["data"]["defense_examples"] == 32
    fed = cfg.output.root + f"/cache/federations/{arms['FedAvg']['federation']}"
    rounds = [json.loads(line) for line in open(f"{fed}/metrics.jsonl")]
    assert [r["round"] for r in rounds] == [0, 1]  # trained once although two arms use it
    assert all(r["evaluation"]["safety"]["num_prompts"] == 8 for r in rounds)
    clients = json.loads(open(f"{fed}/clients.json").read())
    assert clients["roles"][7:] == ["malicious"] * 3 and len(clients["cosine"]) == len(clients["clients"])
    # the defense moved the adapter: the defended arm's answers differ from FedAvg's
    assert arms["FedAvg + Level 1"]["evaluation"] != arms["FedAvg"]["evaluation"]
    report = (run_dir / "report.md").read_text()
    assert "| FedAvg | " in report and "49.81" in report
    assert "## Paired tests" in report and "## The paper's four claims" in report and "| classifier |" in report
    assert "- Decoding: sampling at temperature 0.7, top-p 1, one sample per prompt" in report
    for plot in ("safety_by_arm", "safety_per_round", "client_similarity", "aggregation_weights"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()

    # every arm's final adapter is a PEFT folder beside its result; the defense changed it
    assert all((Path(a["adapter"]) / "adapter_model.safetensors").is_file() for a in arms.values())
    assert adapter_digest(arms["FedAvg + Level 1"]["adapter"]) != adapter_digest(arms["FedAvg"]["adapter"])

    again = run_experiment(cfg, create_run_dir(cfg))
    assert again["computed"] == [] and again["arms"] == results["arms"]


def test_paper_gpu_config_plans_the_papers_setting(capsys):
    import launch
    from fedsafe.cluster.plan import make_plan

    cfg = load_config(ROOT / "configs" / "paper_gpu.yaml")
    assert (cfg.federation.num_rounds, cfg.lora.r, cfg.train.batch_size, cfg.train.max_length) == (100, 32, 16, 512)
    assert (cfg.evaluation.num_prompts, cfg.evaluation.llm_judge) == (520, "md_judge")
    assert (cfg.model.quantization, cfg.defense.schedule, cfg.defense.rounds) == ("int8", "rounds", 50)
    plan = make_plan(cfg, {"CPU": 64.0, "GPU": 8.0})  # one node with 8 GPUs
    # four models in the pool (base, off-the-shelf generator, MD-Judge, reward model), one GPU each; trainers
    # on the rest
    assert (plan.generators.count, plan.generators.num_gpus) == (4, 1.0)
    assert (plan.trainers.count, plan.trainers.num_gpus) == (3, 1.0)
    # the matrix's 8 federated runs side by side: trainers on every GPU left on one node; 3 each on 4 nodes
    assert make_plan(cfg, {"CPU": 64.0, "GPU": 8.0}, federations=8).trainers.count == 4
    four_nodes = make_plan(cfg, [{"CPU": 64.0, "GPU": 8.0}] * 4, federations=8)
    assert four_nodes.trainers.count == 24 and "up to 8 side by side" in four_nodes.describe()
    assert launch.main(["--config", str(ROOT / "configs" / "paper_gpu.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "matrix: 17 arms x 1 seed(s) [0] over 8 federated runs" in out and "Residual + Level 2" in out


@pytest.mark.integration
def test_federated_runs_side_by_side_give_the_results_of_one_after_another(ray_cluster, smoke_cfg, tmp_path, capsys):
    """Two seeds' federated runs (one client a round) on the fixture's two trainer groups: side by side in
    two threads, with every answer and adapter equal to the sequential run's."""
    import threading

    common = ("federation.num_rounds=2", "federation.clients_per_round=1", "evaluation.num_prompts=8",
              "evaluation.num_benign=8", "seeds=[0, 1]", "generation.cache=false")
    results, threads = {}, {}
    for mode, concurrent in (("sequential", 1), ("side_by_side", 0)):
        cfg = smoke_cfg(*common, f"cluster.concurrent_federations={concurrent}", f"output.root={tmp_path / mode}")
        names = threads[mode] = set()
        results[mode] = run_experiment(cfg, create_run_dir(cfg),
                                       on_round=lambda record, names=names: names.add(threading.current_thread().name))
    assert "2 federated runs, 2 side by side on 2 trainer groups" in capsys.readouterr().out
    assert threads["sequential"] == {"MainThread"} and len(threads["side_by_side"]) == 2
    one, both = results["sequential"]["arms"], results["side_by_side"]["arms"]
    assert one.keys() == both.keys()
    for name in one:
        for a, b in zip(one[name]["runs"], both[name]["runs"]):
            assert a["evaluation"] == b["evaluation"]
            assert adapter_digest(Path(a["dir"]) / "adapter") == adapter_digest(Path(b["dir"]) / "adapter")


def test_a_defense_that_changes_the_rounds_gets_a_federated_run_of_its_own(monkeypatch):
    from fedsafe.defense.posthoc import PosthocSFT

    arms = expand_arms(load_config(SMOKE, ARMS))
    assert arms[3].federation == arms[1].federation  # the post-hoc defense acts after the last round only
    monkeypatch.setattr(PosthocSFT, "round_key", lambda self: {"posthoc_sft": "acts in the rounds"})
    again = expand_arms(load_config(SMOKE, ARMS))
    assert again[3].federation != again[1].federation and again[1].federation == arms[1].federation


def test_the_no_attack_arm_is_shared_by_the_papers_two_tables():
    """Table 1 and Table 2 differ only in the attackers' data; without attackers the federation is one."""
    by_config = [{a.spec.name: a for a in expand_arms(load_config(ROOT / "configs" / name))}
                 for name in ("paper_gpu.yaml", "paper_gpu_beavertails.yaml")]
    table2, table1 = by_config
    assert table1["FedAvg, no attack"].key == table2["FedAvg, no attack"].key
    assert table1["FedAvg, attacked"].federation != table2["FedAvg, attacked"].federation
    swapped = load_config(SMOKE, ["clients=[{name: m, role: malicious, count: 3, dataset: toy_malicious},"
                                  " {name: b, role: benign, count: 7, dataset: toy_benign}]"])
    no_attack = ArmConfig(name="no attack", attack=False)
    assert federation_key(arm_config(swapped, no_attack)) != federation_key(arm_config(load_config(SMOKE), no_attack))
