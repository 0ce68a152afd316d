"""The ``fedsafe`` command and the Python API without a run: every command's help with its examples, bad input
as one line and exit 2, ``fedsafe compare`` on run folders with known verdicts, the result table as a
DataFrame, the trackers' bookkeeping. A whole run through them: tests/test_api.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsafe import analysis, api, tracking
from fedsafe.cli import main
from fedsafe.config import ConfigError, from_yaml_text, load_config
from fedsafe.run_dir import write_responses
from tests.conftest import HOLD, ROOT, SMOKE


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- the command line ---------------------------------------------------------------------------------------

def test_the_console_script_is_installed_and_lists_its_commands():
    script = Path(sys.executable).with_name("fedsafe")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for command in ("run", "report", "compare", "calibrate"):
        assert f"  {command} " in out.stdout and f"fedsafe {command} " in out.stdout  # listed, and an example


@pytest.mark.parametrize("command, example", [
    ("run", "fedsafe run --config configs/smoke.yaml --dry-run"),
    ("report", "fedsafe report runs/"),
    ("compare", "fedsafe compare runs/"),
    ("calibrate", "fedsafe calibrate > calibration.md"),
])
def test_each_command_help_shows_an_example(command, example, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: fedsafe {command}" in out and "Examples:" in out and example in out


def test_launch_py_is_fedsafe_run_under_its_own_name(capsys):
    import launch

    assert launch.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: python launch.py [OPTIONS] [KEY=VALUE]..." in out and "--resume RUN_DIR" in out


def test_fedsafe_alone_prints_its_help(capsys):
    assert main([]) == 0
    assert "Commands:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["nope"], "No such command 'nope'"),
    (["run", "--bogus"], "No such option '--bogus'"),
    (["run", "--config", "x.yaml", "--resume", "runs/x"], "pass either --config or --resume"),
    (["run", "--seeds", "many"], "'many' is not a valid integer"),
    (["report"], "Missing argument 'RUN_DIR'"),
    (["report", "{tmp}"], "is not a fedsafe run folder (it holds no config.yaml"),
    (["compare", "{tmp}/missing"], "is not a fedsafe run folder"),
    (["compare", "{run}"], "holds no results.json: not a finished fedsafe run folder"),
    (["calibrate", "--rule-keywords", "paper"], "No such option '--rule-keywords'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    argv = [a.format(tmp=tmp_path, run=tmp_path / "run") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in one_error_line(err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "run"]  # nothing written


def test_a_run_folder_being_written_is_not_rebuilt(tmp_path, capsys):
    from fedsafe.run_dir import create_run_dir, single_writer

    run_dir = create_run_dir(load_config(SMOKE, [f"output.root={tmp_path}"]))
    held = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "holding"  # waits for the event, not for time
        assert main(["report", str(run_dir)]) == 2
        assert "is being written by another fedsafe process" in one_error_line(capsys.readouterr().err)
        assert not (run_dir / "report.html").exists()
    finally:
        held.kill()
        held.wait()
    with single_writer(run_dir):
        pass


# --- fedsafe compare ----------------------------------------------------------------------------------------

def finished_run(folder: Path, arms: dict[str, list[list[int]]]) -> Path:
    """A run folder as ``fedsafe run`` leaves it, for ``compare``: config.yaml and results.json, whose arms
    (name -> per-seed 0/1 Rule verdicts on prompts p0..pN) point to their verdict files, analysed."""
    results = {"name": folder.name, "model": "builtin:tiny-llama", "rounds": 2, "seeds": [0], "arms": {}}
    for name, seeds in arms.items():
        runs = []
        for seed, verdicts in enumerate(seeds):
            arm_dir = folder / "arms" / f"{name}-{seed}"
            write_responses(arm_dir, "final", [f"p{i}" for i in range(len(verdicts))], ["answer"] * len(verdicts),
                            {"rule": [bool(v) for v in verdicts]})
            runs.append({"seed": seed, "dir": str(arm_dir),
                         "evaluation": {"safety": {"rule": 100.0 * sum(verdicts) / len(verdicts)}}})
        results["arms"][name] = {"rule": "fedavg", "num_malicious": 3, "attacked": True, "defense": "none",
                                 "defense_level": 0, "federation": name,
                                 "attack": "data_poisoning", "evaluation": runs[0]["evaluation"], "runs": runs}
    results["arms"], results["analysis"] = analysis.analyse(results["arms"])
    (folder / "config.yaml").write_text("seed: 0\n")
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_pairs_arms_of_the_same_name_on_common_prompts(tmp_path, capsys):
    safe, unsafe = [1] * 90 + [0] * 10, [1] * 30 + [0] * 70
    a = finished_run(tmp_path / "a", {"fedavg": [safe, safe], "other": [safe]})
    b = finished_run(tmp_path / "b", {"fedavg": [unsafe, unsafe], "other": [[1] * 5]})  # "other": 5 prompts of 100
    c = finished_run(tmp_path / "c", {"fedavg": [safe, safe]})
    assert main(["compare", str(a), str(b), str(c), "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "t.md").read_text() == out
    rows = {tuple(cells[1:3]): cells for line in out.splitlines() if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.split("|")]]}
    assert "Rule safety (%) vs a: effect [95% CI], p (Holm), seeds" in rows[("run", "arm")]
    assert rows[("a", "fedavg")][4:6] == ["90.00 [90.00, 90.00]", "-"]  # the baseline: no test against itself
    effect = rows[("b", "fedavg")][5]
    assert effect.startswith("-60.00 [") and effect.endswith(", 2")  # 2 seeds of 100 prompts, paired over seeds
    p, p_holm = (float(x) for x in effect.split("p ")[1].split(",")[0].replace("(", "").replace(")", "").split())
    assert p < 0.05 and p <= p_holm  # two runs: a t with 1 degree of freedom, not 200 pooled pairs
    # "other" in b answered 5 of a's 100 prompts, as a did: its mean differs (100 vs 90), its paired effect not
    assert rows[("b", "other")][4].startswith("100.00") and rows[("a", "other")][4].startswith("90.00")
    assert rows[("b", "other")][5] == "+0.00 [+0.00, +0.00], p 1 (1), 1 (within this run)"
    assert rows[("c", "fedavg")][5].startswith("+0.00 [+0.00, +0.00], p 1 (1)")


def test_compare_says_when_runs_share_no_prompts(tmp_path):
    a = finished_run(tmp_path / "a", {"fedavg": [[1, 0, 1]]})
    b = finished_run(tmp_path / "b", {"fedavg": [[1, 1, 1]]})
    runs = {"a": json.loads((a / "results.json").read_text()), "b": json.loads((b / "results.json").read_text())}
    runs["b"]["arms"]["fedavg"]["runs"][0]["seed"] = 7  # another seed: nothing to pair with
    (row_a, row_b) = analysis.compare_runs(runs)
    assert row_a["paired"] == {} and row_b["paired"] == {} and row_b["note"] == "no seed and prompts in common with a"


# --- the Python API -----------------------------------------------------------------------------------------

def test_overrides_from_a_dict_or_a_list():
    assert api.override_list({"federation.num_rounds": 2, "output.trackers": ["tensorboard", "mlflow"],
                              "output.name": "a b"}) == [
        "federation.num_rounds=2", 'output.trackers=["tensorboard", "mlflow"]', 'output.name="a b"']
    assert api.override_list(["train.lr=0.1"]) == ["train.lr=0.1"] and api.override_list(None) == []
    with pytest.raises(ConfigError, match="a list of key=value strings or a dict"):
        api.override_list("train.lr=0.1")


def test_a_config_from_a_path_a_dict_or_an_object_is_the_same():
    overrides = {"federation.num_rounds": 3, "output.trackers": ["wandb"]}
    from_path = api.resolve_config(SMOKE, overrides)
    assert from_path.federation.num_rounds == 3 and from_path.output.trackers == ["wandb"]
    import yaml

    assert api.resolve_config(yaml.safe_load(SMOKE.read_text()), overrides) == from_path
    assert api.resolve_config(load_config(SMOKE), overrides) == from_path
    with pytest.raises(ConfigError, match="config must be a YAML path, a dict or an ExperimentConfig"):
        api.resolve_config(42)
    with pytest.raises(ConfigError, match="output.trackers"):
        api.resolve_config(SMOKE, {"output.trackers": ["neptune"]})


def test_load_gives_the_table_as_a_dataframe(tmp_path):
    run = finished_run(tmp_path / "a", {"fedavg": [[1, 1, 0, 1]], "fedavg + L2": [[1, 1, 1, 1]]})
    res = api.load(run)
    table = res.table
    assert list(table.index) == ["fedavg", "fedavg + L2"]
    assert table.loc["fedavg", "aggregation"] == "fedavg" and table.loc["fedavg", "rule"] == 75.0
    assert table.loc["fedavg", "rule_n_prompts"] == 4 and table.loc["fedavg", "seeds"] == 1
    assert table.loc["fedavg", "rule_low"] <= 75.0 <= table.loc["fedavg", "rule_high"]
    assert "<table" in res._repr_html_() and res.report == run / "report.html"
    with pytest.raises(ConfigError, match="holds no results.json"):
        api.load(tmp_path)


def test_fedsafe_run_and_load_are_imported_on_first_use():
    code = "import sys, fedsafe; assert 'fedsafe.api' not in sys.modules; fedsafe.load; print('fedsafe.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.stdout.strip() == "True", out.stderr


# --- trackers -----------------------------------------------------------------------------------------------

def test_an_older_run_folders_tensorboard_flag_becomes_the_tracker_list():
    assert from_yaml_text("output:\n  tensorboard: false\n").output.trackers == []
    assert from_yaml_text("output:\n  tensorboard: true\n").output.trackers == ["tensorboard"]


def test_a_missing_tracker_package_is_named_before_the_run(monkeypatch):
    from fedsafe.preflight import check_trackers

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    cfg = load_config(SMOKE, ["output.trackers=[tensorboard,wandb]"])
    with pytest.raises(ConfigError, match=r"output.trackers needs wandb, which is not installed: pip install wandb "
                                          r"\(or pip install -e '.\[trackers\]'\)"):
        check_trackers(cfg, None)
    notes: list[str] = []
    check_trackers(cfg, notes)  # --dry-run: a note
    assert len(notes) == 1 and "pip install wandb" in notes[0]


def test_series_names_keep_only_characters_every_tracker_takes():
    assert tracking.series_name("fedavg + Level 2 (posthoc)", 3) == "fedavg_Level_2_posthoc/seed3"


def test_round_scalars_are_the_loss_seconds_and_safety_of_the_round():
    record = {"round": 4, "seconds": 2.5, "client_metrics": [{"loss": 1.0}, {"loss": 2.0}],
              "evaluation": {"safety": {"rule": 40.0, "classifier": {"safe": 55.0}}}}
    assert tracking.round_scalars(record) == {"round/seconds": 2.5, "train/loss": 1.5, "safety/rule": 40.0,
                                              "safety/classifier": 55.0}
    assert tracking.round_scalars({"round": 0}) == {"round/seconds": 0.0}


def test_each_round_reaches_tensorboard_once_also_after_a_restart(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(SMOKE, ["output.trackers=[tensorboard]"])
    records = [{"round": r, "seconds": 1.0, "client_metrics": [{"loss": 3.0 - r}]} for r in range(3)]
    first = tracking.Trackers(cfg.output.trackers, tmp_path, "run", {}, cfg.output)
    for record in records[:2] + records[:2]:  # each round twice
        first.log_round("fedavg/seed0", record)
    first.close()
    resumed = tracking.Trackers(cfg.output.trackers, tmp_path, "run", {}, cfg.output)  # a resumed run
    for record in records:
        resumed.log_round("fedavg/seed0", record)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("fedavg/seed0/train/loss")] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert json.loads((tmp_path / "trackers.json").read_text())["logged"] == {"fedavg/seed0": [0, 1, 2]}


def test_compare_never_writes_over_its_inputs_and_a_report_without_its_verdicts_keeps_its_analysis(tmp_path, capsys):
    a = finished_run(tmp_path / "a", {"fedavg": [[1, 0, 1]]})
    b = finished_run(tmp_path / "b", {"fedavg": [[1, 1, 1]]})
    before = (a / "results.json").read_text()
    cases = [(["compare", str(a), str(b), "--markdown", str(a / "results.json")], "lies inside a run folder"),
             (["compare", str(a), str(b), "--markdown", str(tmp_path / "no" / "t.md")], "does not exist; make it"),
             (["compare", str(a), str(b / ".." / "a")], "given twice")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    shutil.rmtree(a / "arms")  # the per-prompt verdicts are gone
    assert main(["report", str(a)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeps the analysis it has" in err
    assert (a / "results.json").read_text() == before
