"""Training engines: data-parallel loss sharding (unit) and one client's round under every engine, ZeRO
stage and world size on real Ray actors (integration): the adapters must match the torch engine's."""

import pytest
import torch

from fedsafe.config import ConfigError, TrainerConfig
from fedsafe.training.sft import rank_loss, shard_rows


def test_shards_cover_the_batch_once():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "labels": torch.arange(10).reshape(5, 2)}
    parts = [shard_rows(batch, r, 2)["input_ids"] for r in range(2)]
    assert torch.equal(torch.cat(parts), batch["input_ids"]) and [len(p) for p in parts] == [2, 3]
    assert shard_rows(batch, 0, 8)["input_ids"].shape[0] == 0  # more ranks than rows: empty shards


def test_rank_losses_average_to_the_whole_batch_loss(model_cache):
    from fedsafe.config import LoRAConfig, ModelConfig
    from fedsafe.data import toy
    from fedsafe.models.loading import load_model_and_tokenizer
    from fedsafe.training.lora import make_lora_model
    from fedsafe.training.sft import make_batches

    base, tok = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    model = make_lora_model(base, LoRAConfig(r=4, dropout=0.0), seed=0)
    (batch,) = make_batches(tok, toy.normal_records(5, seed=3), batch_size=5, max_length=64)

    def grads(world):
        model.zero_grad()
        total = 0.0
        for rank in range(world):  # what a data-parallel all-reduce averages
            loss = rank_loss(model, batch, rank, world) / world
            loss.backward()
            total += float(loss.detach())
        return total, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]).clone()

    whole, g1 = grads(1)
    for world in (2, 3, 8):
        loss, g = grads(world)
        assert loss == pytest.approx(whole, rel=1e-5)
        torch.testing.assert_close(g, g1, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("values, message", [
    (dict(engine="jax"), "trainer.engine"),
    (dict(zero_stage=2), "engine=deepspeed"),
    (dict(engine="deepspeed", zero_stage=1), "trainer.zero_stage"),
    (dict(engine="deepspeed", offload=True), "zero_stage 2 or 3"),
    (dict(gpus_per_client=1.5), "whole number"),
    (dict(gpus_per_client=2, world_size=4), "world_size"),
])
def test_bad_trainer_settings_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainerConfig(**values)


def test_processes_follow_gpus():
    assert TrainerConfig(gpus_per_client=4).processes == 4 and TrainerConfig(gpus_per_client=4).gpus_per_process == 1
    assert TrainerConfig(gpus_per_client=0.5).processes == 1
    assert TrainerConfig(world_size=2).processes == 2 and TrainerConfig(world_size=2).gpus_per_process == 0


ENGINES = [  # (engine, zero_stage, world_size)
    ("torch", 0, 2),
    ("deepspeed", 0, 1),
    ("deepspeed", 2, 1),
    ("deepspeed", 3, 1),
    ("deepspeed", 2, 2),
    ("deepspeed", 3, 2),
]


@pytest.mark.integration
def test_one_round_gives_the_torch_engines_adapter(ray_cluster, smoke_cfg):
    """Same global adapter, same client task: every engine/stage/world size gives the adapter of a single
    torch process (ZeRO-3's partitioned LoRA weights gathered before upload)."""
    import ray

    from fedsafe.cluster.plan import make_plan
    from fedsafe.cluster.pool import TrainerGroup
    from fedsafe.experiment import client_task, load_data

    def one_round(engine, stage, world):
        cfg = smoke_cfg("lora.dropout=0.0", "train.local_steps=3", f"trainer.engine={engine}",
                        f"trainer.zero_stage={stage}", f"trainer.world_size={world}")
        data = load_data(cfg)
        task = client_task(cfg, data.clients[0], data.shards[0], round_idx=0)
        spec = make_plan(cfg, {"CPU": 8}).trainers
        assert spec.group_size == world
        group = TrainerGroup(spec, cfg, timeout=600)
        try:
            init = ray.get(group.actors[0].initial_adapter.remote())
            update_ref, metrics_ref = group.call("train", init.vector, task, num_returns=2)
            update, metrics = ray.get([update_ref, metrics_ref])
            loss = ray.get(group.call("response_loss", init.vector + update.delta, task.records[:8], 4, 96))
        finally:
            group.kill()
        return update.delta, metrics.loss, loss

    reference, ref_train_loss, ref_loss = one_round("torch", 0, 1)
    assert reference.norm() > 0
    for engine, stage, world in ENGINES:
        delta, train_loss, loss = one_round(engine, stage, world)
        torch.testing.assert_close(delta, reference, rtol=1e-3, atol=1e-5,
                                   msg=lambda m: f"{engine} ZeRO-{stage} world {world}: {m}")
        assert train_loss == pytest.approx(ref_train_loss, rel=1e-4), (engine, stage, world)
        assert loss == pytest.approx(ref_loss, rel=1e-4), (engine, stage, world)
