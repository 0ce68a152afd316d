"""The command line (``launch.py``): bad input never gets far (each case gives one line on stderr naming
the field or file and the fix, exit status 2, no traceback; ``--debug`` shows it; all before Ray starts),
``--dry-run`` starts nothing, and a whole run from the command line keeps an API key out of every file."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

import launch
from fedsafe.config import ConfigError
from tests.conftest import ROOT, SMOKE, arm

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
    }
    for name, text in made.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.write_bytes(b"\xff\xfe\x00\x81" * 8)
        else:
            path.write_text(text)
    (tmp_path / "no_config_model").mkdir()
    (tmp_path / "not_a_run").mkdir()
    return {name: str(tmp_path / name) for name in [*made, "odd_heads", "no_config_model", "not_a_run"]}


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
    ("unknown attack", ["attack.name=backdoor"], "attack.name must be one of"),
    ("unknown attack parameter", ["attack.name=scale_update", "attack.params={size: 3}"],
     "attack.params for scale_update: got an unexpected keyword argument 'size'"),
    ("bad maliciousgen filter", ["attack.name=maliciousgen", "attack.params={filter: gpt}"],
     "attack.params.filter must be one of"),
    ("unknown defense", ["defense.name=unlearning"], "defense.name must be one of"),
    ("defense level out of range", ["defense.name=posthoc_sft", "defense.level=4"], "defense.level must be 1"),
    ("unknown defense synthesis key", ["defense.name=posthoc_sft", "defense.synthesis={filtr: rule}"],
     "defense.synthesis: unknown keys ['filtr']"),
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
]


def argv_for(args: list[str], paths: dict[str, str], tmp_path) -> list[str]:
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for name, path in paths.items():
        filled = [a.replace("{" + name + "}", path) for a in filled]
    if filled and filled[0].startswith("--"):
        return filled
    return ["--config", str(SMOKE), f"output.root={tmp_path}/runs", *filled]


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(args, expected, tmp_path, capsys):
    argv = argv_for(args, files(tmp_path), tmp_path)
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err and SECRET not in err
    assert not (tmp_path / "runs").exists()  # no run folder for a run that cannot start


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="aggregation.rule must be one of"):
        launch.main(["--config", str(SMOKE), "--debug", "aggregation.rule=nope"])


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


class FakeJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that grades every answer 7 and remembers the Authorization headers."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        FakeJudge.seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "fake-judge",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "Rating: [[7]]"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_dry_run_prints_config_and_plan_without_starting_ray():
    out = run_cli("--config", str(SMOKE), "--dry-run", "federation.num_rounds=9", "cluster.num_cpus=2")
    assert out.returncode == 0, out.stderr
    assert "num_rounds: 9" in out.stdout
    assert "trainer: 2 group(s) of 1 actor(s) x 1 CPU" in out.stdout and "10 virtual, 3 per round" in out.stdout
    assert "ray" not in out.stderr.lower()


def test_dry_run_with_seeds_lists_every_arm_per_seed():
    out = run_cli("--config", str(SMOKE), "--dry-run", "--seeds", "3")
    assert out.returncode == 0, out.stderr
    assert "seeds:\n- 0\n- 1\n- 2" in out.stdout and "1 arms x 3 seed(s) [0, 1, 2] over 3 federated runs" in out.stdout


def test_cli_config_errors_exit_2_with_one_line():
    out = run_cli("--config", str(SMOKE), "aggregation.rule=nope")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        out.stderr.strip().splitlines()[0]] and "aggregation.rule must be one of" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.integration
def test_cli_run_starts_its_own_local_ray_and_keeps_the_api_key_out_of_files_and_logs(model_cache, tmp_path):
    """A whole run from the command line, graded by an external judge whose API key is in the environment:
    the judge receives the key; neither the run folder, the output nor Ray's logs hold it."""
    secret = f"sk-test-{uuid.uuid4().hex}"
    judge = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    ray_logs_before = set(Path("/tmp/ray").glob("session_*"))
    out = run_cli("--config", str(SMOKE), f"model.cache_dir={model_cache}", f"output.root={tmp_path}",
                  "federation.num_rounds=1", "evaluation.num_prompts=8", "evaluation.num_benign=4",
                  "evaluation.helpfulness_judge=endpoint", "evaluation.helpfulness_model=fake-judge",
                  f"evaluation.helpfulness_endpoint=http://127.0.0.1:{judge.server_address[1]}/v1",
                  "evaluation.helpfulness_key_env=FEDSAFE_TEST_JUDGE_KEY",
                  env={**os.environ, "FEDSAFE_TEST_JUDGE_KEY": secret})
    judge.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| fedavg |" in out.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "cache"]  # cache/: the generation cache
    evaluation = arm(json.loads((run_dir / "results.json").read_text()))["evaluation"]
    assert evaluation["safety"]["num_prompts"] == 8
    assert evaluation["helpfulness"]["judge"]["mean"] == 7.0
    assert set(FakeJudge.seen) == {f"Bearer {secret}"} and len(FakeJudge.seen) == 4
    assert "FEDSAFE_TEST_JUDGE_KEY" in (run_dir / "config.yaml").read_text()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    written += [p for s in set(Path("/tmp/ray").glob("session_*")) - ray_logs_before for p in s.rglob("*")
                if p.is_file() and not p.is_symlink()]
    assert len(written) > 10
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    assert secret not in out.stdout + out.stderr
