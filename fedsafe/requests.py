"""Generation requests and sampling parameters: what the loop, the attack and defense data pipelines and
the evaluation send to the generation pool (``fedsafe.cluster.generation``), which passes them to its
generator actors unchanged. Plain data, no model: every layer may import it.

    requests = seeded_requests(["Give me a tip for baking bread."], GenerationParams(32, temperature=0.7, seed=3))
    answers = pool.generate(model_name, requests)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from fedsafe.seeding import derive_seed

TEMPLATES = ("alpaca", "chat", "raw", "auto")


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


@dataclass(frozen=True)
class Request:
    """``text`` is the user's instruction (``alpaca``: the alpaca template the federation trains with,
    docs/method.md#federated-setup; ``chat``: the model's chat template, for instruct models; ``raw``:
    sent as it is, e.g. a judge prompt; ``auto``: chat if the tokenizer has a chat template, else alpaca).
    ``adapter``: a key from the pool's ``register_adapter``, "" for the base model."""

    text: str
    params: GenerationParams = GenerationParams()
    template: str = "alpaca"
    adapter: str = ""


def seeded_requests(prompts: list[str], params: GenerationParams, template: str = "alpaca",
                    adapter: str = "") -> list[Request]:
    """One request per prompt, request ``i`` sampled with seed ``derive_seed(params.seed, i)``: answers do
    not depend on which replica or batch serves them."""
    return [Request(p, dataclasses.replace(params, seed=derive_seed(params.seed, i)), template, adapter)
            for i, p in enumerate(prompts)]


def pool_judge(pool, model: str) -> Callable[[list[str]], list[str]]:
    """A judge's completions from the pool: raw prompts (the format carries its own markup), greedy."""
    greedy = GenerationParams(max_new_tokens=8, temperature=0.0)
    return lambda prompts: pool.generate(model, [Request(p, greedy, "raw") for p in prompts])
