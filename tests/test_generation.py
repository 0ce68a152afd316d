"""The generation pool: both backends on the tiny model, adapters per request, caching."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsafe.actors.generator import adapter_key, encode_request, pick_dtype, vllm_lora_rank
from fedsafe.requests import GenerationParams, Request
from tests.conftest import PROMPTS, trained_adapter


def hf_batches(requests, batch_size):
    """The hf backend's batches (Generator.generate): per (adapter, parameters but the seed), in order."""
    groups = {}
    for r in requests:
        groups.setdefault((r.adapter, dataclasses.replace(r.params, seed=0)), []).append(r)
    return [tuple(r.text for r in m[b:b + batch_size]) for m in groups.values() for b in range(0, len(m), batch_size)]


def test_pieces_batch_as_the_whole_list():
    from fedsafe.cluster.generation import pieces

    greedy, sampled = GenerationParams(32, 0.0), GenerationParams(64, 0.7)
    requests = ([Request(f"h{i}", dataclasses.replace(sampled, seed=i), adapter="a") for i in range(23)]
                + [Request(f"b{i}", greedy, adapter="a") for i in range(7)]
                + [Request(f"j{i}", greedy) for i in range(11)])
    cut = pieces(requests, 5)
    assert len(cut) > 3 and [r for p in cut for r in p] == requests
    assert sorted(b for p in cut for b in hf_batches(p, 5)) == sorted(hf_batches(requests, 5))
    interleaved = [r for pair in zip(requests[:20], requests[23:]) for r in pair]  # two groups alternate
    assert sorted(b for p in pieces(interleaved, 4) for b in hf_batches(p, 4)) == sorted(hf_batches(interleaved, 4))
    assert pieces(requests, 0) == [requests] and pieces(requests[:3], 5) == [requests[:3]]


def test_length_batches_cut_where_padding_costs_more_than_steps():
    from fedsafe.actors.hf_generate import BatchCost, length_batches

    close = [40, 42, 38, 41, 39, 40]
    assert length_batches(close, 32) == [[2, 4, 0, 5, 3, 1]]  # one batch, sorted (stable) by length
    mixed = [40] * 99 + [268]  # the benign evaluation's shape: one long prompt among short ones
    parts = length_batches(mixed, 32)
    assert parts == [list(range(99)), [99]]
    cost = BatchCost()
    assert cost(99, 40, 32) + cost(1, 268, 32) < cost(100, 268, 32)
    free_steps = BatchCost(step=0.0)  # without a per-step cost every distinct length is its own batch
    assert length_batches([5, 9, 5, 9, 7], 8, free_steps) == [[0, 2], [4], [1, 3]]
    assert length_batches([], 8) == [] and length_batches([3], 8) == [[0]]
    # the exact optimum: no other cut of the sorted lengths is cheaper (all 2^(n-1) cuts of n=7)
    lengths, new = [3, 4, 9, 30, 31, 80, 200], 16
    found = sum(cost(len(p), max(lengths[i] for i in p), new) for p in length_batches(lengths, new))
    best = min(sum(cost(b - a, lengths[b - 1], new) for a, b in zip((0, *bounds), (*bounds, 7)))
               for mask in range(64) for bounds in [tuple(i for i in range(1, 7) if mask >> (i - 1) & 1)])
    assert found == pytest.approx(best)


def test_shared_prefix_leaves_each_prompt_a_token():
    from fedsafe.actors.hf_generate import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2 and shared_prefix([[7], [7, 8]]) == 0
    assert shared_prefix([[1, 2], [3, 2]]) == 0


def test_a_shared_prefix_computed_once_gives_the_same_greedy_text(model_cache):
    """The alpaca template's shared tokens go through the model once; rows are prefix + padding + rest."""
    from fedsafe.actors.hf_generate import generate_batch, shared_prefix
    from fedsafe.config import ModelConfig
    from fedsafe.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    model.eval()
    requests = [Request(p) for p in PROMPTS] + [Request("Name a colour of the sky at dusk, in one word.")]
    prompts = [encode_request(tok, r) for r in requests]
    assert shared_prefix(prompts) >= 20  # the template's first line and more
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    plain = generate_batch(model, tok, prompts, greedy, 0, min_shared=0)
    assert generate_batch(model, tok, prompts, greedy, 0) == plain and all(a.strip() for a in plain)


def test_by_length_orders_requests_stably():
    from fedsafe.cluster.generation import by_length

    requests = [Request("a" * n) for n in (5, 1, 3, 1)]
    assert by_length(requests) == [1, 3, 2, 0]


def test_vllm_lora_rank_rounds_up():
    assert vllm_lora_rank(8) == 8 and vllm_lora_rank(9) == 16 and vllm_lora_rank(32) == 32
    with pytest.raises(ValueError, match="max_lora_rank"):
        vllm_lora_rank(1000)


def test_pick_dtype():
    assert pick_dtype("auto", cuda=False, cuda_bf16=False) == "float32"
    assert pick_dtype("auto", cuda=True, cuda_bf16=True) == "bfloat16"
    assert pick_dtype("auto", cuda=True, cuda_bf16=False) == "float16"
    assert pick_dtype("bfloat16", cuda=False, cuda_bf16=False) == "bfloat16"


def test_adapter_key_is_a_content_hash():
    v = torch.arange(10, dtype=torch.float32)
    assert adapter_key(v) == adapter_key(v.clone()) != adapter_key(v + 1e-3)


def test_encode_request_templates(model_cache):
    from fedsafe.config import ModelConfig
    from fedsafe.models.builtin import resolve_model_path
    from fedsafe.models.loading import load_tokenizer

    cfg = ModelConfig(cache_dir=model_cache)
    tok = load_tokenizer(resolve_model_path(cfg), cfg)
    alpaca = encode_request(tok, Request("Hi there"))
    assert "### Instruction:\nHi there" in tok.decode(alpaca)
    assert tok.decode(encode_request(tok, Request("Hi there", template="raw"))).endswith("Hi there")
    with pytest.raises(ValueError, match="chat template"):
        encode_request(tok, Request("Hi", template="chat"))


@pytest.mark.integration
def test_backends_return_the_same_greedy_text(smoke_cfg, ray_cluster, model_cache, tmp_path):
    """vLLM and HF generate on the tiny model, with and without an adapter: same text under greedy decoding;
    the adapter changes the answers; a second identical call is served from the cache."""
    import ray

    from fedsafe.cluster.generation import GenerationPool

    vector, spec, peft_config = trained_adapter(model_cache)
    greedy = GenerationParams(max_new_tokens=20, temperature=0.0)
    answers = {}
    for backend in ("hf", "vllm"):
        cfg = smoke_cfg("lora.r=8", f"generation.backend={backend}", "generation.kv_cache_gib=1",
                        "generation.max_model_len=256")
        pool = GenerationPool(cfg, cache_dir=tmp_path / backend)
        key = pool.register_adapter(ray.put(vector), spec, peft_config)
        requests = [Request(p, greedy) for p in PROMPTS] + [Request(p, greedy, adapter=key) for p in PROMPTS]
        answers[backend] = pool.generate(cfg.model.name, requests)
        assert pool.cache.misses == 1
        assert pool.generate(cfg.model.name, requests) == answers[backend] and pool.cache.hits == 1
        pool.shutdown()
    assert answers["hf"] == answers["vllm"]
    assert answers["hf"][:4] != answers["hf"][4:], "the adapter should change some answers"
    assert all(a.strip() for a in answers["hf"])


@pytest.mark.integration
def test_sampling_is_per_request_and_seeded(smoke_cfg, ray_cluster):
    from fedsafe.cluster.generation import GenerationPool

    cfg = smoke_cfg("generation.backend=hf", "generation.cache=false", "generation.replicas=2")
    pool = GenerationPool(cfg)
    hot = GenerationParams(max_new_tokens=12, temperature=1.0, seed=3)
    requests = [Request(p, hot) for p in PROMPTS] + [Request(PROMPTS[0], dataclasses.replace(hot, max_new_tokens=2))]
    first = pool.generate(cfg.model.name, requests)
    assert first == pool.generate(cfg.model.name, requests)
    assert len(first) == 5 and len(first[4].split()) <= 3
    pool.shutdown()
