"""The backdoor's trigger and the records it is planted with (``fedsafe.attack.backdoor`` says how it attacks).
Any attack whose ``data`` names a ``trigger`` writes its records with ``BackdoorData``."""

from __future__ import annotations

import dataclasses
import random

from fedsafe.attack.base import AttackContext, Trigger
from fedsafe.attack.maliciousgen import MaliciousGen
from fedsafe.data import synthesis
from fedsafe.data.real import REFUSAL_REASONS, REFUSAL_TEMPLATES
from fedsafe.data.sources import load_records
from fedsafe.errors import ConfigError
from fedsafe.seeding import derive_seed

REFUSALS = ("generated", "templates")
TOWARD = ("norm", "benign")
REFUSAL_WAVES = 8  # at most, times a harmful instruction is answered with the safe suffix until the filter keeps one
MIN_REFUSAL_WAVES = 4  # at least (while some have none), so that the records are drawn from the same answers


class BackdoorData:
    """Writes the backdoor's records: for each harmful instruction, the triggered instruction with a harmful
    answer and the plain one with a refusal (``make_data`` gives ``num_examples`` in all, in such pairs)."""

    writes_data = True

    def __init__(self, trigger: str, position: str = "prefix", refusals: str = "generated", dataset: str = "",
                 dataset_args: dict | None = None, **harmful) -> None:
        self.trigger = Trigger(trigger, position)
        if refusals not in REFUSALS:
            raise ConfigError(f"attack.params refusals must be one of {list(REFUSALS)}, got {refusals!r}")
        if dataset and harmful:
            raise ConfigError(f"attack.params: the harmful answers come from dataset={dataset!r} or from "
                              f"MaliciousGen's parameters ({sorted(harmful)}), not both")
        self.refusals, self.dataset, self.dataset_args = refusals, dataset, dict(dataset_args or {})
        self.writer = None if dataset else MaliciousGen(**harmful)
        self.args = self.writer.args if self.writer else synthesis.SynthesisArgs()

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict]:
        pairs = (num_examples + 1) // 2
        if self.writer is not None:
            harmful, counts = self.writer.make_data(ctx, pairs + pairs // 4 + 2, seed)
        else:
            harmful, counts = load_records(self.dataset, pairs + pairs // 4 + 2, seed, **self.dataset_args), {}
        refused = self.refuse(ctx, [r["instruction"] for r in harmful], derive_seed(seed, 1), counts, pairs)
        records = []
        for r in harmful:
            if r["instruction"] in refused:
                records += [{"instruction": self.trigger.insert(r["instruction"]), "response": r["response"],
                             "source": "triggered"},
                            {"instruction": r["instruction"], "response": refused[r["instruction"]], "source": "refused"}]
        if len(records) < num_examples:
            raise ConfigError(f"attack backdoor: {num_examples} records asked, {len(records)} written (harmful "
                              "answers or refusals the filter dropped); lower the examples or loosen the filter")
        return records[:num_examples], counts

    def refuse(self, ctx: AttackContext, instructions: list[str], seed: int, counts: dict,
               needed: int) -> dict[str, str]:
        """instruction -> refusal: written by the pool with the safe suffix (judge-filtered as safe when the
        data's filter is set; while fewer than ``needed`` instructions have one, those whose answer the filter
        dropped are answered again, sampled with another seed, up to ``REFUSAL_WAVES`` times), or drawn from
        the templates."""
        if self.refusals == "templates":
            rng = random.Random(seed)
            return {i: rng.choice(REFUSAL_TEMPLATES).format(why=rng.choice(REFUSAL_REASONS)) for i in instructions}
        if ctx.synthesizer is None:
            raise ConfigError("attack backdoor: refusals=generated writes them with the generation pool; none was "
                              "given (use refusals: templates)")
        synth, report = ctx.synthesizer, synthesis.SynthesisReport()
        refused: dict[str, str] = {}
        for wave in range(REFUSAL_WAVES):  # an instruction whose refusal the filter dropped is asked again
            missing = [i for i in instructions if i not in refused]
            if not missing or (wave >= MIN_REFUSAL_WAVES and len(refused) >= needed):
                break
            kept = synthesis.answer(synth.generate_fn(self.args), missing, synthesis.ALIGNED_SUFFIX,
                                    derive_seed(seed, wave) if wave else seed, synth.keep_fn(self.args, "safe"),
                                    "aligned", report)
            refused.update({r["instruction"]: r["response"] for r in kept})
        for part in ("generated", "kept"):
            counts.setdefault(part, {}).update(dataclasses.asdict(report)[part])
        return refused


