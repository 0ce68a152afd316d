"""Bad input never gets far: each case gives one line on stderr naming the field or file and the fix, exit
status 2, no traceback (``--debug`` shows it), no run folder and nothing in the repository, all before Ray
starts, and ``--dry-run`` runs the same checks. A run folder has one writer, and a resume trusts only what
it has checked: the config's digest, what the overrides change, the checkpoint and the metrics log it
continues from. (Interrupting a real run and resuming it: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import launch
from fedsafe.config import ConfigError
from tests.conftest import HOLD, ROOT, SMOKE

SECRET = "sk-live-0123456789abcdef"


def files(tmp_path) -> dict[str, str]:
    """Broken inputs on disk, by name."""
    made = {
        "corrupt.jsonl": '{"instruction": "a", "response": "b"}\n{"instruction": "c", "resp',
        "empty.jsonl": "",
        "nofield.jsonl": '{"prompt": "a", "response": "b"}\n',
        "binary.jsonl": None,
        "bad.yaml": "federation: [num_rounds: 3\n",
        "loop.yaml": "base: loop.yaml\n",
        "odd_heads/config.json": json.dumps({"model_type": "llama", "hidden_size": 48, "num_attention_heads": 1}),
        "number.json": "3",
        "mapping.json": json.dumps({"instruction": "a", "response": "b"}),
        "null.jsonl": '{"instruction": "a", "response": "b"}\n{"instruction": null, "response": "b"}\n',
        "few.jsonl": '{"instruction": "a", "response": "b"}\n' * 5,
        "list.yaml": "- federation\n- train\n",
        "scalar.yaml": "42\n",
        "twice.yaml": "federation: {num_rounds: 2}\ntrain: {lr: 1.0e-3}\nfederation: {num_rounds: 9}\n",
        "base_dir.yaml": "base: a_folder\n",
        "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
        "device_base.yaml": "base: /dev/zero\n",
        "big.yaml": "# padding\n" * 120_000,
        "env.yaml": f"base: {SMOKE}\nmodel: {{cache_dir: '${{oc.env:HOME}}/models'}}\n",
        "huge_record.jsonl": json.dumps({"instruction": "a" * 250_000, "response": "b"}) + "\n",
        "blank_instruction.jsonl": '{"instruction": "  ", "response": "b"}\n' * 3,
    }
    for name, text in made.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.write_bytes(b"\xff\xfe\x00\x81" * 8)
        else:
            path.write_text(text)
    for folder in ("no_config_model", "not_a_run", "a_folder", "data_folder.jsonl"):
        (tmp_path / folder).mkdir()
    os.mkfifo(tmp_path / "pipe.yaml")  # reading it would wait for a writer forever
    return {name: str(tmp_path / name) for name in [*made, "odd_heads", "no_config_model", "not_a_run", "a_folder",
                                                    "data_folder.jsonl", "pipe.yaml"]}


def jsonl(path: str) -> list[str]:
    return ["clients.1.dataset=jsonl", f"clients.1.dataset_args={{path: {path}}}"]


# (case id, arguments after the smoke config (or a full argv when it starts with "--"), what the line names)
CASES = [
    ("unknown rule", ["aggregation.rule=nope"], "aggregation.rule must be one of"),
    ("wrong type", ["federation.num_rounds=three"], "federation.num_rounds"),
    ("out of range", ["train.lr=-1"], "train.lr must be > 0"),
    ("unknown key", ["federation.rounds=3"], "federation.rounds"),
    ("krum with too few clients", ["aggregation.rule=krum"], "n >= 2f + 3"),
    ("rule needs root data", ["aggregation.rule=fltrust"], "set aggregation.root_dataset"),
    ("min_updates above clients per round", ["aggregation.min_updates=4"], "aggregation.min_updates (4)"),
    ("more clients per round than clients", ["federation.clients_per_round=11"], "federation.clients_per_round (11)"),
    ("zero stage without deepspeed", ["trainer.zero_stage=2"], "need trainer.engine=deepspeed"),
    ("fractional tensor parallel", ["generation.gpus_per_replica=1.5"], "generation.gpus_per_replica"),
    ("endpoint judge without url", ["evaluation.helpfulness_judge=endpoint"], "evaluation.helpfulness_endpoint"),
    ("api key pasted into the config", [f"evaluation.helpfulness_key_env={SECRET}"], "NAME of an environment variable"),
    ("negative retries", ["cluster.max_retries=-1"], "cluster.max_retries"),
    ("negative concurrent federations", ["cluster.concurrent_federations=-1"], "cluster.concurrent_federations"),
    ("unknown attack", ["attack.name=trojan"], "attack.name must be one of"),
    ("unknown attack parameter", ["attack.name=scale_update", "attack.params={size: 3}"],
     "attack.params for scale_update: got an unexpected keyword argument 'size'"),
    ("bad maliciousgen filter", ["attack.name=maliciousgen", "attack.params={filter: gpt}"],
     "attack.params.filter must be one of"),
    ("unknown defense", ["defense.name=unlearning"], "defense.name must be one of"),
    ("defense level out of range", ["defense.name=posthoc_sft", "defense.level=4"], "defense.level must be 1"),
    ("unknown defense synthesis key", ["defense.name=posthoc_sft", "defense.synthesis={filtr: rule}"],
     "defense.synthesis: unknown keys ['filtr']"),
    ("unknown composed defense", ["defense.name=screening+unlearning"], "or several joined by '+'"),
    ("unknown screening action", ["defense.name=screening", "defense.screening.action=ban"],
     "defense.screening.action must be one of"),
    ("projection threshold out of range", ["defense.name=projection", "defense.projection.threshold=1.5"],
     "defense.projection.threshold must be in [0, 1)"),
    ("post-hoc named in an arm's defenses", ["arms=[{name: a, defenses: posthoc_sft}]"], "set by defense_level"),
    ("override without value", ["federation.num_rounds"], "must look like key.sub=value"),
    ("no seeds", ["--config", str(SMOKE), "--seeds", "0"], "--seeds must be >= 1"),
    ("repeated seeds", ["seeds=[1, 1]"], "seeds must be distinct"),
    ("unknown sampling", ["federation.sampling=random"], "federation.sampling must be one of"),
    ("unknown aligned answers", ["clients.0.aligned_answers=llm"], "clients[benign].aligned_answers must be one of"),
    ("unknown rule judge", ["evaluation.rule_keywords=lower"], "evaluation.rule_keywords must be fixed"),
    ("config file missing", ["--config", "{tmp}/nope.yaml"], "nope.yaml does not exist"),
    ("config file not yaml", ["--config", "{bad.yaml}"], "is not valid YAML"),
    ("config base loops", ["--config", "{loop.yaml}"], "base chain loops"),
    ("resume folder without config", ["--resume", "{not_a_run}"], "--resume needs a run folder"),
    ("bad --nodes", ["--config", str(SMOKE), "--dry-run", "--nodes", "4x96GPU"], "is not COUNTxCPUS:GPUS"),
    ("data file missing", jsonl("{tmp}/missing.jsonl"), "clients[malicious].dataset: data file"),
    ("data file corrupt", jsonl("{corrupt.jsonl}"), "is not valid JSON lines"),
    ("data file not text", jsonl("{binary.jsonl}"), "is not UTF-8 text"),
    ("data file empty", jsonl("{empty.jsonl}"), "returned no records"),
    ("data file lacks the field", jsonl("{nofield.jsonl}"), "has no field 'instruction'"),
    ("evaluation prompts empty", ["evaluation.prompts=jsonl", "evaluation.prompts_args={path: {empty.jsonl}}"],
     "evaluation.prompts: data source"),
    ("unknown data source", ["clients.1.dataset=advbnech"], "clients[malicious].dataset: unknown data source"),
    ("unknown loader argument", ["clients.1.dataset_args={split: train}"],
     "clients[malicious].dataset: data source 'toy_malicious': got an unexpected keyword argument 'split'"),
    ("model folder missing", ["model.name=/nonexistent/model"],
     "model.name: model folder /nonexistent/model does not exist"),
    ("model folder without config", ["model.name={no_config_model}"], "holds no config.json"),
    ("unknown builtin model", ["model.name=builtin:tiny-gpt"], "is not a builtin model"),
    ("head size vLLM cannot run on CPUs", ["model.name={odd_heads}", "generation.backend=vllm"],
     "head size 48, which vLLM on CPUs cannot run"),
    # non-finite numbers and names that leave the run root
    ("infinite lr", ["train.lr=.inf"], "train.lr must be a finite number, got inf"),
    ("infinite server lr", ["aggregation.server_opt.lr=.inf"], "aggregation.server_opt.lr must be a finite number"),
    ("NaN rule parameter", ["aggregation.rule=norm_bound", "aggregation.params={max_norm: .nan}"],
     "aggregation.params.max_norm must be a finite number, got nan"),
    ("run name escapes the run root", ["output.name=../docs/leak"], "output.name must be one folder name"),
    ("absolute run name", ["output.name=/tmp/x"], "output.name must be one folder name"),
    # data files
    ("data file holds a number", jsonl("{number.json}"), "holds a int, not a list of records"),
    ("data file holds a mapping", jsonl("{mapping.json}"), "holds a dict, not a list of records"),
    ("data file is a folder", jsonl("{data_folder.jsonl}"), "is a folder"),
    ("data file has a null field", jsonl("{null.jsonl}"), "record 1 field 'instruction' is null"),
    ("fewer records than the clients need", jsonl("{few.jsonl}"),
     "holds 5 record(s) and the run needs 192 (clients[malicious].count=3 x federation.examples_per_client=64)"),
    ("more evaluation prompts than the source holds", ["evaluation.num_prompts=500"],
     "evaluation.prompts: data source 'toy_harmful_eval' holds 96 record(s) and the run needs 500"),
    ("more benign prompts than the source holds", ["evaluation.num_benign=41"],
     "holds 40 record(s) and the run needs 41 (evaluation.num_benign)"),
    ("no benign prompts asked for", ["evaluation.num_benign=0"], "evaluation.num_benign must be >= 1"),
    # sampling, seeds, sizes, signs
    ("top_p zero", ["evaluation.top_p=0"], "evaluation.top_p must be in (0, 1]"),
    ("top_p above one", ["evaluation.top_p=1.5"], "evaluation.top_p must be in (0, 1]"),
    ("attack top_p above one", ["attack.name=maliciousgen", "attack.params={top_p: 2}"],
     "attack.params.top_p must be in (0, 1]"),
    ("negative temperature for defense data", ["defense.name=posthoc_sft", "defense.level=2",
                                               "defense.synthesis={temperature: -1}"],
     "defense.synthesis.temperature must be >= 0"),
    ("negative seed", ["seed=-1"], "seed must be in [0,"),
    ("data seed below -1", ["data_seed=-2"], "data_seed must be in [0, 4294967295] (or -1"),
    ("max_length leaves no response token", ["train.max_length=30"], "train.max_length=30: no record of clients[benign]"),
    ("LoRA target the model lacks", ["lora.target_modules=[q_proj, qkv_proj]"],
     "lora.target_modules: ['qkv_proj'] are not modules of builtin:tiny-llama"),
    ("zero evaluation batch", ["evaluation.batch_size=0"], "evaluation.batch_size must be >= 1"),
    ("zero LoRA alpha", ["lora.alpha=0"], "lora.alpha must be >= 1"),
    ("negative defense batch", ["defense.batch_size=-4"], "defense.batch_size must be >= 1"),
    ("zero defense lr", ["defense.lr=0", "defense.min_lr=0"], "defense.lr must be > 0"),
    ("zero vLLM sequences", ["generation.max_num_seqs=0"], "generation.max_num_seqs must be >= 1"),
    # plans, config files, cluster, models
    ("--nodes without --dry-run", ["--config", str(SMOKE), "--nodes", "4x96:8"], "use it with --dry-run"),
    ("a million generation replicas", ["generation.replicas=1000000"],
     "the generation pool asks for 1e+06 CPUs"),
    ("a million replicas planned for a cluster", ["--config", str(SMOKE), "--dry-run", "--nodes", "2x16:0",
                                                  "generation.replicas=1000000"], "more than the cluster has"),
    ("config file is a folder", ["--config", "{a_folder}"], "is a folder; pass a YAML file"),
    ("config file holds a list", ["--config", "{list.yaml}"], "must hold a mapping of keys"),
    ("config file holds a scalar", ["--config", "{scalar.yaml}"], "must hold a mapping of keys"),
    ("config base is a folder", ["--config", "{base_dir.yaml}"], "a_folder is a folder"),
    ("config repeats a key", ["--config", "{twice.yaml}"], "key 'federation' appears twice"),
    ("cluster address that does not answer", ["cluster.address=127.0.0.1:9"], "does not answer"),
    ("cluster address that is not host:port", ["cluster.address=head-node"], "is not host:port"),
    ("hub model that cannot be fetched", ["model.name=no-such-org/no-such-model"],  # offline, or not on the hub
     "no-such-org/no-such-model"),
    ("int8 base on CPU trainers", ["model.quantization=int8"], "needs trainers on CUDA GPUs"),
    ("int8 base under deepspeed", ["model.quantization=int8", "trainer.gpus_per_client=1", "trainer.engine=deepspeed"],
     "trains with trainer.engine=torch"),
    # hostile: reads without bound, secrets, names that would break a table, values that fail late
    ("config of nested aliases", ["--config", "{bomb.yaml}"], "aliases expand to more than 100000 values"),
    ("override of nested aliases", ["federation={a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]" + "".join(
        f", {n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")) + "}"],
     "aliases expand to more than"),
    ("config file is a device", ["--config", "/dev/zero"], "/dev/zero is not a regular file"),
    ("config base is a device", ["--config", "{device_base.yaml}"], "/dev/zero is not a regular file"),
    ("config file of a megabyte", ["--config", "{big.yaml}"], "more than a config's 1048576"),
    ("config reads the environment", ["--config", "{env.yaml}"], "model.cache_dir: a config may not read environment"),
    ("override reads the environment", ["output.wandb.entity=${oc.env:HOME}"], "output.wandb.entity: a config may not"),
    ("override that is not YAML", ["train.lr=[1"], "override 'train.lr=[1' is not valid YAML"),
    ("seed past 64 bits", ["seed=18446744073709551617"], "seed must be in [0, 4294967295]"),
    ("seeds past 32 bits", ["seeds=[0, 4294967296]"], "seeds must be in [0, 4294967295]"),
    ("data seed past 32 bits", ["data_seed=99999999999"], "data_seed must be in [0, 4294967295]"),
    ("arm name with a table separator", ['arms=[{name: "FedAvg | Krum"}]'], "must not hold '|'"),
    ("arm name with a tab", ['arms=[{name: "a\\tb"}]'], "must not hold '\\t'"),
    ("arm name with a line break", ['arms=[{name: "a\\nb"}]'], "must not hold '\\n'"),
    ("arm name ending in a space", ['arms=[{name: "FedAvg "}]'], "must not start or end with a space"),
    ("arm names that differ only in case", ["arms=[{name: FedAvg}, {name: fedavg}]"], "unique (ignoring case)"),
    ("client group named with a separator", ['clients.0.name="benign|x"'], "clients[].name must not hold '|'"),
    ("data record of 250k characters", jsonl("{huge_record.jsonl}"), "line 1 holds 250"),
    ("data record with a blank instruction", jsonl("{blank_instruction.jsonl}"), "record 0 has an empty 'instruction'"),
    ("partition key no record has", ["federation.dirichlet_alpha=0.5", "federation.partition_key=topic"],
     "record(s) of clients[benign] have no such field"),
    ("endpoint judge without its key", ["evaluation.helpfulness_judge=endpoint", "evaluation.helpfulness_model=m",
                                        "evaluation.helpfulness_endpoint=http://127.0.0.1:9/v1",
                                        "evaluation.helpfulness_key_env=FEDSAFE_NO_SUCH_KEY"],
     "FEDSAFE_NO_SUCH_KEY, which is not set here"),
    ("LoRA rank beyond the layer", ["lora.r=4096"], "lora.r=4096 exceeds the size of"),
    ("YAML 1.1 octal", ["seed=010"], "'010' is a YAML 1.1 integer form"),
    ("YAML 1.1 boolean as a name", ["arms=[{name: no}]"], "'no' reads as a boolean in YAML 1.1"),
    ("a billion rounds", ["federation.num_rounds=1000000000"], "federation.num_rounds must be in [1, 100000]"),
    ("tracking URI of no store", ["output.mlflow.tracking_uri=ftp://host/x"], "'ftp' is not a scheme MLflow"),
    ("null where a value is needed", ["output.name=null"], "output.name must be given a value"),
    ("a list where a section goes", ["federation=[1, 2]"], "federation is a section: give its settings"),
    ("a client group past the list", ["clients.7.count=3"], "there is no client group 7 to change"),
    ("a word where a flag goes", ["evaluation.classifier_judge=maybe"], "must be true or false, got 'maybe'"),
    ("one name where a list goes", ["output.trackers=tensorboard"], "output.trackers must be a list"),
    ("a fraction where a seed goes", ["seed=1.5"], "seed must be a whole number, got 1.5"),
    ("a number where parameters go", ["attack.params=5"], "attack.params must be a mapping"),
    ("a number where a defense's settings go", ["defense.params={screening: 3}"],
     "defense.params.screening must be a mapping"),
    ("data file that is a device", jsonl("/dev/zero"), "data file /dev/zero is not a regular file"),
    ("config file that is a pipe", ["--config", "{pipe.yaml}"], "pipe.yaml is not a regular file"),
    ("--nodes given empty", ["--config", str(SMOKE), "--dry-run", "--nodes", ""], "is not COUNTxCPUS"),
    ("--nodes of a hundred million", ["--config", str(SMOKE), "--dry-run", "--nodes", "100000000x8:0"],
     "with 1 to 10000 nodes"),
    ("--nodes without a CPU", ["--config", str(SMOKE), "--dry-run", "--nodes", "2x0:0"], "of at least one CPU"),
    ("--nodes of NaN CPUs", ["--config", str(SMOKE), "--dry-run", "--nodes", "2xnan:0"], "is not COUNTxCPUS"),
    ("defense params for no defense", ["defense.params={screenign: {threshold: 0.1}}"],
     "defense.params.screenign: not a defense"),
]
if not torch.cuda.is_available():  # a local run cannot load 8 bits here (a plan is for other machines)
    CASES.append(("int8 base on a machine without CUDA", ["model.quantization=int8", "trainer.gpus_per_client=1"],
                  "loads the base model with bitsandbytes on a CUDA GPU"))


def argv_for(args: list[str], paths: dict[str, str], tmp_path, model_cache: str) -> list[str]:
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for name, path in paths.items():
        filled = [a.replace("{" + name + "}", path) for a in filled]
    if filled and filled[0].startswith("--"):
        return filled
    return ["--config", str(SMOKE), f"output.root={tmp_path}/runs", f"model.cache_dir={model_cache}", *filled]


# no --dry-run twin: a plan notes a hub it cannot reach (a cluster's machines may reach it)
RUN_ONLY = {"--nodes without --dry-run", "endpoint judge without its key", "resume folder without config", "no seeds", "hub model that cannot be fetched",
            "a million replicas planned for a cluster", "int8 base on a machine without CUDA"}
DRY_RUN_TOO = [(c[0] + " (--dry-run)", c[1] + ["--dry-run"], c[2]) for c in CASES if c[0] not in RUN_ONLY]


def repository_files() -> set[str]:
    """Paths git sees in the repository, untracked ones included (a run must add none)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True)
    return set(out.stdout.splitlines())


def assert_one_line_error(err: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES + DRY_RUN_TOO],
                         ids=[c[0] for c in CASES + DRY_RUN_TOO])
def test_bad_input_gives_one_line_and_exit_2(args, expected, tmp_path, capsys, model_cache):
    """Each case: one line on stderr naming the field or file, exit 2, before Ray starts,
    no run folder, nothing new in the repository; the same with --dry-run."""
    before = repository_files()
    argv = argv_for(args, files(tmp_path), tmp_path, model_cache)
    assert launch.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, expected)
    assert not (tmp_path / "runs").exists()  # no run folder for a run that cannot start
    assert repository_files() == before


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="aggregation.rule must be one of"):
        launch.main(["--config", str(SMOKE), "--debug", "aggregation.rule=nope"])




def made_run_dir(tmp_path):
    from fedsafe.config import load_config
    from fedsafe.run_dir import create_run_dir

    return create_run_dir(load_config(SMOKE, [f"output.root={tmp_path}"]))


def test_a_run_folder_whose_config_is_empty_or_edited_does_not_resume(tmp_path, capsys):
    run_dir = made_run_dir(tmp_path)
    config = run_dir / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("lr: 0.003", "lr: 0.03"))
    assert launch.main(["--resume", str(run_dir)]) == 2
    assert_one_line_error(capsys.readouterr().err, "config.yaml was changed after the run started")
    config.write_text("")
    assert launch.main(["--resume", str(run_dir)]) == 2
    assert_one_line_error(capsys.readouterr().err, "config.yaml is empty")
    (run_dir / "config.sha256").unlink()
    config.write_text(original)
    assert launch.main(["--resume", str(run_dir)]) == 2
    assert_one_line_error(capsys.readouterr().err, "has no config.sha256")
    assert run_dir.is_dir()  # a folder given to --resume is never removed


@pytest.mark.parametrize("override, expected", [
    ("train.lr=0.1", "--resume cannot change train.lr"),
    ("aggregation.rule=median", "--resume cannot change aggregation.rule"),
    ("federation.num_rounds=2", "may add rounds, not remove them"),
    ("federation.num_rounds=9", "is finished (it holds results.json)"),  # a finished run: more rounds, a new run
])
def test_resume_refuses_overrides_that_change_what_ran(override, expected, tmp_path, capsys):
    run_dir = made_run_dir(tmp_path)
    if "finished" in expected:
        (run_dir / "results.json").write_text("{}")
    before = (run_dir / "config.yaml").read_text()
    assert launch.main(["--resume", str(run_dir), override]) == 2
    assert_one_line_error(capsys.readouterr().err, expected)
    assert (run_dir / "config.yaml").read_text() == before and not (run_dir / "config_changes.jsonl").exists()


def test_a_safe_resume_change_is_written_back_and_recorded(tmp_path):
    from fedsafe.run_dir import resume_config

    run_dir = made_run_dir(tmp_path)
    cfg = resume_config(run_dir, ["federation.num_rounds=6", "cluster.max_retries=5"])
    assert cfg.federation.num_rounds == 6 and cfg.cluster.max_retries == 5
    (change,) = [json.loads(line) for line in (run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert change["changes"] == {"cluster.max_retries": [2, 5], "federation.num_rounds": [4, 6]}
    assert resume_config(run_dir).federation.num_rounds == 6  # the new config.yaml matches its new digest


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    import torch

    from fedsafe.checkpoint import ADAPTER_FILE, checkpoint_dir, save_checkpoint
    from fedsafe.experiment import resume_point
    from fedsafe.training.lora import AdapterSpec

    spec = AdapterSpec(names=("m.lora_A.weight",), shapes=((2, 3),))
    for r in range(3):
        save_checkpoint(tmp_path, r, torch.full((6,), float(r)), spec, {"r": 2}, keep=5)
    latest = checkpoint_dir(tmp_path, 2) / ADAPTER_FILE
    latest.write_bytes(latest.read_bytes()[:40])  # a write cut short
    assert resume_point(tmp_path) == (2, str(checkpoint_dir(tmp_path, 1)))
    assert f"checkpoint {checkpoint_dir(tmp_path, 2)} is damaged" in capsys.readouterr().out
    (checkpoint_dir(tmp_path, 1) / "state.json").write_text('{"round": ')
    assert resume_point(tmp_path) == (1, str(checkpoint_dir(tmp_path, 0)))


def test_a_torn_last_metrics_line_is_dropped_with_a_message(tmp_path, capsys):
    from fedsafe.run_dir import MetricsLog

    lines = [json.dumps({"round": 0, "seconds": 1.0}), json.dumps({"round": 1, "seconds": 2.0}), '{"round": 2, "sec']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    MetricsLog(tmp_path, 2)  # resume at round 2: rounds 0 and 1 are done
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]
    assert "line 3 is not a whole JSON record" in capsys.readouterr().out


def test_a_second_writer_of_a_run_folder_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    """The first writer holds the folder (as ``run_experiment`` does for the run folder and each cache
    entry); a resume of it is refused with the holder's PID; once the holder is killed the folder is free."""
    from fedsafe.run_dir import single_writer

    run_dir = made_run_dir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"  # waits for the event, not for time
        assert launch.main(["--resume", str(run_dir)]) == 2
        assert_one_line_error(capsys.readouterr().err, f"is being written by another fedsafe process (PID {holder.pid}")
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            with single_writer(tmp_path / "cache" / "arms" / "x"), single_writer(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with single_writer(run_dir), single_writer(run_dir):  # free again, and re-entrant in one process
        assert json.loads((run_dir / ".writer.json").read_text())["pid"] != holder.pid
    assert not (run_dir / ".writer.json").exists()


def test_a_ray_address_from_the_environment_is_named_as_such(tmp_path, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert launch.main(argv_for(["--dry-run"], {}, tmp_path, model_cache)) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "the environment variable RAY_ADDRESS '127.0.0.1:9' does not answer")
    assert "unset RAY_ADDRESS for a local Ray" in err and "cluster.address" not in err


def test_a_memory_kill_by_ray_ends_with_one_readable_line_and_the_resume_command(tmp_path, capsys, model_cache,
                                                                                  monkeypatch):
    """Ray's memory monitor kills a worker (here its error, raised where the run would meet it): one line
    naming what was killed, where, how full the memory was and what to change, then the --resume command."""
    from ray.exceptions import OutOfMemoryError

    from fedsafe.api import RunLifecycle
    from fedsafe.run_dir import create_run_dir

    message = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.5, ID: 8c5a) "
               "where the task (actor ID: f9cc, name=Trainer.__init__, pid=4331, memory used=2.22GB) was running was "
               "22.80GB / 24.00GB (0.95), which exceeds the memory usage threshold of 0.95. Ray killed this worker "
               "(ID: d98a) because it was the most recently scheduled task; " + "Top 10 memory users: ... " * 100)

    def execute(self):
        self.run_dir = create_run_dir(self.cfg)
        (self.run_dir / "metrics.jsonl").write_text("{}\n")  # a round ran: the folder is kept for --resume
        try:
            raise OutOfMemoryError(message)
        except OutOfMemoryError as err:
            raise RuntimeError("client 3 failed on every trainer") from err

    monkeypatch.setattr(RunLifecycle, "execute", execute)
    assert launch.main(argv_for([], {}, tmp_path, model_cache)) == 2
    err = capsys.readouterr().err
    (run_dir,) = (tmp_path / "runs").glob("smoke-*")
    assert_one_line_error(err, "Ray's memory monitor killed Trainer.__init__ on 10.0.0.5: the machine's memory ran "
                               "short (22.80GB / 24.00GB in use); free memory")
    assert err.strip().endswith(f"continue with: python launch.py --resume {run_dir}") and len(err) < 400
