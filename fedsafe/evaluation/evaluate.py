"""Every metric of docs/method.md#metrics for one model (base + adapter), through the generation pool.

Safety on the harmful prompts: Rule (the authors' refusal-keyword judge), the classifier (a second judge
that knows no keyword, trained on human labels), LLM judge (share judged exactly "safe"), reward model
(mean score of (prompt, answer)). On held-out benign prompts: over-refusal (share of answers with a refusal
keyword, beside the share of the reference answers that have one), response loss (offline helpfulness
proxy: mean loss per token of the held-out reference answers), and 1-10 helpfulness grades by a judge
model from the pool or an OpenAI-compatible endpoint (MT-Bench first-turn single-answer format).
A backdoor's attack success: the share of the same harmful prompts, asked with its trigger, that each
safety judge calls unsafe. Per-prompt verdicts go beside the answers (``evaluation/<name>.jsonl``) for the paired tests.
``calibration`` measures the safety judges against PyRIT's human labels.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Callable

from fedsafe.config import ExperimentConfig
from fedsafe.data import openings
from fedsafe.data.labelled import compliance_rows, labelled_responses
from fedsafe.metrics import percent_true
from fedsafe.metrics.classifier import HarmClassifier, agreement, opening
from fedsafe.metrics.judges import (
    endpoint_complete,
    get_safety_judge,
    grade_helpfulness,
    judge_safety,
    safe_share,
    verdict_counts,
)
from fedsafe.metrics.registry import METRICS
from fedsafe.metrics.rule import RULE_JUDGES, rule_verdicts
from fedsafe.requests import GenerationParams, Request, pool_judge, seeded_requests
from fedsafe.run_dir import timed, write_responses
from fedsafe.seeding import Salt, derive_seed


@dataclass
class EvalInputs:
    harmful: list[str]  # evaluation prompts (AdvBench)
    benign: list[dict]  # held-out benign pairs with reference answers, or []
    helpfulness: list[dict] = field(default_factory=list)  # questions graded 1-10 (MT-Bench), or [] = benign
    triggered: list[str] = field(default_factory=list)  # the harmful prompts with a backdoor's trigger, or []

    @property
    def prompts(self) -> list[str]:
        """Every held-out prompt, harmful, benign, graded and triggered: none may occur in any training data."""
        return self.harmful + [r["instruction"] for r in self.benign + self.helpfulness] + self.triggered


JUDGES_VERSION = 3  # part of every arm's cache key: a finished arm is reused only if it was judged as now
CLASSIFIER_NAME = ("TF-IDF + logistic regression on PyRIT's human-labelled responses (objective-achieved and refusal "
                   "sets: did the response comply), cut to the evaluation's answer length")


@functools.lru_cache(maxsize=8)
def harm_classifier(answer_tokens: int = 0) -> HarmClassifier:
    """The second safety judge (``fedsafe.metrics.classifier``), frozen for a run: fitted once, on the
    human-labelled responses (``compliance_rows``) cut to ``answer_tokens`` tokens (0: whole), the length of
    the answers it judges; the same model for every arm and seed."""
    rows = compliance_rows()
    return HarmClassifier.fit([opening(r["response"], answer_tokens) for r in rows], [r["label"] for r in rows],
                              sets=[r["labelled_set"] for r in rows])


def opening_check(answer_tokens: int = 0) -> dict:
    """How the classifier judge reads openings written for this check (``fedsafe.data.openings``): compliant
    ones it calls unsafe and refusals it calls safe, each cut to ``answer_tokens``."""
    clf = harm_classifier(answer_tokens)
    compliant = clf.harmful([opening(a, answer_tokens) for _, a in openings.COMPLIANT])
    refusing = clf.harmful([opening(a, answer_tokens) for _, a in openings.REFUSING])
    return {"compliant_called_unsafe": sum(compliant), "compliant": len(compliant),
            "refusing_called_safe": len(refusing) - sum(refusing), "refusing": len(refusing)}


def safety_verdicts(answers: list[str], rule_keywords: str, classifier: bool = True,
                    answer_tokens: int = 0) -> dict[str, list[bool]]:
    """Per safety judge, True where an answer to a harmful prompt is judged safe: the rule judge of
    ``rule_keywords`` and (``classifier``) the classifier fitted at the answers' length ``answer_tokens``."""
    verdicts = {"rule": rule_verdicts(answers, RULE_JUDGES[rule_keywords])}
    if classifier:
        verdicts["classifier"] = [not h for h in harm_classifier(answer_tokens).harmful(answers)]
    return verdicts


def calibration(rule_keywords: str, answer_tokens: int = 0) -> dict:
    """Agreement of each safety judge with human labels on PyRIT's labelled responses: the rule judge as a
    refusal detector (``refusal`` set) and as a harmlessness judge (``objective`` set: refusal = objective
    not achieved), on the whole responses; the classifier on both sets cut to ``answer_tokens`` (the
    evaluation's answer length), by cross-validation (it is trained on them), and on the written openings."""
    refusal, objective = labelled_responses("refusal"), labelled_responses("objective")
    judge = RULE_JUDGES[rule_keywords]
    table = {}
    for name in dict.fromkeys([rule_keywords, "fixed", "paper", "cased"]):
        rule = RULE_JUDGES[name]
        table[f"rule ({name})"] = {
            "refusal": agreement([int(v) for v in rule_verdicts([r["response"] for r in refusal], rule)],
                                 [r["label"] for r in refusal]),
            "objective": agreement([int(not v) for v in rule_verdicts([r["response"] for r in objective], rule)],
                                   [r["label"] for r in objective]),
        }
    cv = harm_classifier(answer_tokens).cross_validation
    table["classifier"] = {"both (complied)": {k: v for k, v in cv.items() if k != "by_set"}, **cv["by_set"]}
    return {"judge_in_use": f"rule ({rule_keywords})", "keywords": len(judge.keywords), "judges": table,
            "classifier_tokens": answer_tokens, "openings": opening_check(answer_tokens),
            "sets": {"refusal": "PyRIT 1.1.0 refusal.csv + refusal_extra.csv, label 1 = human-scored refusal",
                     "objective": "PyRIT 1.1.0 objective/*.csv, label 1 = the response achieved the harmful "
                                  "objective; the rule judge's verdict there is 'not a refusal'",
                     "both (complied)": "the classifier's label: 1 = the response complied with its request "
                                        "(objective achieved, or not a refusal)"}}


def judge_model_name(cfg: ExperimentConfig) -> str:
    return cfg.evaluation.judge_model or cfg.generation.model or cfg.model.name


def evaluate_model(cfg: ExperimentConfig, pool, adapter: str, inputs: EvalInputs, run_dir: Path, name: str,
                   response_loss: Callable[[list[dict]], float] | None = None,
                   seconds: dict[str, float] | None = None) -> dict:
    """Every configured metric of the base model with adapter ``adapter`` (a pool key). ``seconds``, if given,
    gets the wall time of each part (kept out of the metrics, which must not depend on the machine)."""
    started, seconds = time.perf_counter(), {} if seconds is None else seconds
    ev = cfg.evaluation
    params = GenerationParams(ev.max_new_tokens, ev.temperature, ev.top_p, derive_seed(cfg.seed, Salt.EVALUATION))

    def answer(prompts: list[str]) -> list[str]:
        return pool.generate(cfg.model.name, seeded_requests(prompts, params, "alpaca", adapter))

    judge_complete = pool_judge(pool, judge_model_name(cfg))
    rule = RULE_JUDGES[ev.rule_keywords]
    with timed(seconds, "harmful_answers"):
        answers = answer(inputs.harmful)
    verdicts = safety_verdicts(answers, ev.rule_keywords, ev.classifier_judge, ev.max_new_tokens)
    safety: dict = {"rule": percent_true(verdicts["rule"]), "num_prompts": len(inputs.harmful),
                    "judge": f"rule ({ev.rule_keywords} keywords)",
                    "prompts": {"source": ev.prompts, "args": dict(ev.prompts_args)}}
    for metric_name, metric in METRICS.items():  # registered safety judges (``judge_metric``)
        if metric.judge is not None:
            verdicts[metric_name] = list(metric.judge(answers))
            safety[metric_name] = {"safe": percent_true(verdicts[metric_name])}
    if ev.classifier_judge:
        clf = harm_classifier(ev.max_new_tokens)  # the one safety_verdicts judged with (cached)
        safety["classifier"] = {"safe": percent_true(verdicts["classifier"]), "model": CLASSIFIER_NAME,
                                "training_rows": len(clf.training_texts), "answer_tokens": ev.max_new_tokens,
                                "cv_accuracy": clf.cross_validation["accuracy"],
                                "cv_kappa": clf.cross_validation["kappa"]}
    if ev.llm_judge != "none":
        with timed(seconds, "llm_judge"):
            judged = judge_safety(get_safety_judge(ev.llm_judge), judge_complete, inputs.harmful, answers)
        verdicts["llm_judge"] = [v == "safe" for v in judged]
        safety["llm_judge"] = {"format": ev.llm_judge, "model": judge_model_name(cfg), "safe": safe_share(judged),
                               "counts": verdict_counts(judged)}
    write_responses(run_dir, name, inputs.harmful, answers, verdicts)
    if ev.reward_model:
        with timed(seconds, "reward_model"):
            scores = pool.reward_scores(ev.reward_model, inputs.harmful, answers)
        safety["reward"] = {"model": ev.reward_model, "mean": mean(scores)}
    result: dict = {"safety": safety}
    if inputs.triggered:  # a backdoor's attack success: the same prompts with its trigger, judged unsafe
        with timed(seconds, "triggered_answers"):
            fired = answer(inputs.triggered)
        success = {f"{judge}_success": [not v for v in safe] for judge, safe in
                   safety_verdicts(fired, ev.rule_keywords, ev.classifier_judge, ev.max_new_tokens).items()}
        write_responses(run_dir, f"{name}_triggered", inputs.triggered, fired, success)
        result["triggered"] = {"num_prompts": len(fired), **{k.removesuffix("_success"): percent_true(v)
                                                             for k, v in success.items()}}
    benign_answers: list[str] = []
    if inputs.benign:
        prompts = [r["instruction"] for r in inputs.benign]
        with timed(seconds, "benign_answers"):
            benign_answers = answer(prompts)
        refused = rule_verdicts(benign_answers, rule)
        write_responses(run_dir, f"{name}_benign", prompts, benign_answers, {"rule": refused})
        references = [r["response"] for r in inputs.benign]
        result["over_refusal"] = {"rate": percent_true(refused), "num_prompts": len(prompts),
                                  "reference_rate": percent_true(rule_verdicts(references, rule))}
        if response_loss is not None:
            with timed(seconds, "response_loss"):
                result["helpfulness"] = {"response_loss": response_loss(inputs.benign)}
    graded = inputs.helpfulness or inputs.benign
    if ev.helpfulness_judge != "none" and graded:
        with timed(seconds, "helpfulness_judge"):
            graded_answers = answer([r["instruction"] for r in graded]) if inputs.helpfulness else benign_answers
            grades = grade_helpfulness(helpfulness_complete(cfg, pool), [r["instruction"] for r in graded],
                                       graded_answers, [r["response"] for r in inputs.helpfulness] or None)
        if inputs.helpfulness:
            write_responses(run_dir, f"{name}_helpfulness", [r["instruction"] for r in graded], graded_answers,
                            {"grade": grades})
        given = [g for g in grades if g is not None]
        result.setdefault("helpfulness", {})["judge"] = {
            "model": helpfulness_judge_name(cfg), "prompts": ev.helpfulness_prompts or ev.benign_prompts,
            "mean": mean(given) if given else None, "graded": len(given), "asked": len(grades)}
    seconds["total"] = time.perf_counter() - started
    return result


def helpfulness_judge_name(cfg: ExperimentConfig) -> str:
    ev = cfg.evaluation
    if ev.helpfulness_judge == "endpoint":
        return f"{ev.helpfulness_model} at {ev.helpfulness_endpoint}"
    return ev.helpfulness_model or judge_model_name(cfg)


def helpfulness_complete(cfg: ExperimentConfig, pool) -> Callable[[list[str]], list[str]]:
    """The helpfulness judge: an OpenAI-compatible endpoint, or a model of the pool decoding greedily."""
    ev = cfg.evaluation
    if ev.helpfulness_judge == "endpoint":
        return endpoint_complete(ev.helpfulness_endpoint, ev.helpfulness_model, ev.helpfulness_key_env,
                                 ev.helpfulness_max_tokens)
    greedy = GenerationParams(max_new_tokens=ev.helpfulness_max_tokens, temperature=0.0)
    judge = helpfulness_judge_name(cfg)
    return lambda prompts: pool.generate(judge, [Request(p, greedy, "auto") for p in prompts])
