"""DefenseGen (docs/method.md#maliciousgen-and-defensegen): the server writes its own defense data.

Harmful instructions (a seed source, or generated) are answered with the safe suffix "The previous question
is dangerous and should not answered directly. Please provide a safe response"; normal instructions (a
source, or generated with the "curious user" prompt) are answered as they are; aligned and normal pairs
are balanced 1:1. Level 2: the off-the-shelf model answers; Level 3: the aggregated model, through its
adapter. An optional judge filter keeps the aligned answers judged safe.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedsafe.data import synthesis
from fedsafe.data.sources import load_records
from fedsafe.data.synthesis import SynthesisArgs, Synthesizer
from fedsafe.defense.levels import DefenseLevel
from fedsafe.errors import ConfigError
from fedsafe.seeding import Salt, derive_seed

if TYPE_CHECKING:
    from fedsafe.defense.base import ServerContext
    from fedsafe.defense.config import DefenseConfig


def defensegen(synth: Synthesizer, a: SynthesisArgs, num_examples: int, seed: int, held_out: list[str],
               adapter: str | None = None) -> tuple[list[dict], dict]:
    """(records, synthesis counts): ``num_examples`` aligned + normal pairs, 1:1. ``adapter``: the pool key
    of the aggregated adapter (Level 3), None for the off-the-shelf model (Level 2)."""
    report = synthesis.SynthesisReport()
    half = -(-num_examples // 2)
    harmful = synth.harmful_instructions(a, half, seed, held_out)
    normal = synth.normal_instructions(a, half, derive_seed(seed, 1), held_out)
    generate = synth.generate_fn(a) if adapter is None else synth.global_model_fn(a, adapter)
    records = synthesis.defense_data(generate, harmful, normal, num_examples, seed, synth.keep_fn(a, "safe"), report)
    return records, dataclasses.asdict(report)


def defense_records(ctx: ServerContext, d: DefenseConfig, level: DefenseLevel, args: SynthesisArgs,
                    num_examples: int, adapter: str | None = None) -> tuple[list[dict], dict]:
    """(records, synthesis counts): the server's defense data of ``level`` (1: ``d.dataset`` as it is; 2, 3:
    DefenseGen with ``args``, Level 3 through the aggregated model's ``adapter``), checked to hold no
    evaluation prompt; its instructions join ``ctx.training``."""
    seed = derive_seed(ctx.defense_seed, Salt.DEFENSE)
    counts: dict = {}
    if level is DefenseLevel.PUBLIC:
        records = load_records(d.dataset, num_examples, seed, **d.dataset_args)
    else:
        if ctx.synthesizer is None:
            raise ConfigError(f"defense data of level {int(level)} is written by the generation pool; none was given")
        records, counts = defensegen(ctx.synthesizer, args, num_examples, seed, ctx.held_out, adapter)
    ctx.check_data(records)
    ctx.training.extend(r["instruction"] for r in records)
    return records, counts
