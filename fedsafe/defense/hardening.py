"""Hardening before training (docs/method.md#hardening), in the spirit of Vaccine (Huang et al. 2024,
"Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful Fine-tuning"): before
round 0 the server safety-tunes the starting adapter on its defense data with a perturbation-aware
objective, so that the alignment survives small harmful perturbations of the hidden states (what harmful
fine-tuning causes); the rounds start from the hardened adapter. ``rho: 0`` is the plain safety SFT on the
same data and steps, the control it is compared with.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fedsafe.data.synthesis import synthesis_args
from fedsafe.defense.base import DefenseBase, ServerContext
from fedsafe.defense.defensegen import defense_records
from fedsafe.defense.levels import DefenseLevel
from fedsafe.seeding import derive_seed
from fedsafe.specs import DataRef
from fedsafe.training.sft import cosine_lr, epoch_order
from fedsafe.updates import SERVER_ID, ClientTask

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig, HardeningConfig


def hardening_task(c: HardeningConfig, records: list[dict], max_length: int, seed: int) -> ClientTask:
    """``c.steps`` perturbation-aware steps (``rho``) over ``records`` drawn epoch by epoch, lr cosine from
    ``c.lr`` to a tenth of it. Pure."""
    order = epoch_order(len(records), c.steps * c.batch_size, seed)
    return ClientTask(client_id=SERVER_ID, round_idx=-1, role="server", records=[records[i] for i in order],
                      lrs=[cosine_lr(s, c.steps, c.lr, c.lr / 10) for s in range(c.steps)],
                      batch_size=c.batch_size, max_length=max_length, weight_decay=0.0, seed=seed, rho=c.rho)


class Hardening(DefenseBase):
    salt = 122949823  # the hardening's data order and training

    @classmethod
    def data(cls, cfg: DefenseConfig) -> list[DataRef]:
        if cfg.hardening.level != DefenseLevel.PUBLIC:
            return []
        return [DataRef("defense.dataset", cfg.dataset, dict(cfg.dataset_args), cfg.hardening.num_examples,
                        "defense.hardening.num_examples")]

    def __init__(self, cfg: DefenseConfig) -> None:
        self.defense, self.cfg = cfg, cfg.hardening
        self.args = synthesis_args(dict(cfg.synthesis), "defense.synthesis")
        self.examples, self.synthesis = 0, {}

    def round_key(self) -> dict:
        data = {"dataset": self.defense.dataset, "dataset_args": dict(self.defense.dataset_args)} \
            if self.cfg.level == DefenseLevel.PUBLIC else {"synthesis": dict(self.defense.synthesis)}
        return {"hardening": {**dataclasses.asdict(self.cfg), **data}}

    def before_training(self, ctx: ServerContext) -> Any:
        if not ctx.rounds_left:
            return None
        records, self.synthesis = defense_records(ctx, self.defense, DefenseLevel(self.cfg.level), self.args,
                                                  self.cfg.num_examples)
        self.examples = len(records)
        task = hardening_task(self.cfg, records, ctx.max_length, derive_seed(ctx.seed, self.salt))
        return ctx.train(ctx.initial, task)

    def summary(self) -> dict:
        return {"hardening": {"examples": self.examples, "rho": self.cfg.rho, "synthesis": self.synthesis}}
