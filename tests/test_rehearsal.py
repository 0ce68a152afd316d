"""The rehearsal (``launch.py --rehearse``): what it replaces in the paper's GPU configs, and the whole pipeline
of both on this CPU (integration)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedsafe.config import load_config
from fedsafe.data.sources import on_hub
from fedsafe.preflight import data_fields
from fedsafe.rehearsal import rehearsal_config, stand_in_model
from tests.conftest import ROOT

PAPER_CONFIGS = ["paper_gpu.yaml", "paper_gpu_beavertails.yaml"]


def test_stand_ins_keep_the_family():
    assert stand_in_model("meta-llama/Llama-2-7b-hf")[0] == "builtin:tiny-llama"
    assert stand_in_model("mistralai/Mistral-7B-Instruct-v0.2")[0] == "builtin:smollm2-135m-instruct-mistral"
    assert stand_in_model("OpenSafetyLab/MD-Judge-v0.1")[0] == "builtin:smollm2-135m-instruct-mistral"
    assert stand_in_model("meta-llama/Llama-Guard-3-8B")[0] == "builtin:smollm2-135m-instruct"
    assert stand_in_model("OpenAssistant/reward-model-deberta-v3-large-v2")[0] == "builtin:tiny-reward-deberta"
    assert stand_in_model("builtin:tiny-llama") == ("builtin:tiny-llama", "")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_the_rehearsal_replaces_what_a_cpu_cannot_hold_and_keeps_the_experiment(tmp_path, name):
    cfg = load_config(ROOT / "configs" / name)
    small, changes, hub_sets = rehearsal_config(cfg, tmp_path)
    models = [small.model.name, small.generation.model, small.evaluation.judge_model, small.evaluation.reward_model,
              small.evaluation.helpfulness_model]
    assert all(m.startswith("builtin:") for m in models)
    assert (small.model.quantization, small.trainer.gpus_per_client, small.generation.backend) == ("none", 0, "hf")
    assert small.evaluation.helpfulness_judge == "pool" and small.cluster.address is None
    assert not [r for r in data_fields(small) if on_hub(r.source, r.args)]  # every hub set from a local copy
    assert "lmsys/lmsys-chat-1m" in hub_sets and "HuggingFaceH4/mt_bench_prompts" in hub_sets
    assert ("PKU-Alignment/BeaverTails" in hub_sets) == (name == "paper_gpu_beavertails.yaml")
    # the experiment itself is kept: arms, rules, attack, judges' formats, the defense's schedule
    assert small.arms == cfg.arms and small.attack.name == cfg.attack.name
    assert (small.evaluation.llm_judge, small.evaluation.rule_keywords) == ("md_judge", "paper")
    assert (small.defense.schedule, small.federation.sampling) == ("rounds", "paper")
    assert small.evaluation.prompts_args == {"suffix": "."}
    changed = {line.split(":")[0] for line in changes}
    assert {"model.name", "model.quantization", "generation.backend", "federation.num_rounds",
            "evaluation.helpfulness_judge", "clients.0.dataset_args.mirror"} <= changed


@pytest.fixture(scope="module")
def rehearsal_root(tmp_path_factory):
    """One output root for both rehearsals: the second reuses what they share (the no-attack arm, the
    Level-2 data), as a real run of both tables would."""
    return tmp_path_factory.mktemp("rehearsals")


@pytest.mark.integration
@pytest.mark.rehearsal
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_rehearsal_runs_the_whole_pipeline_of_the_paper_config(rehearsal_root, name):
    """As a user runs it: its own process, its own local Ray."""
    done = subprocess.run([sys.executable, "launch.py", "--config", f"configs/{name}", "--rehearse",
                           f"output.root={rehearsal_root}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model.name: 'meta-llama/Llama-2-7b-hf' -> 'builtin:tiny-llama'" in done.stdout
    assert "evaluation.reward_model: 'OpenAssistant/reward-model-deberta-v3-large-v2'" in done.stdout
    assert "evaluation.helpfulness_judge: 'endpoint' -> 'pool'" in done.stdout
    (run_dir,) = rehearsal_root.glob(f"{load_config(ROOT / 'configs' / name).output.name}-rehearsal-*")
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["arms"]) == 17 and (run_dir / "report.md").is_file()
    final = results["arms"]["FedAvg + Level 2"]["evaluation"]
    assert {"rule", "llm_judge", "reward", "classifier"} <= set(final["safety"]) and final["safety"]["num_prompts"] == 8
    assert final["helpfulness"]["judge"]["asked"] == 4 and final["over_refusal"]["num_prompts"] == 4
    assert final["helpfulness"]["judge"]["prompts"] == "mt_bench"
