"""Integration tier: whole federated runs on a real local Ray with 2 trainer actors and the tiny model."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import launch
from fedsafe.checkpoint import checkpoint_dir
from fedsafe.data.federation import sample_clients
from fedsafe.experiment import run_experiment
from fedsafe.run_dir import create_run_dir
from tests.conftest import ROOT, SMOKE

pytestmark = pytest.mark.integration


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_end_to_end(ray_cluster, smoke_cfg, model_cache):
    cfg = smoke_cfg("federation.num_rounds=3")
    run_dir = create_run_dir(cfg)
    results = run_experiment(cfg, run_dir)

    saved = json.loads((run_dir / "results.json").read_text())
    safety = saved["evaluation"]["safety"]
    assert 0.0 <= safety["rule"] <= 100.0 and safety["num_prompts"] == 48
    assert results["num_malicious"] == 3 and saved["rounds"] == 3
    assert "| global (round 3) |" in (run_dir / "report.md").read_text()
    assert len((run_dir / "evaluation" / "final.jsonl").read_text().splitlines()) == 48

    metrics = read_metrics(run_dir)
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["sampled"] == sample_clients(10, 3, m["round"]) == m["clients"]
        assert [c["client_id"] for c in m["client_metrics"]] == m["sampled"]
        assert all((c["role"] == "malicious") == (c["client_id"] >= 7) for c in m["client_metrics"])
        assert sum(m["weights"]) == pytest.approx(1.0, abs=1e-5)  # equal shards: FedAvg weights 1/3 each
    assert metrics[0]["lr"] > metrics[2]["lr"]  # cosine over rounds

    # the last checkpoint is an ordinary PEFT adapter folder
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    ckpt = checkpoint_dir(run_dir, 2)
    base = AutoModelForCausalLM.from_pretrained(f"{model_cache}/models/tiny-llama")
    peft_model = PeftModel.from_pretrained(base, ckpt)
    saved_tensors = load_file(ckpt / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(peft_model)
    assert set(loaded) == set(saved_tensors)
    assert all(torch.equal(loaded[k], saved_tensors[k]) for k in saved_tensors)
    assert any(float(v.abs().sum()) > 0 for k, v in saved_tensors.items() if "lora_B" in k)  # it trained


def test_resume_equals_uninterrupted_run(ray_cluster, smoke_cfg, tmp_path):
    """Server state that must survive a resume: FoolsGold's per-client histories and FedAdam's moments
    (a killed driver and ``--resume`` with FedAvg: tests/test_faults.py)."""
    cfg = smoke_cfg("output.keep_checkpoints=10", "aggregation.rule=foolsgold", "aggregation.server_opt.name=fedadam",
                    "aggregation.server_opt.lr=0.5")
    full = create_run_dir(cfg)
    full_results = run_experiment(cfg, full)

    # the same run, interrupted after round 1: later checkpoints, evaluation and results never written
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for r in (2, 3):
        shutil.rmtree(checkpoint_dir(cut, r))
    for name in ("results.json", "report.md", "evaluation"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()

    assert launch.main(["--resume", str(cut)]) == 0

    final = "adapter_model.safetensors"
    assert (checkpoint_dir(cut, 3) / final).read_bytes() == (checkpoint_dir(full, 3) / final).read_bytes()
    resumed = json.loads((cut / "results.json").read_text())
    assert resumed["resumed_at_round"] == 2
    assert resumed["evaluation"] == full_results["evaluation"]
    assert [m["round"] for m in read_metrics(cut)] == [0, 1, 2, 3]
    assert [c["loss"] for m in read_metrics(cut) for c in m["client_metrics"]] == \
           [c["loss"] for m in read_metrics(full) for c in m["client_metrics"]]


def test_attack_lowers_safety_and_posthoc_defense_restores_it(ray_cluster, smoke_cfg):
    """The paper's first and third claims, on toy data: deterministic on CPU with the same seed."""
    defense = ["defense.name=posthoc_sft", "defense.steps=30", "defense.num_examples=200",
               "defense.batch_size=8", "defense.lr=3e-3", "defense.min_lr=1e-4"]
    clean_cfg = smoke_cfg("clients.0.count=10", "clients.1.count=0")
    attacked_cfg = smoke_cfg(*defense)
    clean = run_experiment(clean_cfg, create_run_dir(clean_cfg))
    attacked = run_experiment(attacked_cfg, create_run_dir(attacked_cfg))
    no_attack_rate = clean["evaluation"]["safety"]["rule"]
    attacked_rate = attacked["models"]["global (round 4)"]["safety"]["rule"]
    defended_rate = attacked["models"]["global + posthoc_sft (level 1)"]["safety"]["rule"]
    assert no_attack_rate > attacked_rate + 20
    assert defended_rate > attacked_rate + 20


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


def test_cli_config_errors_exit_2_with_one_line():
    out = run_cli("--config", str(SMOKE), "aggregation.rule=nope")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        out.stderr.strip().splitlines()[0]] and "aggregation.rule must be one of" in out.stderr
    assert "Traceback" not in out.stderr


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
    assert "| global (round 1) |" in out.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "cache"]  # cache/: the generation cache
    results = json.loads((run_dir / "results.json").read_text())
    assert results["evaluation"]["safety"]["num_prompts"] == 8
    assert results["evaluation"]["helpfulness"]["judge"]["mean"] == 7.0
    assert set(FakeJudge.seen) == {f"Bearer {secret}"} and len(FakeJudge.seen) == 4
    assert "FEDSAFE_TEST_JUDGE_KEY" in (run_dir / "config.yaml").read_text()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    written += [p for s in set(Path("/tmp/ray").glob("session_*")) - ray_logs_before for p in s.rglob("*")
                if p.is_file() and not p.is_symlink()]
    assert len(written) > 10
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    assert secret not in out.stdout + out.stderr


@pytest.mark.integration
def test_generated_attack_and_defense_data_with_every_metric(smoke_cfg, ray_cluster):
    """MaliciousGen attack data (rule-filtered) and Level-3 defense data, both written by the pool; every
    metric reported with its judge; a second run (Level 2) reuses the cached attack data."""
    common = ["clients.1.dataset=maliciousgen", "clients.1.dataset_args={filter: rule, max_new_tokens: 24}",
              "defense.name=posthoc_sft", "defense.dataset=defensegen", "defense.num_examples=40",
              "defense.steps=10", "evaluation.llm_judge=md_judge", "evaluation.num_prompts=16"]
    level3 = ["defense.dataset_args={generator: global, normal: sharegpt, max_new_tokens: 24}"]
    cfg = smoke_cfg(*common, *level3)
    run_dir = create_run_dir(cfg)
    first = run_experiment(cfg, run_dir)
    synth = first["data"]["synthesis"]
    attack = synth["clients.malicious"]
    assert attack["generated"]["unaligned"] >= 3 * 64 and attack["kept"]["unaligned"] >= 3 * 64
    assert synth["defense"]["kept"]["normal"] > 0 and first["defense_level"] == 3
    final = first["evaluation"]
    assert final["safety"]["llm_judge"]["model"] == "builtin:tiny-llama"
    assert sum(final["safety"]["llm_judge"]["counts"].values()) == 16
    assert 0 <= final["over_refusal"]["rate"] <= 100 and final["helpfulness"]["response_loss"] > 0
    assert "md_judge prompt format, judged by `builtin:tiny-llama`" in (run_dir / "report.md").read_text()

    cfg = smoke_cfg(*common, "defense.dataset_args={normal: sharegpt, max_new_tokens: 24}")
    second = run_experiment(cfg, create_run_dir(cfg))
    assert second["defense_level"] == 2
    assert second["data"]["synthesis"]["clients.malicious"] == attack
    assert second["generation_cache"]["hits"] >= 1
