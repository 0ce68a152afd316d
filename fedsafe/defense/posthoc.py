"""The post-hoc defense (docs/method.md#post-hoc-defense): after the last round the server keeps
fine-tuning the aggregated adapter on its defense data, aligned and normal pairs 1:1, for
``defense.steps`` steps on a trainer: as the authors run it, ``defense.rounds`` rounds of one client (a
fresh random subset and a fresh AdamW each, lr cosine over the rounds), or one session (``schedule:
session``, lr cosine over the steps). It works on top of any aggregation rule. The data by ``defense.level``: 1 ``defense.dataset`` (a public set), 2 and 3
DefenseGen (``defense.synthesis``) by the off-the-shelf model or by the aggregated model itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedsafe.data.federation import round_subset
from fedsafe.data.synthesis import synthesis_args
from fedsafe.defense.base import DefenseBase, ServerContext
from fedsafe.defense.defensegen import defense_records
from fedsafe.defense.levels import DefenseLevel
from fedsafe.errors import ConfigError
from fedsafe.seeding import Salt, derive_seed
from fedsafe.specs import DataRef
from fedsafe.training.sft import cosine_lr, epoch_order
from fedsafe.updates import SERVER_ID, ClientTask

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig


def posthoc_task(cfg: DefenseConfig, records: list[dict], max_length: int, seed: int) -> ClientTask:
    """``schedule: session``: ``cfg.steps`` steps of ``cfg.batch_size`` records drawn epoch by epoch, lr cosine
    over the steps. Pure."""
    total = cfg.steps * cfg.batch_size
    order = epoch_order(len(records), total, seed)
    return ClientTask(
        client_id=SERVER_ID, round_idx=-1, role="server", records=[records[i] for i in order],
        lrs=[cosine_lr(step, cfg.steps, cfg.lr, cfg.min_lr) for step in range(cfg.steps)],
        batch_size=cfg.batch_size, max_length=max_length, weight_decay=0.0, seed=seed,
    )


def posthoc_round_tasks(cfg: DefenseConfig, records: list[dict], max_length: int, seed: int) -> list[ClientTask]:
    """``schedule: rounds``: ``cfg.rounds`` tasks (each trained with a fresh optimizer) of ``steps / rounds``
    steps on a random subset of ``batch_size x steps / rounds`` records, at the lr of a cosine over the
    rounds, constant inside one: the authors' FL script with one client. Pure."""
    steps = cfg.steps // cfg.rounds
    indices = list(range(len(records)))
    return [ClientTask(
        client_id=SERVER_ID, round_idx=r, role="server",
        records=[records[i] for i in round_subset(indices, cfg.batch_size * steps, seed, r, SERVER_ID)],
        lrs=[cosine_lr(r, cfg.rounds, cfg.lr, cfg.min_lr)] * steps,
        batch_size=cfg.batch_size, max_length=max_length, weight_decay=0.0, seed=derive_seed(seed, r),
    ) for r in range(cfg.rounds)]


class PosthocSFT(DefenseBase):
    @classmethod
    def data(cls, cfg: DefenseConfig) -> list[DataRef]:
        if cfg.level != DefenseLevel.PUBLIC:
            return []
        return [DataRef("defense.dataset", cfg.dataset, dict(cfg.dataset_args), cfg.num_examples,
                        "defense.num_examples")]

    def __init__(self, cfg: DefenseConfig) -> None:
        self.cfg = cfg
        self.level = DefenseLevel(cfg.level)
        self.args = synthesis_args(dict(cfg.synthesis), "defense.synthesis")
        self.records: list[dict] = []
        self.synthesis: dict = {}

    def _make_data(self, ctx: ServerContext, adapter: str | None = None) -> None:
        self.records, self.synthesis = defense_records(ctx, self.cfg, self.level, self.args, self.cfg.num_examples,
                                                       adapter)

    def before_training(self, ctx: ServerContext) -> None:
        if not self.level.needs_trained_model:
            self._make_data(ctx)

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any:
        if self.level.needs_trained_model:
            self._make_data(ctx, ctx.register_adapter(global_ref))
        seed = derive_seed(ctx.seed, Salt.DEFENSE)
        if not self.records:
            raise ConfigError(f"defense level {self.cfg.level}: the judge filter kept none of the defense data "
                              "written; loosen defense.synthesis.filter or raise its max_new_tokens")
        if self.cfg.schedule == "session":
            return ctx.train(global_ref, posthoc_task(self.cfg, self.records, ctx.max_length, seed))
        for task in posthoc_round_tasks(self.cfg, self.records, ctx.max_length, seed):
            global_ref = ctx.train(global_ref, task)
        return global_ref

    def summary(self) -> dict:
        return {"level": int(self.level), "examples": len(self.records), "synthesis": self.synthesis}
