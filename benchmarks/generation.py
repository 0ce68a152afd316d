"""Tokens per second of the two generation backends on SmolLM2-135M-Instruct, 100 AdvBench prompts.

    .venv/bin/python benchmarks/generation.py [--prompts 100] [--max-new-tokens 128] [--hf-batches 25 50]
    .venv/bin/python benchmarks/generation.py --adapter    # every request through a LoRA adapter (r=16, q,v)

Two settings: every answer forced to ``max_new_tokens`` (``ignore_eos``), and natural stopping (answers of
different lengths, where vLLM's continuous batching should pay off while HF's static batches wait for
their longest answer). HF runs at each batch size given and its best is compared. Greedy decoding, the
chat template, float32 (``generation.dtype=auto`` on a CPU). Prints one table and the vLLM/HF ratios.
``--adapter``: the way a federation's model is evaluated, base weights plus a (random, non-zero) LoRA
adapter per request, unmerged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsafe.actors.generator import Generator  # noqa: E402
from fedsafe.config import GenerationConfig, LoRAConfig, ModelConfig  # noqa: E402
from fedsafe.data.sources import load_records  # noqa: E402
from fedsafe.requests import GenerationParams, Request  # noqa: E402


def random_adapter(model: ModelConfig, lora: LoRAConfig):
    """(vector, spec, peft_config) of a LoRA adapter with small random A and B (B is zero at init)."""
    import torch

    from fedsafe.models.loading import load_model_and_tokenizer
    from fedsafe.training.lora import get_adapter_vector, make_lora_model, peft_config_dict

    peft_model = make_lora_model(load_model_and_tokenizer(model)[0], lora, seed=0)
    vector, spec = get_adapter_vector(peft_model)
    return 0.01 * torch.randn(vector.shape, generator=torch.Generator().manual_seed(0)), spec, peft_config_dict(peft_model)


def measure(gen: Generator, prompts: list[str], max_new_tokens: int, forced: bool, adapter=None) -> tuple[float, int]:
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=forced)
    key = gen.add_adapter(*adapter) if adapter else ""
    requests = [Request(p, params, template="chat", adapter=key) for p in prompts]
    gen.generate(requests[:2])  # warm-up
    start = time.perf_counter()
    answers = gen.generate(requests)
    seconds = time.perf_counter() - start
    return seconds, sum(gen.token_counts(answers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hf-batches", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--adapter", action="store_true", help="every request through a LoRA adapter")
    args = parser.parse_args()
    prompts = [r["instruction"] for r in load_records("advbench", args.prompts, 0)]
    model = ModelConfig(name="builtin:smollm2-135m-instruct")
    lora = LoRAConfig(r=16, alpha=32, target_modules=["q_proj", "v_proj"])
    adapter = random_adapter(model, lora) if args.adapter else None
    rank = lora.r if args.adapter else 0
    rows = []  # (backend, setting, seconds, tokens)
    for batch in args.hf_batches:
        gen = Generator(model, GenerationConfig(backend="hf", hf_batch_size=batch), rank, threads=args.threads)
        for forced in (True, False):
            rows.append((f"hf batch {batch}", forced, *measure(gen, prompts, args.max_new_tokens, forced, adapter)))
        del gen
    gen = Generator(model, GenerationConfig(backend="vllm", max_model_len=1024, max_num_seqs=args.prompts,
                                            kv_cache_gib=2), rank, threads=args.threads)
    for forced in (True, False):
        rows.append(("vllm", forced, *measure(gen, prompts, args.max_new_tokens, forced, adapter)))

    print(f"\n{args.prompts} AdvBench prompts, up to {args.max_new_tokens} new tokens, dtype {gen.dtype}, "
          f"{'LoRA adapter r=16 on q,v per request, ' if args.adapter else ''}"
          f"{os.cpu_count()} CPUs")
    print("| backend | setting | seconds | tokens | tokens/s |\n|---|---|---|---|---|")
    for name, forced, seconds, tokens in rows:
        print(f"| {name} | {'forced length' if forced else 'natural stop'} | {seconds:.1f} | {tokens} | "
              f"{tokens / seconds:.1f} |")
    for forced in (True, False):
        rate = {n: t / s for n, f, s, t in rows if f == forced}
        hf_best = max(v for n, v in rate.items() if n.startswith("hf"))
        print(f"{'forced length' if forced else 'natural stop'}: vLLM / best HF = {rate['vllm'] / hf_best:.2f}x")


if __name__ == "__main__":
    main()
