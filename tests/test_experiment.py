"""The loop (``fedsafe.experiment``) on a real local Ray with 2 trainer actors and the tiny model: whole
runs, resume, the paper's claims on toy data, generated data, every rule's federated path (FLTrust, which
needs the server's own update), and the smoke run pinned to its losses and final adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import launch
from fedsafe.checkpoint import checkpoint_dir
from fedsafe.experiment import round_clients
from fedsafe.matrix import run_experiment
from fedsafe.run_dir import create_run_dir
from tests.conftest import adapter_digest, arm, read_metrics

pytestmark = pytest.mark.integration


# The smoke config's run on the pinned CPU build: per-round client losses, the final adapter's digest (tensor
# names and bytes) and the metrics. Measured on torch 2.13.0+cpu (requirements/constraints-cpu.txt); change
# them only on purpose, with the reason in the commit, so that later work cannot change the simulation
# silently. On another torch build the run is checked for everything but these values; on a CPU whose float
# kernels round differently (AVX-512 FP16 / AMX) the losses are checked to 1e-4 and the bit-for-bit pins
# are skipped.
PINNED_TORCH = "2.13.0+cpu"
# Re-pinned when the alpaca template took the authors' space after the instruction (the tiny model is
# pre-trained on it too), and when the loss ran the output layer only from the first response position
# (the same losses to 1e-6: float rounding) and evaluation prompts went to the hf backend sorted by length
# (other batches: the tiny model's near-tied greedy choices flip on float rounding, 4 of 48 answers here;
# SmolLM2 gave the same 200 of 200 answers in the old and new batches).
SMOKE_LOSSES = [[0.193873, 0.185915, 0.106734], [0.173541, 0.173013, 0.176871], [0.175527, 0.165682, 0.138872],
                [0.17688, 0.172029, 0.11895]]
SMOKE_DIGEST = "d37576aab86e82e5914d367c5fdd3e79c7313b546a7c81005da9fafd2bc43e6a"
SMOKE_METRICS = {"rule": 27.083333333333332, "over_refusal": 22.5, "response_loss": 0.22497361720293418}


def test_smoke_run_end_to_end_and_pinned(ray_cluster, smoke_cfg, model_cache):
    cfg = smoke_cfg()
    run_dir = create_run_dir(cfg)
    results = run_experiment(cfg, run_dir)

    saved = json.loads((run_dir / "results.json").read_text())
    (name,) = saved["arms"]  # no arms and no defense: one arm, the federated model
    safety = saved["arms"][name]["evaluation"]["safety"]
    assert 0.0 <= safety["rule"] <= 100.0 and safety["num_prompts"] == 48
    assert results["num_malicious"] == 3 == saved["arms"][name]["num_malicious"] and saved["rounds"] == 4
    assert "| fedavg |" in (run_dir / "report.md").read_text() and (run_dir / "report.html").is_file()
    arm_dir = run_dir / "arms" / "fedavg"
    assert len((arm_dir / "evaluation" / "final.jsonl").read_text().splitlines()) == 48

    metrics = read_metrics(run_dir)
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    for m in metrics:
        assert m["sampled"] == round_clients(cfg, 10, m["round"]) == m["clients"]
        assert [c["client_id"] for c in m["client_metrics"]] == m["sampled"]
        assert all((c["role"] == "malicious") == (c["client_id"] >= 7) for c in m["client_metrics"])
        assert sum(m["weights"]) == pytest.approx(1.0, abs=1e-5)  # equal shards: FedAvg weights 1/3 each
    assert metrics[0]["lr"] > metrics[3]["lr"]  # cosine over rounds

    # the last checkpoint is an ordinary PEFT adapter folder
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    ckpt = checkpoint_dir(run_dir, 3)
    base = AutoModelForCausalLM.from_pretrained(f"{model_cache}/models/tiny-llama")
    peft_model = PeftModel.from_pretrained(base, ckpt)
    saved_tensors = load_file(ckpt / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(peft_model)
    assert set(loaded) == set(saved_tensors)
    assert all(torch.equal(loaded[k], saved_tensors[k]) for k in saved_tensors)
    assert any(float(v.abs().sum()) > 0 for k, v in saved_tensors.items() if "lora_B" in k)  # it trained
    # the arm's final adapter is a PEFT folder beside its result, equal to the last round's
    assert saved["arms"][name]["adapter"] == "arms/fedavg/adapter"  # results.json: relative to the run folder
    assert adapter_digest(arm_dir / "adapter") == adapter_digest(ckpt)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{model_cache}/models/tiny-llama"),
                              arm_dir / "adapter")

    if torch.__version__ == PINNED_TORCH:
        losses = [[round(c["loss"], 6) for c in m["client_metrics"]] for m in metrics]
        print("PIN", losses, adapter_digest(arm_dir / "adapter"))
        # other data, clients, batches or steps move these losses by 1e-2 or more; another CPU's float kernels
        # (AVX-512 FP16 / AMX against AVX-512) by about 1e-5
        flat = [loss for row in losses for loss in row]
        assert flat == pytest.approx([loss for row in SMOKE_LOSSES for loss in row], abs=1e-4)
        if losses != SMOKE_LOSSES:  # not the CPU the pins were taken on: no bit-for-bit pins
            return
        assert adapter_digest(arm_dir / "adapter") == SMOKE_DIGEST
        ev = saved["arms"][name]["evaluation"]
        assert {"rule": ev["safety"]["rule"], "over_refusal": ev["over_refusal"]["rate"],
                "response_loss": ev["helpfulness"]["response_loss"]} == pytest.approx(SMOKE_METRICS, rel=1e-9)


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
    for name in ("results.json", "report.md", "report.html", "arms"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()

    assert launch.main(["--resume", str(cut)]) == 0

    final = "adapter_model.safetensors"
    assert (checkpoint_dir(cut, 3) / final).read_bytes() == (checkpoint_dir(full, 3) / final).read_bytes()
    resumed = json.loads((cut / "results.json").read_text())
    assert arm(resumed)["resumed_at_round"] == 2
    assert arm(resumed)["evaluation"] == arm(full_results)["evaluation"]
    assert [m["round"] for m in read_metrics(cut)] == [0, 1, 2, 3]
    assert [c["loss"] for m in read_metrics(cut) for c in m["client_metrics"]] == \
           [c["loss"] for m in read_metrics(full) for c in m["client_metrics"]]


def test_attack_lowers_safety_and_posthoc_defense_restores_it(ray_cluster, smoke_cfg):
    """The paper's first and third claims, on toy data: deterministic on CPU with the same seed."""
    defense = ["defense.name=posthoc_sft", "defense.steps=30", "defense.rounds=3", "defense.num_examples=200",
               "defense.batch_size=8", "defense.lr=3e-3", "defense.min_lr=1e-4"]
    clean_cfg = smoke_cfg("clients.0.count=10", "clients.1.count=0")
    attacked_cfg = smoke_cfg(*defense)
    clean = run_experiment(clean_cfg, create_run_dir(clean_cfg))
    attacked = run_experiment(attacked_cfg, create_run_dir(attacked_cfg))
    no_attack_rate = arm(clean)["evaluation"]["safety"]["rule"]
    assert list(attacked["arms"]) == ["fedavg", "fedavg + posthoc_sft (level 1)"]  # before and after the defense
    attacked_rate = arm(attacked, 0)["evaluation"]["safety"]["rule"]
    defended_rate = arm(attacked, 1)["evaluation"]["safety"]["rule"]
    assert arm(attacked, 1)["data"]["defense_examples"] == 200 and arm(attacked, 1)["defense_level"] == 1
    assert no_attack_rate > attacked_rate + 20
    assert defended_rate > attacked_rate + 20


def test_generated_attack_and_defense_data_with_every_metric(smoke_cfg, ray_cluster):
    """MaliciousGen attack data (rule-filtered) and Level-3 defense data, both written by the pool; every
    metric reported with its judge; a second run (Level 2) reuses the cached attack data."""
    common = ["attack.name=maliciousgen", "attack.params={filter: rule, max_new_tokens: 24}",
              "defense.name=posthoc_sft", "defense.num_examples=40",
              "defense.steps=10", "defense.rounds=2", "evaluation.llm_judge=md_judge", "evaluation.num_prompts=16"]
    level3 = ["defense.level=3", "defense.synthesis={normal: sharegpt, max_new_tokens: 24}"]
    cfg = smoke_cfg(*common, *level3)
    run_dir = create_run_dir(cfg)
    first = arm(run_experiment(cfg, run_dir), 1)
    synth = first["data"]["synthesis"]
    attack = synth["clients.malicious"]
    assert attack["generated"]["unaligned"] >= 3 * 64 and attack["kept"]["unaligned"] >= 3 * 64
    assert synth["defense"]["kept"]["normal"] > 0 and first["defense_level"] == 3
    final = first["evaluation"]
    assert final["safety"]["llm_judge"]["model"] == "builtin:tiny-llama"
    assert sum(final["safety"]["llm_judge"]["counts"].values()) == 16
    answers = Path(first["adapter"]).parent / "evaluation" / "final.jsonl"
    lines = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(lines) == 16 and all({"rule", "classifier", "llm_judge"} <= set(x) for x in lines)
    assert 100 * sum(x["llm_judge"] for x in lines) / 16 == final["safety"]["llm_judge"]["safe"]
    assert first["paired"]["llm_judge"]["reference"] == "fedavg"  # the per-prompt verdicts are tested too
    assert 0 <= final["over_refusal"]["rate"] <= 100 and final["helpfulness"]["response_loss"] > 0
    assert "md_judge format, judged by `builtin:tiny-llama`" in (run_dir / "report.md").read_text()

    cfg = smoke_cfg(*common, "defense.level=2", "defense.synthesis={normal: sharegpt, max_new_tokens: 24}")
    results = run_experiment(cfg, create_run_dir(cfg))
    second = arm(results, 1)
    assert second["defense_level"] == 2
    assert second["data"]["synthesis"]["clients.malicious"] == attack
    assert results["generation_cache"]["hits"] >= 1


def test_fltrust_trains_the_servers_root_update_beside_the_clients(ray_cluster, smoke_cfg):
    """The one rule that needs the server's own update, in a federated run: the server trains on its root
    data each round beside the sampled clients, without counting as a client (every rule's arithmetic on
    made-up updates: tests/test_actors.py)."""
    cfg = smoke_cfg("aggregation.rule=fltrust", "aggregation.root_dataset=toy_benign", "aggregation.root_examples=40",
                    "federation.clients_per_round=7", "aggregation.num_malicious=1", "federation.num_rounds=2",
                    "train.local_steps=2", "evaluation.num_prompts=4", "evaluation.benign_prompts=''")
    run_dir = create_run_dir(cfg)
    run_experiment(cfg, run_dir)
    records = read_metrics(run_dir)
    assert [m["round"] for m in records] == [0, 1]
    for m in records:
        assert len(m["weights"]) == 7 and min(m["weights"]) >= 0 and m["global_norm"] > 0
        assert [c["client_id"] for c in m["client_metrics"]] == m["sampled"]  # no server row among clients
        assert m["server_metrics"]["role"] == "server"
