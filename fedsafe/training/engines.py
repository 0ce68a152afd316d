"""Training engines: how one trainer process runs a client's optimizer steps (``trainer.engine``).

    torch      AdamW in plain PyTorch (``fedsafe.training.sft.train_steps``); in a group of processes each
               takes a slice of every batch and gradients are all-reduced (NCCL on GPUs, gloo on CPUs)
    deepspeed  the same steps through a DeepSpeed engine with ZeRO stage 0, 2 or 3 and optional CPU offload

One engine lives as long as its trainer actor and serves every client: ``set_adapter`` loads the global
adapter (and, under DeepSpeed, refreshes ZeRO's fp32 master copy), ``train`` starts a fresh AdamW (the
optimizer state is cleared), ``get_adapter`` gathers the LoRA weights (ZeRO-3 partitions them) on every
rank. Every rank of a group must make the same calls in the same order.

    engine = build_engine("torch", peft_model, TrainerConfig(), rank=0, world_size=1)
    engine.set_adapter(vector, spec); losses = engine.train(batches, lrs, 0.0, seed); engine.get_adapter()
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from fedsafe.training.lora import AdapterSpec, get_adapter_vector, set_adapter_vector
from fedsafe.training.sft import mean_over_ranks, rank_loss, response_loss, train_steps

if TYPE_CHECKING:
    from fedsafe.specs import TrainerConfig


class TorchEngine:
    def __init__(self, model, cfg: TrainerConfig, rank: int, world_size: int) -> None:
        self.model, self.rank, self.world_size = model, rank, world_size
        self.device = next(model.parameters()).device

    def set_adapter(self, vector: torch.Tensor, spec: AdapterSpec) -> None:
        set_adapter_vector(self.model, vector.to(self.device), spec)

    def get_adapter(self) -> torch.Tensor:
        return get_adapter_vector(self.model)[0].cpu()

    def train(self, batches: list[dict], lrs: list[float], weight_decay: float, seed: int,
              anchor: torch.Tensor | None = None, anchor_weight: float = 0.0, spec: AdapterSpec | None = None,
              rho: float = 0.0) -> list[float]:
        """``anchor``: a flat adapter (``spec``'s layout) that ``anchor_weight`` pulls the weights toward;
        ``rho`` > 0: perturbation-aware steps (``fedsafe.training.sft.perturbed_loss``)."""
        targets = None
        if anchor is not None and anchor_weight > 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            start = [p.detach().clone() for p in params]
            self.set_adapter(anchor, spec)
            targets = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
        return train_steps(self.model, batches, lrs, weight_decay, seed, self.rank, self.world_size,
                           anchor=targets, anchor_weight=anchor_weight, rho=rho)

    def response_loss(self, batches: list[dict]) -> tuple[float, int]:
        return response_loss(self.model, batches)


def deepspeed_config(cfg: TrainerConfig, world_size: int, dtype: torch.dtype) -> dict:
    """DeepSpeed's config for LoRA steps driven one batch at a time by ``DeepSpeedEngine.train``."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,  # batches are cut by fedsafe; DeepSpeed only checks this product
        "train_batch_size": world_size,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0, "torch_adam": not cfg.offload}},
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    def __init__(self, model, cfg: TrainerConfig, rank: int, world_size: int) -> None:
        import deepspeed

        self.rank, self.world_size, self.stage = rank, world_size, cfg.zero_stage
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=self.params,
                                               config=deepspeed_config(cfg, world_size, self.params[0].dtype))
        self.model = self.engine.module

    def _gathered(self, modifier_rank: int | None = None):
        """Full LoRA tensors on every rank for the duration (ZeRO-3 keeps only a partition otherwise)."""
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.params, modifier_rank=modifier_rank)

    def set_adapter(self, vector: torch.Tensor, spec: AdapterSpec) -> None:
        with self._gathered(modifier_rank=0):
            set_adapter_vector(self.model, vector.to(self.params[0].device), spec)
        if self.stage > 0:
            self.engine.optimizer.refresh_fp32_params()  # ZeRO steps its own fp32 copy, then writes it back

    def get_adapter(self) -> torch.Tensor:
        with self._gathered():
            return get_adapter_vector(self.model)[0].cpu().clone()

    def _fresh_optimizer(self, weight_decay: float) -> None:
        """docs/method.md#federated-setup: a fresh AdamW each round (state, step count) for each client."""
        optimizer = self.engine.optimizer
        getattr(optimizer, "optimizer", optimizer).state.clear()
        for group in optimizer.param_groups:
            group["weight_decay"] = weight_decay

    def train(self, batches: list[dict], lrs: list[float], weight_decay: float, seed: int,
              anchor: torch.Tensor | None = None, anchor_weight: float = 0.0, spec: AdapterSpec | None = None,
              rho: float = 0.0) -> list[float]:
        if anchor is not None and anchor_weight > 0:
            raise ValueError("constrained training (attack.name=constrained) runs on trainer.engine=torch")
        if rho > 0:
            raise ValueError("perturbation-aware hardening (defense.hardening.rho > 0) runs on trainer.engine=torch")
        if len(lrs) != len(batches):
            raise ValueError(f"need one learning rate per batch, got {len(lrs)} for {len(batches)} batches")
        torch.manual_seed(seed)  # LoRA dropout
        self._fresh_optimizer(weight_decay)
        device = self.engine.device
        self.engine.train()
        losses = []
        for batch, lr in zip(batches, lrs):
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = rank_loss(self.engine, batch, self.rank, self.world_size)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(mean_over_ranks(loss, self.world_size))
        self.engine.eval()
        return losses

    def response_loss(self, batches: list[dict]) -> tuple[float, int]:
        return response_loss(self.engine, batches)


ENGINES = {"torch": TorchEngine, "deepspeed": DeepSpeedEngine}


def build_engine(name: str, model, cfg: TrainerConfig, rank: int, world_size: int):
    if name not in ENGINES:
        raise ValueError(f"unknown trainer.engine {name!r}; known: {sorted(ENGINES)}")
    return ENGINES[name](model, cfg, rank, world_size)
