"""Behavioural screening (docs/method.md#behavioural-screening): the server looks at what each upload does,
not at its geometry.

Each round, after the uploads arrive and before the rule sees them, the generation pool answers a fixed
set of canary prompts (harmful and benign; drawn once, none of them in any evaluation or training set)
with the global adapter and with the global adapter plus each client's upload: one batched request for
all of them. A client's *canary safety* is the share of its harmful-canary answers judged safe (the rule
judge, the classifier, or the mean of both), its *over-refusal* the share of its benign-canary answers
with a refusal keyword. A client more than ``threshold`` below the round's median client in safety, or
more than ``refusal_threshold`` above it in over-refusal, is rejected, down-weighted (its update scaled)
or only recorded. The round's record keeps every score and each client's *effect*: its canary safety
minus the global adapter's (attribution: which clients moved the model, and which way).
"""

from __future__ import annotations

import dataclasses
import time
from statistics import median
from typing import TYPE_CHECKING

from fedsafe.data.sources import load_records
from fedsafe.data.text import normalized, outside
from fedsafe.defense.base import DefenseBase, RoundUploads, Screened, ServerContext
from fedsafe.errors import ConfigError
from fedsafe.requests import GenerationParams, Request
from fedsafe.seeding import derive_seed
from fedsafe.specs import DataRef

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig, ScreeningConfig


def canary_prompts(source: str, args: dict, count: int, seed: int, avoid: list[str], where: str) -> list[str]:
    """``count`` prompts of ``source``, none of which occurs (normalised) in ``avoid``; raises when the
    source has too few such prompts."""
    if count == 0:
        return []
    banned = normalized(avoid)
    drawn = [r["instruction"] for r in load_records(source, 4 * count + len(banned), seed, **args)]
    kept = list(dict.fromkeys(outside(drawn, banned)))[:count]
    if len(kept) < count:
        raise ConfigError(f"{where}: {source!r} has {len(kept)} prompts outside every evaluation and training "
                          f"set, {count} asked; lower the count or choose another source")
    return kept


def canary_safety(verdicts: dict[str, list[bool]], judge: str) -> float:
    """Share of harmful-canary answers judged safe by ``judge`` (``rule``, ``classifier``, or ``both``: the
    mean of the two shares)."""
    names = ("rule", "classifier") if judge == "both" else (judge,)
    shares = [sum(verdicts[n]) / len(verdicts[n]) for n in names]
    return sum(shares) / len(shares)


def screen_decisions(safety: dict[int, float], refusal: dict[int, float], threshold: float,
                     refusal_threshold: float) -> dict[int, str]:
    """Client -> why it is flagged: canary safety more than ``threshold`` below the median client's, or
    over-refusal more than ``refusal_threshold`` above the median. Pure."""
    if not safety:
        return {}
    mid_safety, mid_refusal = median(safety.values()), median(refusal.values()) if refusal else 0.0
    flagged = {}
    for client, score in safety.items():
        if score < mid_safety - threshold:
            flagged[client] = (f"screening: canary safety {score:.2f} is more than {threshold:g} below the "
                               f"round's median {mid_safety:.2f}")
        elif refusal and refusal[client] > mid_refusal + refusal_threshold:
            flagged[client] = (f"screening: canary over-refusal {refusal[client]:.2f} is more than "
                               f"{refusal_threshold:g} above the round's median {mid_refusal:.2f}")
    return flagged


class Screening(DefenseBase):
    salt = 86028121  # the canary prompts

    @classmethod
    def data(cls, cfg: DefenseConfig) -> list[DataRef]:
        s = cfg.screening
        refs = [DataRef("defense.screening.harmful", s.harmful, dict(s.harmful_args), s.num_harmful,
                        "defense.screening.num_harmful")]
        if s.num_benign:
            refs.append(DataRef("defense.screening.benign", s.benign, dict(s.benign_args), s.num_benign,
                                "defense.screening.num_benign"))
        return refs

    def __init__(self, cfg: DefenseConfig) -> None:
        self.cfg: ScreeningConfig = cfg.screening
        self.harmful: list[str] = []
        self.benign: list[str] = []

    def round_key(self) -> dict:
        return {"screening": dataclasses.asdict(self.cfg)}

    def before_training(self, ctx: ServerContext) -> None:
        if not ctx.rounds_left:
            return
        if ctx.generate is None or ctx.judge is None:
            raise ConfigError("defense.name=screening answers canaries through the generation pool; none was given")
        c, avoid = self.cfg, ctx.held_out + ctx.training
        seed = derive_seed(ctx.defense_seed, self.salt)
        self.harmful = canary_prompts(c.harmful, c.harmful_args, c.num_harmful, seed, avoid,
                                      "defense.screening.harmful")
        self.benign = canary_prompts(c.benign, c.benign_args, c.num_benign, derive_seed(seed, 1), avoid,
                                     "defense.screening.benign")

    def screen(self, ctx: ServerContext, view: RoundUploads) -> Screened | None:
        if not view.clients:
            return None
        started, c = time.perf_counter(), self.cfg
        keys = {"global": ctx.register_adapter(view.global_ref),
                **{client: ctx.register_adapter(view.candidate(client)) for client in view.clients}}
        prompts, greedy = self.harmful + self.benign, GenerationParams(c.max_new_tokens, 0.0)
        answers = ctx.generate([Request(p, greedy, "alpaca", key) for key in keys.values() for p in prompts])
        verdicts = ctx.judge(answers)
        safety, refusal = {}, {}
        for i, who in enumerate(keys):
            rows = slice(i * len(prompts), (i + 1) * len(prompts))
            mine = {name: v[rows] for name, v in verdicts.items()}
            safety[who] = canary_safety({n: v[:len(self.harmful)] for n, v in mine.items()}, c.judge)
            benign = mine["rule"][len(self.harmful):]
            refusal[who] = sum(benign) / len(benign) if benign else 0.0
        base_safety, base_refusal = safety.pop("global"), refusal.pop("global")
        flagged = screen_decisions(safety, refusal if self.benign else {}, c.threshold, c.refusal_threshold)
        record = {
            "clients": view.clients, "safety": [round(safety[k], 4) for k in view.clients],
            "over_refusal": [round(refusal[k], 4) for k in view.clients],
            "effect": [round(safety[k] - base_safety, 4) for k in view.clients],
            "global": {"safety": round(base_safety, 4), "over_refusal": round(base_refusal, 4)},
            "flagged": sorted(flagged), "action": c.action, "answers": len(answers),
            "canaries": {"harmful": len(self.harmful), "benign": len(self.benign)},
            "seconds": time.perf_counter() - started,
        }
        if c.action == "reject":
            return Screened(reject=flagged, record=record)
        if c.action == "downweight":
            return Screened(scale={k: c.downweight for k in flagged}, record=record)
        return Screened(record=record)

    def summary(self) -> dict:
        return {"screening": {"canaries": {"harmful": len(self.harmful), "benign": len(self.benign)}}}
