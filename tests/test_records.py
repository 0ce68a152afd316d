"""The typed records of a run (``fedsafe.records``): each round-trips its JSON key for key, an unknown key or
a newer schema is refused with one line, an older results file loads through ``upgrade``; records cross
process boundaries (pickle) unchanged."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from fedsafe.config import ConfigError
from fedsafe.records import ABSENT, SCHEMA, ArmResult, RoundRecord, RunResults, upgrade

ROUND = {"round": 2, "sampled": [1, 7, 8], "lr": 5e-5, "client_metrics": [{"client_id": 1, "loss": 2.5}],
         "seconds": 41.5, "trainer_groups": 2, "clients": [1, 7, 8], "weights": [1 / 3, 1 / 3, 1 / 3],
         "update_norms": [0.5, 0.75, 0.7], "aggregate_norm": 0.4, "global_norm": 1.25, "attacking": [7, 8],
         "kept_malicious": [], "malicious_share": None, "rejected": [{"client_id": 7, "reason": "norm"}]}
ARM = {"arm": {"name": "FedAvg, attacked"}, "seed": 0, "federation": "f1", "rule": "fedavg", "attack": "maliciousgen",
       "attack_params": {}, "num_malicious": 3, "attacked": True, "benign_clients": 7, "defense": "none",
       "defense_level": 0, "evaluation": {"safety": {"rule": 40.5}}, "federation_dir": "runs/cache/f1",
       "seconds": 300.0, "phases": {"rounds": 200.0}, "evaluation_seconds": {}}


def test_records_round_trip_key_for_key_and_hold_absent_fields_as_absent():
    record = RoundRecord.from_dict(ROUND)
    assert record.to_dict() == ROUND
    assert record.malicious_share is None and record.screening is ABSENT and not record.screening
    assert RoundRecord.from_dict({"round": 3, "recovered": "lost"}).to_dict() == {"round": 3, "recovered": "lost"}
    arm = ArmResult.from_dict(ARM)
    assert arm.to_dict() == ARM and arm.summary is ABSENT
    old = {k: v for k, v in ARM.items() if k not in ("defense", "attacked")}  # before composed defenses
    assert ArmResult.from_dict({**old, "defense_level": 2}).to_dict() == {**ARM, "defense_level": 2,
                                                                          "defense": "posthoc_sft"}
    assert ArmResult.from_dict({**old, "num_malicious": 0}).attacked is False
    results = {"schema": SCHEMA, "name": "quickstart", "arms": {"FedAvg, attacked": {**ARM, "runs": [{"seed": 0}]}},
               "seeds": [0], "analysis": {"claims": {}}}
    typed = RunResults.from_dict(results)
    assert isinstance(typed.arms["FedAvg, attacked"], ArmResult) and typed.to_dict() == results
    assert json.loads(typed.to_json(Path.cwd())) == results  # its folders relative to the working directory
    assert pickle.loads(pickle.dumps(typed)).to_dict() == results  # ABSENT survives a process boundary
    assert pickle.loads(pickle.dumps(ABSENT)) is ABSENT


def test_unknown_keys_missing_fields_and_newer_schemas_are_refused_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"round record has keys fedsafe does not know \(weight\)"):
        RoundRecord.from_dict({**ROUND, "weight": 1})
    with pytest.raises(ConfigError, match="lacks evaluation"):
        ArmResult.from_dict({k: v for k, v in ARM.items() if k != "evaluation"})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": SCHEMA + 1, "name": "x", "arms": {}}))
    with pytest.raises(ConfigError, match=f"has schema {SCHEMA + 1}; this fedsafe reads schemas 1 to {SCHEMA}"):
        RunResults.load(path)
    path.write_text(json.dumps({"name": "x", "arms": {"a": {**ARM, "colour": "red"}}}))
    with pytest.raises(ConfigError, match=r"arms\['a'\] has keys fedsafe does not know \(colour\)") as err:
        RunResults.load(path)
    assert "\n" not in str(err.value)
    path.write_text('{"name": ')
    with pytest.raises(ConfigError, match="is not a readable JSON file"):
        RunResults.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunResults.load(tmp_path / "none.json")


def test_an_older_results_file_loads_through_upgrade(tmp_path):
    older = {"name": "paper_cpu", "model": "m", "rounds": 5, "arms": {"a": ARM}}  # written before ``schema``
    assert upgrade(older)["schema"] == SCHEMA and "schema" not in older
    path = tmp_path / "results.json"
    path.write_text(json.dumps(older))
    loaded = RunResults.load(path)
    assert loaded.schema == SCHEMA and loaded.arms["a"].to_dict() == ARM and loaded.seeds is ABSENT


def test_the_folders_an_arm_names_are_relative_to_the_run_folder(tmp_path, monkeypatch):
    """Written relative to the run folder, read back as absolute paths from any working directory."""
    run_dir, arm_dir = tmp_path / "runs" / "r1", tmp_path / "runs" / "r1" / "arms" / "a-0"
    fed_dir = tmp_path / "runs" / "cache" / "federations" / "f1"
    arm = {**ARM, "federation_dir": str(fed_dir), "adapter": str(arm_dir / "adapter"),
           "runs": [{"seed": 0, "dir": str(arm_dir), "federation_dir": str(fed_dir)}]}
    run_dir.mkdir(parents=True)
    text = RunResults.from_dict({"schema": SCHEMA, "name": "r1", "arms": {"a": arm}}).to_json(run_dir)
    saved = json.loads(text)["arms"]["a"]
    assert saved["runs"][0] == {"seed": 0, "dir": "arms/a-0", "federation_dir": "../cache/federations/f1"}
    assert saved["adapter"] == "arms/a-0/adapter" and saved["federation_dir"] == "../cache/federations/f1"
    (run_dir / "results.json").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = RunResults.load(Path("..") / "runs" / "r1" / "results.json").arms["a"]
    assert loaded.runs[0]["dir"] == str(arm_dir.resolve()) and loaded.federation_dir == str(fed_dir.resolve())
