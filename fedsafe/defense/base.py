"""What a defense is: hooks at the stages where the server may act (docs/method.md#defenses).

- ``before_training(ctx)``: once, before round 0 (e.g. make defense data that needs no trained model);
- ``on_round(ctx, round_idx, record)``: on the server after each round's aggregation, with the round's
  record (sampled clients, weights, rejections); it may add entries to the record;
- ``after_training(ctx, global_ref)``: once, after the last round; returns the global adapter to
  evaluate (the post-hoc fine-tune returns the fine-tuned one).

``summary()`` is what the defense reports into the arm's results (data sizes, synthesis counts).
``changes_rounds``: False when ``on_round`` only observes, so the federated run is the undefended one and
arms with and without the defense share it (``fedsafe.matrix``); a defense that changes the rounds
sets it True.
A defense never imports Ray: everything it may ask of the cluster comes in ``ServerContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from fedsafe.data.synthesis import Synthesizer
from fedsafe.updates import ClientTask


@dataclass
class ServerContext:
    """The server's means, bound by the loop.

    ``train(global_ref, task)``: runs ``task`` on a trainer from the adapter ``global_ref`` and returns the
    reference of that adapter plus the trained delta. ``register_adapter(global_ref)``: the generation pool's
    key for the adapter (to generate through it). ``check_data(records)``: raises if evaluation prompts
    occur in ``records``. ``data_seed`` seeds the defense data, ``seed`` its training."""

    seed: int
    max_length: int
    held_out: list[str]
    synthesizer: Synthesizer | None
    train: Callable[[Any, ClientTask], Any]
    register_adapter: Callable[[Any], str]
    check_data: Callable[[list[dict]], None]
    data_seed: int | None = None  # None: seed


class Defense(Protocol):
    changes_rounds: bool

    def before_training(self, ctx: ServerContext) -> None: ...

    def on_round(self, ctx: ServerContext, round_idx: int, record: dict) -> None: ...

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any: ...

    def summary(self) -> dict: ...


class NoDefense:
    """Every stage neutral: the aggregated adapter is evaluated as it is."""

    changes_rounds = False

    def before_training(self, ctx: ServerContext) -> None:
        pass

    def on_round(self, ctx: ServerContext, round_idx: int, record: dict) -> None:
        pass

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any:
        return global_ref

    def summary(self) -> dict:
        return {}
