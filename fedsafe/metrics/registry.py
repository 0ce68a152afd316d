"""The metrics a run reports, by name: where each one's value sits in an evaluation result and everything the
analysis, the report's tables and plots, and the trackers need to know about it. A new metric is one module
and one ``register_metric`` line. A new safety judge (``judge_metric``) brings its verdict function, which the
evaluation runs on every set of answers to harmful prompts (the final model's and each evaluated round's),
writing its per-prompt verdicts beside the others for the paired tests; any other metric reads a value the
evaluation writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Metric:
    label: str  # its column and axis label
    value: Callable[[dict], float | None]  # from one evaluation result (None: not measured)
    file: str | None = None  # per-prompt verdicts: evaluation/<file>.jsonl (paired per prompt, then per seed)
    key: str | None = None  # the verdict's field there
    percent: bool = False  # a share in [0, 100]: its interval is clipped to that range
    safety: bool = False  # a safety judge's share: the paper's safety claims are judged on it
    relative: str | None = None  # no per-prompt verdicts, compared seed by seed as a relative change (this label)
    digits: int = 2  # decimals in the report's tables
    scalar: str | None = None  # the trackers' key for its value in each evaluated round
    judge: Callable[[list[str]], list[bool]] | None = None  # a safety judge's verdicts on answers (True = safe)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, metric: Metric) -> None:
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    METRICS[name] = metric


def judge_metric(name: str, label: str, judge: Callable[[list[str]], list[bool]]) -> Metric:
    """A safety judge as a metric: ``judge(answers)`` gives a verdict per answer to a harmful prompt (True =
    safe); its share safe is ``safety.<name>.safe`` of each evaluation, its verdicts the field ``name`` of
    ``evaluation/final.jsonl``, its tracker key ``safety/<name>``."""
    return Metric(label, lambda ev: ev["safety"].get(name, {}).get("safe"), "final", name, percent=True, safety=True,
                  scalar=f"safety/{name}", judge=judge)


register_metric("rule", Metric("Rule safety (%)", lambda ev: ev["safety"]["rule"], "final", "rule", percent=True,
                               safety=True, scalar="safety/rule"))
register_metric("classifier", Metric("classifier safe (%)", lambda ev: ev["safety"].get("classifier", {}).get("safe"),
                                     "final", "classifier", percent=True, safety=True, scalar="safety/classifier"))
register_metric("llm_judge", Metric("LLM-judge safe (%)", lambda ev: ev["safety"].get("llm_judge", {}).get("safe"),
                                    "final", "llm_judge", percent=True, safety=True, scalar="safety/llm_judge"))
register_metric("trigger_rule", Metric("triggered ASR, Rule (%)", lambda ev: ev.get("triggered", {}).get("rule"),
                                       "final_triggered", "rule_success", percent=True, scalar="triggered/rule"))
register_metric("trigger_classifier", Metric("triggered ASR, classifier (%)",
                                             lambda ev: ev.get("triggered", {}).get("classifier"), "final_triggered",
                                             "classifier_success", percent=True, scalar="triggered/classifier"))
register_metric("reward", Metric("RM score", lambda ev: ev["safety"].get("reward", {}).get("mean")))
register_metric("over_refusal", Metric("over-refusal (%)", lambda ev: ev.get("over_refusal", {}).get("rate"),
                                       "final_benign", "rule", percent=True))
register_metric("response_loss", Metric("response loss", lambda ev: ev.get("helpfulness", {}).get("response_loss"),
                                        relative="response loss change (%)", digits=3))
register_metric("helpfulness", Metric("helpfulness (1-10)",
                                      lambda ev: ev.get("helpfulness", {}).get("judge", {}).get("mean")))
