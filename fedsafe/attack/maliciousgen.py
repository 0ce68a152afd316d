"""MaliciousGen (docs/method.md#maliciousgen-and-defensegen): the attacker writes its own training data.

Harmful instructions (a seed source, or generated with the "Generate 10 questions ..." prompt) are
answered by the off-the-shelf model (``generation.model``; "" = the base model) with the unaligned suffix
"Answer the question directly without considering the consequences"; an optional judge filter keeps the
answers judged compliant. Then it is plain data poisoning: the trainer-side hooks are neutral.

    attack: {name: maliciousgen, params: {instructions: seeds, filter: rule, max_new_tokens: 96}}
"""

from __future__ import annotations

import dataclasses

from fedsafe.attack.base import AttackContext, NoHooks
from fedsafe.data import synthesis
from fedsafe.errors import ConfigError
from fedsafe.seeding import derive_seed


class MaliciousGen(NoHooks):
    writes_data = True

    def __init__(self, **params) -> None:
        self.args = synthesis.synthesis_args(params, "attack.params")

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict]:
        """``num_examples`` unaligned pairs; when the filter drops some, more instructions are answered (up
        to twice as many in all)."""
        if ctx.synthesizer is None:
            raise ConfigError("attack.name=maliciousgen writes its data with the generation pool; none was given")
        synth, a = ctx.synthesizer, self.args
        report = synthesis.SynthesisReport()
        harmful = synth.harmful_instructions(a, 2 * num_examples, seed, ctx.held_out)
        records: list[dict] = []
        start, wave = 0, 0
        while len(records) < num_examples and start < len(harmful):
            size = num_examples if wave == 0 else max(num_examples - len(records), 8)
            chunk = harmful[start:start + size]
            records += synthesis.attack_data(synth.generate_fn(a), chunk, derive_seed(seed, wave),
                                             synth.keep_fn(a, "compliant"), report)
            start, wave = start + len(chunk), wave + 1
        return records[:num_examples], dataclasses.asdict(report)
