"""What a defense is: hooks at the stages where the server may act (docs/method.md#defenses).

- ``before_training(ctx)``: once, before round 0 (e.g. make defense data that needs no trained model);
  it may return a new starting adapter (hardening), which the rounds then start from;
- ``aggregate_hook()``: an object the coordinator applies to each round's aggregate before the step
  (``AggregateHook``: the safety projection), or None;
- ``screen(ctx, view)``: each round, after the clients' uploads arrive and before the rule sees
  them (``RoundUploads``); returns what to do with which update (``Screened``: behavioural screening);
- ``on_round(ctx, round_idx, record)``: on the server after each round's aggregation, with the round's
  record (sampled clients, weights, rejections); it may add entries to the record;
- ``after_training(ctx, global_ref)``: once, after the last round; returns the global adapter to
  evaluate (the post-hoc fine-tune returns the fine-tuned one).

``summary()`` is what the defense reports into the arm's results (data sizes, synthesis counts); an entry
under the defense's own name is also its cost record (``defense_cost``).
What a defense declares, so that nothing else names it: ``data(cfg)``, the data sets it loads (the
preflight checks them before Ray and the rehearsal points hub ones at local copies); ``salt``, the seed salt
of its own random streams (distinct from every other, tested); its settings, either a section of
``DefenseConfig`` or ``defense.params.<name>`` read with ``defense_params``.
``round_key()``: the settings that change the federated rounds ({} when the defense only acts after the
last round), so that arms whose rounds are the same share them (``fedsafe.matrix``); ``changes_rounds``
is whether it has any. A defense never imports Ray: everything it may ask of the cluster comes in
``ServerContext``. ``DefenseBase`` is neutral at every stage; a defense overrides the stages it acts at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, TypeVar

import torch

from fedsafe.data.synthesis import Synthesizer
from fedsafe.errors import ConfigError
from fedsafe.requests import Request
from fedsafe.specs import DataRef
from fedsafe.training.lora import AdapterSpec
from fedsafe.updates import ClientTask

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig

P = TypeVar("P")


def defense_params(cfg: DefenseConfig, name: str, params_type: type[P]) -> P:
    """The typed settings of defense ``name``, from ``defense.params.<name>`` (its dataclass checks them)."""
    try:
        return params_type(**dict(cfg.params.get(name, {})))
    except TypeError as err:
        raise ConfigError(f"defense.params.{name}: {err}") from None


@dataclass
class ServerContext:
    """The server's means, bound by the loop.

    ``train(global_ref, task)``: runs ``task`` on a trainer from the adapter ``global_ref`` and returns the
    reference of that adapter plus the trained delta. ``register_adapter(global_ref)``: the generation pool's
    key for the adapter (to generate through it). ``generate(requests)``: the base model's answers (each
    request through its adapter key). ``judge(answers)``: per safety judge (``rule``, ``classifier``) the
    verdicts on answers to harmful prompts, True = safe. ``check_data(records)``: raises if evaluation
    prompts occur in ``records``. ``initial``: the reference of the adapter the rounds start from;
    ``fetch(ref)``: its tensor; ``spec``: the adapter's layout. ``training``: the instructions of every
    client's data (and of defense data made so far), which screening canaries must avoid. ``rounds_left``:
    False when the federated run is already finished (a defense that only shapes the rounds then has
    nothing to prepare). ``data_seed`` seeds the defense data, ``seed`` its training."""

    seed: int
    max_length: int
    held_out: list[str]
    synthesizer: Synthesizer | None
    train: Callable[[Any, ClientTask], Any]
    register_adapter: Callable[[Any], str]
    check_data: Callable[[list[dict]], None]
    data_seed: int | None = None  # None: seed
    initial: Any = None
    fetch: Callable[[Any], torch.Tensor] | None = None
    spec: AdapterSpec | None = None
    generate: Callable[[list[Request]], list[str]] | None = None
    judge: Callable[[list[str]], dict[str, list[bool]]] | None = None
    training: list[str] = field(default_factory=list)
    rounds_left: bool = True

    @property
    def defense_seed(self) -> int:
        """The seed of defense data (``data_seed``, else ``seed``)."""
        return self.seed if self.data_seed is None else self.data_seed


@dataclass(frozen=True)
class RoundUploads:
    """What a screening defense sees of a round: the clients whose uploads arrived sound (id order), the
    global adapter's reference, and ``candidate(client)``: the reference of the global adapter plus that
    client's upload (after any collusion: what the server received)."""

    round_idx: int
    clients: list[int]
    global_ref: Any
    candidate: Callable[[int], Any]


@dataclass
class Screened:
    """A screening's decision for one round: updates to leave out (client -> reason), updates to scale
    (client -> factor), and what to record in the round's record under ``screening``."""

    reject: dict[int, str] = field(default_factory=dict)
    scale: dict[int, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


class AggregateHook(Protocol):
    """Applied by the coordinator to each round's aggregate (a flat adapter step); returns the step to take
    and what to record in the round's record under ``name``."""

    name: str

    def apply(self, step: torch.Tensor) -> tuple[torch.Tensor, dict]: ...


class Defense(Protocol):
    changes_rounds: bool
    hooks_aggregate: bool  # its aggregate hook acts on the factor aggregate (aggregation.mode=factors only)

    def before_training(self, ctx: ServerContext) -> Any | None: ...

    def aggregate_hook(self) -> AggregateHook | None: ...

    def screen(self, ctx: ServerContext, view: RoundUploads) -> Screened | None: ...

    def on_round(self, ctx: ServerContext, round_idx: int, record: dict) -> None: ...

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any: ...

    def summary(self) -> dict: ...

    def round_key(self) -> dict: ...


class DefenseBase:
    """Every stage neutral: the aggregated adapter is evaluated as it is (``none``)."""

    salt: ClassVar[int | None] = None  # the seed salt of the defense's own streams, if it draws any
    hooks_aggregate: ClassVar[bool] = False  # its aggregate_hook acts on the factor aggregate (once trained)

    def __init__(self, cfg: DefenseConfig | None = None) -> None:
        pass

    @classmethod
    def data(cls, cfg: DefenseConfig) -> list[DataRef]:
        """The data sets the defense loads under ``cfg``."""
        return []

    def before_training(self, ctx: ServerContext) -> Any | None:
        return None

    def aggregate_hook(self) -> AggregateHook | None:
        return None

    def screen(self, ctx: ServerContext, view: RoundUploads) -> Screened | None:
        return None

    def on_round(self, ctx: ServerContext, round_idx: int, record: dict) -> None:
        pass

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any:
        return global_ref

    def summary(self) -> dict:
        return {}

    def round_key(self) -> dict:
        return {}

    @property
    def changes_rounds(self) -> bool:
        return bool(self.round_key())


class NoDefense(DefenseBase):
    """``none``."""


class Composed(DefenseBase):
    """Several defenses (``defense.name: a+b``), each at its stages, in the order given: a new starting
    adapter from one is the next one's ``ctx.initial``; at most one screens and one hooks the aggregate."""

    def __init__(self, parts: list[Defense]) -> None:
        self.parts = parts
        self.hooks_aggregate = any(p.hooks_aggregate for p in parts)

    def before_training(self, ctx: ServerContext) -> Any | None:
        start = None
        for part in self.parts:
            if (new := part.before_training(ctx)) is not None:
                start = ctx.initial = new
        return start

    def aggregate_hook(self) -> AggregateHook | None:
        return next((h for p in self.parts if (h := p.aggregate_hook()) is not None), None)

    def screen(self, ctx: ServerContext, view: RoundUploads) -> Screened | None:
        return next((s for p in self.parts if (s := p.screen(ctx, view)) is not None), None)

    def on_round(self, ctx: ServerContext, round_idx: int, record: dict) -> None:
        for part in self.parts:
            part.on_round(ctx, round_idx, record)

    def after_training(self, ctx: ServerContext, global_ref: Any) -> Any:
        for part in self.parts:
            global_ref = part.after_training(ctx, global_ref)
        return global_ref

    def summary(self) -> dict:
        return {k: v for part in self.parts for k, v in part.summary().items()}

    def round_key(self) -> dict:
        return {k: v for part in self.parts for k, v in part.round_key().items()}
