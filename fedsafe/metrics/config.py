"""The evaluation's typed config (``evaluation``): prompts, judges, decoding. Plain data: no torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fedsafe.errors import check as _check
from fedsafe.errors import check_sampling

LLM_JUDGES = ("none", "md_judge", "llama_guard3")
HELPFULNESS_JUDGES = ("none", "pool", "endpoint")


@dataclass
class EvaluationConfig:
    """Safety and helpfulness of the global model (docs/method.md#metrics).

    ``every_n_rounds``: also evaluate the global model every n rounds, on the first ``round_num_prompts``
    harmful prompts (0 = the whole evaluation). ``client_similarity``: the coordinator keeps each client's
    summed update and writes their cosine similarities (``clients.json``; memory: one adapter per client).

    Safety on ``prompts`` (harmful): the rule judge always; ``llm_judge`` (MD-Judge or Llama-Guard-3 prompt
    format, served by the pool from ``judge_model``, "" = generation.model); ``reward_model`` (a sequence-
    classification model, "" = skipped). On ``benign_prompts`` (held-out benign pairs, "" = skipped):
    over-refusal (share refused, beside the share of the prompts' own reference answers the same judge
    counts as refusals), response loss (offline helpfulness proxy). MT-Bench-style 1-10 grades (MT-1) of the
    answers to ``helpfulness_prompts`` (e.g. ``mt_bench``, ``num_helpfulness`` of them; "" = the benign
    prompts) by ``helpfulness_judge``: ``pool`` (``helpfulness_model``, "" = judge model) or ``endpoint`` (an
    OpenAI-compatible URL in ``helpfulness_endpoint``, key in the environment variable ``helpfulness_key_env``),
    writing at most ``helpfulness_max_tokens`` (its explanation, then "Rating: [[n]]").
    ``rule_keywords``: the rule judge's variant (``fedsafe.metrics.rule``: fixed, paper, cased).
    ``classifier_judge``: also judge every answer with the keyword-free classifier (``fedsafe.metrics.classifier``).
    ``temperature`` 0 decodes greedily.
    """

    prompts: str = "toy_harmful_eval"
    prompts_args: dict[str, Any] = field(default_factory=dict)
    num_prompts: int = 96  # all of the default toy_harmful_eval; AdvBench holds 520
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    rule_keywords: str = "fixed"
    classifier_judge: bool = True
    every_n_rounds: int = 0
    round_num_prompts: int = 0
    client_similarity: bool = False
    llm_judge: str = "none"
    judge_model: str = ""
    reward_model: str = ""
    benign_prompts: str = ""
    benign_prompts_args: dict[str, Any] = field(default_factory=dict)
    num_benign: int = 100
    helpfulness_prompts: str = ""
    helpfulness_prompts_args: dict[str, Any] = field(default_factory=dict)
    num_helpfulness: int = 80
    helpfulness_judge: str = "none"
    helpfulness_model: str = ""
    helpfulness_endpoint: str = ""
    helpfulness_key_env: str = "OPENAI_API_KEY"
    helpfulness_max_tokens: int = 512

    def __post_init__(self) -> None:
        _check(self.llm_judge in LLM_JUDGES, f"evaluation.llm_judge must be one of {LLM_JUDGES}, got {self.llm_judge!r}")
        _check(self.helpfulness_judge in HELPFULNESS_JUDGES,
               f"evaluation.helpfulness_judge must be one of {HELPFULNESS_JUDGES}, got {self.helpfulness_judge!r}")
        _check(self.helpfulness_judge == "none" or bool(self.benign_prompts or self.helpfulness_prompts),
               "evaluation.helpfulness_judge needs evaluation.helpfulness_prompts (e.g. mt_bench) or "
               "evaluation.benign_prompts: the prompts it grades answers to")
        _check(self.num_helpfulness >= 1, f"evaluation.num_helpfulness must be >= 1, got {self.num_helpfulness}")
        _check(self.helpfulness_max_tokens >= 1,
               f"evaluation.helpfulness_max_tokens must be >= 1, got {self.helpfulness_max_tokens}")
        _check(self.helpfulness_judge != "endpoint" or bool(self.helpfulness_endpoint),
               "evaluation.helpfulness_judge=endpoint needs evaluation.helpfulness_endpoint (an OpenAI-compatible "
               "base URL such as https://api.openai.com/v1) and evaluation.helpfulness_model")
        _check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.helpfulness_key_env) is not None,
               "evaluation.helpfulness_key_env must be the NAME of an environment variable that holds the API key "
               "(e.g. OPENAI_API_KEY), never the key itself (the value given is not shown)")
        _check(self.num_prompts >= 1, f"evaluation.num_prompts must be >= 1, got {self.num_prompts}")
        _check(self.max_new_tokens >= 1, f"evaluation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_sampling(self.temperature, self.top_p, "evaluation.")
        _check(self.batch_size >= 1, f"evaluation.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_benign >= 1, f"evaluation.num_benign must be >= 1 (leave evaluation.benign_prompts empty "
                                     f"for none), got {self.num_benign}")
        _check(self.rule_keywords in ("fixed", "paper", "cased"),
               f"evaluation.rule_keywords must be fixed (the authors' judge), paper (with their missing comma) or "
               f"cased (case-sensitive), got {self.rule_keywords!r}")
        _check(self.every_n_rounds >= 0, f"evaluation.every_n_rounds must be >= 0, got {self.every_n_rounds}")
        _check(self.round_num_prompts >= 0,
               f"evaluation.round_num_prompts must be >= 0 (0 = all), got {self.round_num_prompts}")
