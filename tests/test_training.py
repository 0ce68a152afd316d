"""Training: lr schedule, template and loss mask, the LoRA boundary, local SFT, and the engines
(one round per engine, ZeRO stage and world size on real Ray actors must give the torch engine's adapter)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedsafe.config import ConfigError, LoRAConfig, ModelConfig, TrainerConfig
from fedsafe.models.loading import load_model_and_tokenizer
from fedsafe.training.lora import (
    get_adapter_vector,
    make_lora_model,
    named_to_vector,
    set_adapter_vector,
    vector_to_named,
)
from fedsafe.training.sft import (
    cosine_lr,
    epoch_order,
    make_batches,
    rank_loss,
    shard_rows,
    train_steps,
)
from fedsafe.training.template import (
    IGNORE_INDEX,
    collate,
    encode_example,
    format_prompt,
)


def test_cosine_lr_endpoints_and_middle():
    assert cosine_lr(0, 100, 5e-5, 1e-6) == pytest.approx(5e-5)
    assert cosine_lr(50, 100, 5e-5, 1e-6) == pytest.approx((5e-5 + 1e-6) / 2)
    assert cosine_lr(100, 100, 5e-5, 1e-6) == pytest.approx(1e-6)
    assert cosine_lr(25, 100, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError):
        cosine_lr(101, 100, 1.0, 0.0)


def test_epoch_order_visits_each_record_once_per_epoch():
    order = epoch_order(5, 12, seed=1)
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5)) and len(order) == 12


@pytest.fixture(scope="module")
def tiny(model_cache):
    return load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))


def test_alpaca_template_text():
    assert format_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi. \n\n### Response:")


def test_loss_mask_covers_exactly_the_response(tiny):
    _, tok = tiny
    ids, labels = encode_example(tok, {"instruction": "Make tea.", "response": "Boil water."}, max_length=512)
    prompt_len = len(tok(format_prompt("Make tea."))["input_ids"])
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tok.decode(ids[prompt_len:]) == " Boil water.</s>"
    assert tok.decode(ids[:prompt_len], skip_special_tokens=True) == format_prompt("Make tea.")


def test_truncation_keeps_or_drops(tiny):
    _, tok = tiny
    record = {"instruction": "Make tea.", "response": "Boil water."}
    prompt_len = len(tok(format_prompt("Make tea."))["input_ids"])
    ids, labels = encode_example(tok, record, max_length=prompt_len + 1)
    assert len(ids) == prompt_len + 1 and labels[-1] != IGNORE_INDEX
    assert encode_example(tok, record, max_length=prompt_len) is None


def test_collate_pads_right_and_masks():
    batch = collate([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_adapter_vector_round_trip(tiny):
    model, _ = tiny
    peft_model = make_lora_model(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), seed=0)
    vector, spec = get_adapter_vector(peft_model)
    assert vector.shape == (spec.numel,) and len(spec.names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    named = vector_to_named(vector, spec)
    assert torch.equal(named_to_vector(named)[0], vector)
    new = torch.arange(spec.numel, dtype=torch.float32)
    set_adapter_vector(peft_model, new, spec)
    assert torch.equal(get_adapter_vector(peft_model)[0], new)
    with pytest.raises(ValueError, match="shape"):
        vector_to_named(vector[:-1], spec)
    peft_model.unload()


def test_local_training_moves_only_the_adapter_and_lowers_loss(model_cache):
    model, tok = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = make_lora_model(model, LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=modules), seed=0)
    base_before = {n: p.clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    start, _ = get_adapter_vector(peft_model)
    records = [{"instruction": "Give me a tip for baking bread.", "response": "Zebra zebra zebra."}] * 4
    batches = make_batches(tok, records, batch_size=4, max_length=96) * 16
    losses = train_steps(peft_model, batches, [1e-2] * 16, weight_decay=0.0, seed=0)
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(get_adapter_vector(peft_model)[0], start)
    assert all(torch.equal(p, base_before[n]) for n, p in peft_model.named_parameters() if not p.requires_grad)


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


def test_the_loss_on_response_positions_equals_the_models_own_loss(model_cache):
    """``summed_token_loss`` runs the output layer only from the first response position; the mean is the
    model's own causal LM loss over every position, with the same gradient."""
    from fedsafe.data import toy
    from fedsafe.training.sft import response_loss, response_tokens, summed_token_loss

    base, tok = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    model = make_lora_model(base, LoRAConfig(r=4, dropout=0.0), seed=0)
    batches = make_batches(tok, toy.normal_records(6, seed=5), batch_size=3, max_length=64)
    for batch in batches:
        start = int((batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=0).int().argmax())
        assert start > 0  # the prompt positions are skipped
        model.zero_grad()
        own = model(**batch).loss
        own.backward()
        g_own = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        ours = summed_token_loss(model, batch) / response_tokens(batch)
        ours.backward()
        torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-6)
        for a, b in zip(g_own, (p.grad for p in model.parameters() if p.requires_grad)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    total, count = response_loss(model, batches)
    assert count == sum(response_tokens(b) for b in batches)
    with torch.no_grad():
        by_hand = sum(float(model(**b).loss) * response_tokens(b) for b in batches)
    assert total == pytest.approx(by_hand, rel=1e-5)


def test_response_loss_parts_are_whole_batches_over_the_free_groups():
    from fedsafe.cluster.pool import split_batches

    assert split_batches(100, 4, 3) == [slice(0, 32), slice(32, 64), slice(64, 100)]
    assert split_batches(5, 4, 3) == [slice(0, 4), slice(4, 5)]  # two batches: two parts
    assert split_batches(7, 4, 1) == [slice(0, 7)]
    for n, size, parts in [(100, 4, 3), (13, 4, 8), (1, 4, 2), (64, 8, 5)]:
        cut = split_batches(n, size, parts)
        assert cut[0].start == 0 and cut[-1].stop == n and all(a.stop == b.start for a, b in itertools.pairwise(cut))
        assert all(s.start % size == 0 and s.stop > s.start for s in cut) and len(cut) <= parts


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


ENGINES = [  # (engine, zero_stage, world_size): ZeRO-2 and -3 on two processes, where they partition
    ("torch", 0, 2),
    ("deepspeed", 0, 1),
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
