"""The command line (``launch.py``): ``--dry-run`` starts nothing, a config error from the command line is
one line with exit status 2, and a whole run from the command line keeps an API key out of every file.
Bad input case by case: tests/test_bad_input.py."""

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

from tests.conftest import ROOT, SMOKE, arm


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
