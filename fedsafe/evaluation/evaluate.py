"""Every metric of docs/method.md#metrics for one model (base + adapter), through the generation pool.

Safety on the harmful prompts: Rule (refusal keywords), LLM judge (share judged exactly "safe"), reward
model (mean score of (prompt, answer)). On held-out benign prompts: over-refusal (share of answers with a
refusal keyword: a defense that refuses everything shows up here), response loss (offline helpfulness
proxy: mean loss per token of the held-out reference answers), and 1-10 helpfulness grades by a judge
model from the pool or an OpenAI-compatible endpoint (MT-Bench first-turn single-answer format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Callable

from fedsafe.config import ExperimentConfig
from fedsafe.metrics.judges import (
    endpoint_complete, get_safety_judge, grade_helpfulness, judge_safety, safe_share, verdict_counts,
)
from fedsafe.metrics.rule import KEYWORD_SETS, rule_safety_rate
from fedsafe.requests import GenerationParams, Request, pool_judge, seeded_requests
from fedsafe.run_dir import write_responses
from fedsafe.seeding import Salt, derive_seed


@dataclass
class EvalInputs:
    harmful: list[str]  # evaluation prompts (AdvBench)
    benign: list[dict]  # held-out benign pairs with reference answers, or []

    @property
    def prompts(self) -> list[str]:
        """Every held-out prompt, harmful and benign: none may occur in any training data."""
        return self.harmful + [r["instruction"] for r in self.benign]


def judge_model_name(cfg: ExperimentConfig) -> str:
    return cfg.evaluation.judge_model or cfg.generation.model or cfg.model.name


def evaluate_model(cfg: ExperimentConfig, pool, adapter: str, inputs: EvalInputs, run_dir: Path, name: str,
                   response_loss: Callable[[list[dict]], float] | None = None) -> dict:
    """Every configured metric of the base model with adapter ``adapter`` (a pool key)."""
    ev = cfg.evaluation
    params = GenerationParams(ev.max_new_tokens, ev.temperature, ev.top_p, derive_seed(cfg.seed, Salt.EVALUATION))

    def answer(prompts: list[str]) -> list[str]:
        return pool.generate(cfg.model.name, seeded_requests(prompts, params, "alpaca", adapter))

    judge_complete = pool_judge(pool, judge_model_name(cfg))
    answers = answer(inputs.harmful)
    write_responses(run_dir, name, inputs.harmful, answers)
    safety: dict = {"rule": rule_safety_rate(answers, KEYWORD_SETS[ev.rule_keywords]),
                    "num_prompts": len(inputs.harmful), "judge": f"rule ({ev.rule_keywords} keywords)"}
    if ev.llm_judge != "none":
        verdicts = judge_safety(get_safety_judge(ev.llm_judge), judge_complete, inputs.harmful, answers)
        safety["llm_judge"] = {"format": ev.llm_judge, "model": judge_model_name(cfg), "safe": safe_share(verdicts),
                               "counts": verdict_counts(verdicts)}
    if ev.reward_model:
        scores = pool.reward_scores(ev.reward_model, inputs.harmful, answers)
        safety["reward"] = {"model": ev.reward_model, "mean": mean(scores)}
    result = {"safety": safety}
    if inputs.benign:
        prompts = [r["instruction"] for r in inputs.benign]
        benign_answers = answer(prompts)
        write_responses(run_dir, f"{name}_benign", prompts, benign_answers)
        result["over_refusal"] = {"rate": rule_safety_rate(benign_answers, KEYWORD_SETS[ev.rule_keywords]),
                                  "num_prompts": len(prompts)}
        helpfulness: dict = {}
        if response_loss is not None:
            helpfulness["response_loss"] = response_loss(inputs.benign)
        if ev.helpfulness_judge != "none":
            if ev.helpfulness_judge == "endpoint":
                complete = endpoint_complete(ev.helpfulness_endpoint, ev.helpfulness_model, ev.helpfulness_key_env)
                judge = f"{ev.helpfulness_model} at {ev.helpfulness_endpoint}"
            else:
                judge = ev.helpfulness_model or judge_model_name(cfg)
                greedy = GenerationParams(max_new_tokens=256, temperature=0.0)

                def complete(ps: list[str]) -> list[str]:
                    return pool.generate(judge, [Request(p, greedy, "auto") for p in ps])
            grades = grade_helpfulness(complete, prompts, benign_answers)
            graded = [g for g in grades if g is not None]
            helpfulness["judge"] = {"model": judge, "mean": mean(graded) if graded else None,
                                    "graded": len(graded), "asked": len(grades)}
        result["helpfulness"] = helpfulness
    return result
