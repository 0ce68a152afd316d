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
