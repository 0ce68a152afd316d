import torch

import pytest

from fedsafe.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fedsafe.cluster.plan import generation_models, make_plan
from fedsafe.config import ConfigError, load_config
from fedsafe.training.lora import AdapterSpec
from tests.conftest import SMOKE


@pytest.mark.parametrize("resources, overrides, trainers", [  # the generation pool holds 1 CPU of these
    ({"CPU": 3}, [], 2),
    ({"CPU": 2}, [], 1),
    ({"CPU": 16}, [], 3),  # never more trainers than clients per round
    ({"CPU": 16}, ["cluster.num_trainers=5"], 5),
    ({"CPU": 17}, ["cluster.cpus_per_trainer=8"], 2),
    ({"CPU": 16}, ["cluster.cpus_per_trainer=8"], 1),
    ({"CPU": 16}, ["cluster.cpus_per_trainer=7", "generation.replicas=2"], 2),
    ({"CPU": 32, "GPU": 2}, ["trainer.gpus_per_client=1"], 2),
    ({"CPU": 32, "GPU": 2}, ["trainer.gpus_per_client=0.5"], 3),
])
def test_trainer_count_follows_resources(resources, overrides, trainers):
    plan = make_plan(load_config(SMOKE, overrides), resources)
    assert plan.trainers.count == trainers
    assert plan.coordinator.num_cpus == 0 and plan.num_clients == 10


def test_impossible_plans_say_what_to_change():
    with pytest.raises(ConfigError, match="no GPU"):
        make_plan(load_config(SMOKE, ["trainer.gpus_per_client=1"]), {"CPU": 4})
    with pytest.raises(ConfigError, match="cluster.num_trainers"):
        make_plan(load_config(SMOKE, ["cluster.num_trainers=4"]), {"CPU": 2})
    with pytest.raises(ConfigError, match="generation.replicas"):
        make_plan(load_config(SMOKE), {"CPU": 1})


def test_generation_pool_reserves_a_slot_per_model():
    cfg = load_config(SMOKE, ["evaluation.judge_model=judge-model", "evaluation.reward_model=rm",
                              "generation.replicas=2"])
    assert generation_models(cfg) == sorted({cfg.model.name, "judge-model", "rm"})
    plan = make_plan(cfg, {"CPU": 8})
    assert plan.generators.count == 6 and plan.trainers.count == 2


def test_checkpoint_round_trip_and_pruning(tmp_path):
    spec = AdapterSpec(names=("a.lora_A.weight", "a.lora_B.weight"), shapes=((2, 3), (4, 2)))
    for r in range(4):
        save_checkpoint(tmp_path, r, torch.arange(14, dtype=torch.float32) + r, spec, {"r": 2}, keep=2)
    (tmp_path / "checkpoints" / "round_0009.tmp").mkdir()  # an interrupted write is ignored
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "round_0003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round_0002", "round_0003", "round_0009.tmp"]
    ckpt = load_checkpoint(latest)
    assert ckpt.round_idx == 3
    assert torch.equal(ckpt.vector_for(spec), torch.arange(14, dtype=torch.float32) + 3)
    other = AdapterSpec(names=spec.names, shapes=((3, 2), (4, 2)))
    with pytest.raises(ValueError, match="names or shapes"):
        ckpt.vector_for(other)
