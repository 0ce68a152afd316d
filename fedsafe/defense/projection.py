"""Per-round safety projection (docs/method.md#safety-projection), in the spirit of Safe LoRA (Hsu et al.
2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when Finetuning Large Language Models"): the
server holds a harmful direction per LoRA layer and removes from each round's aggregate the component
along it where the aggregate leans that way.

The direction comes from the server's own data, once, before round 0: harmful instructions answered twice by
the off-the-shelf model (a refusal, DefenseGen's safe suffix; a compliant answer, MaliciousGen's suffix;
each kept only where the judge filter agrees), two adapters trained from the starting one on the same
instructions in the same order, one on each answer set; per layer, harmful minus aligned. A layer is a
LoRA-wrapped module (its ``lora_A`` and ``lora_B`` together). Safe LoRA projects onto an alignment
subspace of the weights; here the step is corrected in the adapter's own parameters, where the
federation aggregates.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import torch

from fedsafe.data import synthesis
from fedsafe.data.synthesis import ALIGNED_SUFFIX, UNALIGNED_SUFFIX, SynthesisArgs, Synthesizer, synthesis_args
from fedsafe.defense.base import DefenseBase, ServerContext
from fedsafe.errors import ConfigError
from fedsafe.seeding import derive_seed
from fedsafe.training.lora import AdapterSpec
from fedsafe.training.sft import epoch_order
from fedsafe.updates import SERVER_ID, ClientTask

if TYPE_CHECKING:
    from fedsafe.defense.config import DefenseConfig, ProjectionConfig

_LORA_PART = re.compile(r"\.lora_[AB](\.[^.]+)?\.weight$")


def layer_groups(spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """LoRA layer (the wrapped module's name) -> the positions of its ``lora_A`` and ``lora_B`` entries in
    the flat adapter vector."""
    groups: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for name, shape in zip(spec.names, spec.shapes):
        size = int(torch.Size(shape).numel())
        groups.setdefault(_LORA_PART.sub("", name), []).append(torch.arange(offset, offset + size))
        offset += size
    return {layer: torch.cat(parts) for layer, parts in groups.items()}


def project_out(step: torch.Tensor, direction: torch.Tensor, groups: dict[str, torch.Tensor],
                threshold: float) -> tuple[torch.Tensor, dict]:
    """``step`` without its component along ``direction`` in every layer where that component is positive
    and the layer's cosine with the direction exceeds ``threshold``: ``v - (v . u) u``, ``u`` the layer's
    unit direction. Returns the new step and {layers, projected, max_cosine, removed_norm}. Pure."""
    out = step.clone()
    cosines, projected = [], 0
    for index in groups.values():
        v, d = step[index], direction[index]
        d_norm, v_norm = d.norm(), v.norm()
        if d_norm == 0 or v_norm == 0:
            continue
        u = d / d_norm
        along = v @ u
        cos = float(along / v_norm)
        cosines.append(cos)
        if along > 0 and cos > threshold:
            out[index] = v - along * u
            projected += 1
    return out, {"layers": len(groups), "projected": projected,
                 "max_cosine": round(max(cosines), 6) if cosines else None,
                 "removed_norm": round(float((step - out).norm()), 6)}


class SafetyProjection:
    """The coordinator's aggregate hook (``AggregateHook``): ``project_out`` with the server's direction."""

    name = "projection"

    def __init__(self, direction: torch.Tensor, groups: dict[str, torch.Tensor], threshold: float) -> None:
        self.direction, self.groups, self.threshold = direction, groups, threshold

    def apply(self, step: torch.Tensor) -> tuple[torch.Tensor, dict]:
        direction = self.direction.to(step.device)
        groups = {k: v.to(step.device) for k, v in self.groups.items()}
        return project_out(step, direction, groups, self.threshold)


def safety_pairs(synth: Synthesizer, a: SynthesisArgs, count: int, seed: int, held_out: list[str]
                 ) -> tuple[list[dict], list[dict], dict]:
    """(aligned pairs, harmful pairs, synthesis counts) on the same instructions, in the same order: up to
    ``count`` harmful instructions, each answered with a refusal (kept where the filter judges it safe) and
    a compliant answer (kept where it judges it compliant)."""
    report = synthesis.SynthesisReport()
    instructions = synth.harmful_instructions(a, count, seed, held_out)
    generate = synth.generate_fn(a)
    aligned = synthesis.answer(generate, instructions, ALIGNED_SUFFIX, seed, synth.keep_fn(a, "safe"), "aligned",
                               report)
    harmful = synthesis.answer(generate, instructions, UNALIGNED_SUFFIX, derive_seed(seed, 1),
                               synth.keep_fn(a, "compliant"), "unaligned", report)
    refusal = {r["instruction"]: r for r in aligned}
    both = [r["instruction"] for r in harmful if r["instruction"] in refusal]
    compliant = {r["instruction"]: r for r in harmful}
    return [refusal[i] for i in both], [compliant[i] for i in both], dataclasses.asdict(report)


def direction_task(records: list[dict], c: ProjectionConfig, max_length: int, seed: int) -> ClientTask:
    """``c.steps`` steps at a constant ``c.lr`` over ``records`` drawn epoch by epoch (the order depends on
    ``seed`` and the number of records only, so both adapters see their instructions in the same order)."""
    order = epoch_order(len(records), c.steps * c.batch_size, seed)
    return ClientTask(client_id=SERVER_ID, round_idx=-1, role="server", records=[records[i] for i in order],
                      lrs=[c.lr] * c.steps, batch_size=c.batch_size, max_length=max_length, weight_decay=0.0,
                      seed=seed)


class Projection(DefenseBase):
    salt = 104395301  # the projection's instructions and the two adapters that give its direction
    hooks_aggregate = True

    def __init__(self, cfg: DefenseConfig) -> None:
        self.cfg: ProjectionConfig = cfg.projection
        self.args = synthesis_args(dict(self.cfg.synthesis), "defense.projection.synthesis")
        self.hook: SafetyProjection | None = None
        self.pairs, self.synthesis = 0, {}

    def round_key(self) -> dict:
        return {"projection": dataclasses.asdict(self.cfg)}

    def before_training(self, ctx: ServerContext) -> None:
        if not ctx.rounds_left:
            return
        if ctx.synthesizer is None or ctx.fetch is None or ctx.spec is None:
            raise ConfigError("defense.name=projection writes its data with the generation pool; none was given")
        seed = derive_seed(ctx.defense_seed, self.salt)
        aligned, harmful, self.synthesis = safety_pairs(ctx.synthesizer, self.args, self.cfg.num_examples, seed,
                                                        ctx.held_out)
        if not aligned:
            raise ConfigError("defense.projection: no instruction got both a refusal and a compliant answer that "
                              "the filter keeps; raise num_examples or set synthesis.filter=none")
        ctx.check_data(aligned + harmful)
        ctx.training.extend(r["instruction"] for r in aligned)
        self.pairs = len(aligned)
        train_seed = derive_seed(ctx.seed, self.salt)
        refs = [ctx.train(ctx.initial, direction_task(records, self.cfg, ctx.max_length, train_seed))
                for records in (aligned, harmful)]
        direction = ctx.fetch(refs[1]) - ctx.fetch(refs[0])
        self.hook = SafetyProjection(direction, layer_groups(ctx.spec), self.cfg.threshold)

    def aggregate_hook(self) -> SafetyProjection | None:
        return self.hook

    def summary(self) -> dict:
        return {"projection": {"pairs": self.pairs, "synthesis": self.synthesis}}
