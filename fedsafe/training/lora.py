"""The one boundary between PEFT models and fedsafe's update format.

An adapter travels as a flat float32 vector ``[d]`` plus an ``AdapterSpec`` (ordered names and shapes of
PEFT's adapter state dict, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), so
aggregation rules see plain matrices and checkpoints are ordinary PEFT adapter folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedsafe.specs import LoRAConfig


@dataclass(frozen=True)
class AdapterSpec:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)


def make_lora_model(base, cfg: LoRAConfig, seed: int):
    """Wrap ``base`` with a fresh LoRA adapter; the initial A matrices depend only on ``seed``."""
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules) or None, task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(base, peft_cfg)


def named_to_vector(named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, AdapterSpec]:
    names = tuple(named)
    spec = AdapterSpec(names=names, shapes=tuple(tuple(named[n].shape) for n in names))
    vector = torch.cat([named[n].detach().reshape(-1).to(torch.float32) for n in names])
    return vector, spec


def vector_to_named(vector: torch.Tensor, spec: AdapterSpec) -> dict[str, torch.Tensor]:
    if vector.shape != (spec.numel,):
        raise ValueError(f"adapter vector has shape {list(vector.shape)}, the spec expects [{spec.numel}]")
    sizes = [int(torch.Size(s).numel()) for s in spec.shapes]
    parts = torch.split(vector, sizes)
    return {n: p.reshape(s).clone() for n, p, s in zip(spec.names, parts, spec.shapes)}


def get_adapter_vector(model) -> tuple[torch.Tensor, AdapterSpec]:
    from peft import get_peft_model_state_dict

    return named_to_vector(get_peft_model_state_dict(model))


def set_adapter_vector(model, vector: torch.Tensor, spec: AdapterSpec) -> None:
    from peft import set_peft_model_state_dict

    named = vector_to_named(vector, spec)
    result = set_peft_model_state_dict(model, named)
    if result.unexpected_keys:
        raise ValueError(f"adapter names do not match the model: {result.unexpected_keys[:3]} ...")


def peft_config_dict(model) -> dict:
    """The adapter's PEFT config as JSON-ready dict (written beside checkpoints as adapter_config.json)."""
    cfg = model.peft_config["default"].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
