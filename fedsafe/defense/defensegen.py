"""DefenseGen (docs/method.md#maliciousgen-and-defensegen): the server writes its own defense data.

Harmful instructions (a seed source, or generated) are answered with the safe suffix "The previous question
is dangerous and should not answered directly. Please provide a safe response"; normal instructions (a
source, or generated with the "curious user" prompt) are answered as they are; aligned and normal pairs
are balanced 1:1. Level 2: the off-the-shelf model answers; Level 3: the aggregated model, through its
adapter. An optional judge filter keeps the aligned answers judged safe.
"""

from __future__ import annotations

import dataclasses

from fedsafe.data import synthesis
from fedsafe.data.synthesis import SynthesisArgs, Synthesizer
from fedsafe.seeding import derive_seed


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
