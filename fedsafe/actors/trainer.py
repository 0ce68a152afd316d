"""Trainer actor: loads the base model once, then trains any client's LoRA adapter per call.

A plain class, unit-testable without Ray; ``fedsafe.cluster.pool`` makes it remote with its resources. Everything per
call (global adapter, client records, round, learning rates, seed) is an argument, so one trainer serves
any number of virtual clients. A client may take a group of ``world_size`` trainers (one per GPU, or
several CPU processes): ``start`` joins them into a torch.distributed group, every rank gets the same
calls, each trains on its slice of every batch, and rank 0's update is the client's.

    trainer = Trainer(ModelConfig(), LoRAConfig(r=8), seed=0, threads=1)
    trainer.start()                                    # one process; a group: load(gpus), start(address, port) on each
    update, metrics = trainer.train(trainer.initial_adapter().vector, task)
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import torch

from fedsafe.actors import placement
from fedsafe.aggregation.lora_modes import component_mask, lora_layout, truncate
from fedsafe.attack import NO_ATTACK, build_attack
from fedsafe.config import LoRAConfig, ModelConfig, TrainerConfig
from fedsafe.models.loading import load_model_and_tokenizer
from fedsafe.training.engines import build_engine
from fedsafe.training.lora import AdapterSpec, get_adapter_vector, make_lora_model, peft_config_dict
from fedsafe.training.sft import encode_batches, make_batches
from fedsafe.updates import ClientTask, ClientUpdate, TrainMetrics


@dataclass(frozen=True)
class InitialAdapter:
    vector: torch.Tensor
    spec: AdapterSpec
    peft_config: dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, address: str, port: int, engine: str, local_rank: int = 0) -> None:
    """Join the client's torch.distributed group: NCCL on GPUs, gloo on CPUs (DeepSpeed's own init for
    its engine). ``local_rank``: this rank's GPU among the group's (``Trainer.load``)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank), MASTER_ADDR=address,
                      MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if engine == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)


class Trainer:
    def __init__(self, model_cfg: ModelConfig, lora_cfg: LoRAConfig, seed: int, threads: int = 1,
                 trainer_cfg: TrainerConfig | None = None, rank: int = 0, world_size: int = 1,
                 gradient_checkpointing: bool = False, load: bool = True, trained_rank: int = 0) -> None:
        """``load=False`` leaves the model to ``load`` (the pool first learns which GPUs each rank of a group
        has, so that every rank can see them all before CUDA starts). ``trained_rank``: the components clients
        train (lora.r; 0 = all of ``lora_cfg.r``), the rest hold the fold of ``aggregation.mode`` stack or exact
        (``fedsafe.aggregation.lora_modes``) and stay frozen."""
        torch.set_num_threads(threads)
        self.cfg = trainer_cfg or TrainerConfig()
        self.rank, self.world_size, self.local_rank = rank, world_size, 0
        self.model_cfg, self.lora_cfg, self.seed, self.checkpointing = model_cfg, lora_cfg, seed, gradient_checkpointing
        self.trained_rank = trained_rank or lora_cfg.r
        self.engine = None
        self._rank = self.trained_rank  # the components the current task trains (read by the gradient masks)
        self._masked = False
        if load:
            self.load()

    def placement(self) -> dict:
        """Where Ray put this actor (``fedsafe.actors.placement``) and its rank's GPU among its group's."""
        return {**placement(), "local_rank": self.local_rank}

    def see_group(self, group_gpus: list[str] | None) -> None:
        """Let this rank see every GPU of its client's group (``group_gpus``, their IDs in rank order), so that
        NCCL can take peer-to-peer paths between them, and use its own (``local_rank``). Before CUDA starts."""
        if group_gpus:
            own = placement()["gpus"]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(group_gpus)
            self.local_rank = group_gpus.index(own[0]) if own and own[0] in group_gpus else 0

    def load(self, group_gpus: list[str] | None = None) -> bool:
        """Load the base model and a fresh adapter on this actor's device, after ``see_group``."""
        self.see_group(group_gpus)
        cuda = torch.cuda.is_available()
        if self.cfg.engine == "deepspeed" and not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)  # an 8-bit model loads onto the current device
        base, self.tokenizer = load_model_and_tokenizer(self.model_cfg, self.checkpointing)
        model = make_lora_model(base, self.lora_cfg, self.seed)
        if self.model_cfg.quantization == "none":  # an 8-bit model is placed on its GPU as it loads
            model = model.to(self.device)
        model.eval()
        vector, self.spec = get_adapter_vector(model)
        self.layout = lora_layout(self.spec.names, self.spec.shapes, self.trained_rank,
                                  self.lora_cfg.alpha / self.lora_cfg.r)
        vector = vector.cpu() * component_mask(self.layout, self.trained_rank)  # the fold starts empty
        self._initial = InitialAdapter(vector, self.spec, peft_config_dict(model))
        self._model = model
        return True

    def _mask_gradients(self) -> None:
        """Hooks that zero the gradient of every LoRA component from ``self._rank`` on (a client of lower rank,
        and the fold), registered once, the first time a task trains fewer components than the adapter has."""
        if self._masked:
            return
        for name, param in self._model.named_parameters():
            if param.requires_grad and ".lora_A." in name:
                param.register_hook(lambda g: g * (torch.arange(g.shape[0], device=g.device) < self._rank)[:, None])
            elif param.requires_grad and ".lora_B." in name:
                param.register_hook(lambda g: g * (torch.arange(g.shape[1], device=g.device) < self._rank)[None, :])
        self._masked = True

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for its group: this node's IP and a free port."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def start(self, address: str = "127.0.0.1", port: int = 0) -> bool:
        """Join the group (if any) and build the engine; every rank of a group at the same time."""
        if self.world_size > 1 or self.cfg.engine == "deepspeed":
            init_process_group(self.rank, self.world_size, address, port or free_port(), self.cfg.engine,
                               self.local_rank)
        self.engine = build_engine(self.cfg.engine, self._model, self.cfg, self.rank, self.world_size)
        return True

    def initial_adapter(self) -> InitialAdapter:
        return self._initial

    def ready(self) -> bool:
        return True

    def train(self, global_vector: torch.Tensor, task: ClientTask) -> tuple[ClientUpdate | None, TrainMetrics | None]:
        """Local SFT from ``global_vector``; returns the (attack-hooked) delta and the round's metrics
        (ranks other than 0 of a group return ``(None, None)``). An attacking client first trains its
        benign estimates on ``task.cover`` (sent with its update), then its harmful update, pulled toward
        their mean when the attack has a stealth weight."""
        start = time.perf_counter()
        attack = build_attack(task.attack, **task.attack_params) if task.role == "malicious" else NO_ATTACK
        self._rank = task.rank or self.trained_rank
        if self._rank < self.layout.total:
            self._mask_gradients()
        begin = truncate(global_vector.cpu(), self.layout, self._rank)  # a client of lower rank: its components
        estimates = [self._local_delta(begin, cover, task)[0] for cover in task.cover]
        anchor = begin + torch.stack(estimates).mean(dim=0) if estimates else begin if attack.stealth_weight else None
        records = attack.on_data(task.records)
        delta, losses = self._local_delta(begin, records, task, anchor, attack.stealth_weight)
        if self.rank != 0:
            return None, None
        delta = attack.on_update(delta)
        metrics = TrainMetrics(
            client_id=task.client_id, role=task.role, loss=sum(losses) / len(losses), first_loss=losses[0],
            seconds=time.perf_counter() - start, update_norm=float(delta.norm()),
        )
        return ClientUpdate(task.client_id, len(records), delta, tuple(estimates)), metrics

    def _local_delta(self, global_vector: torch.Tensor, records: list[dict], task: ClientTask,
                     anchor: torch.Tensor | None = None, anchor_weight: float = 0.0) -> tuple[torch.Tensor, list[float]]:
        """(local adapter minus ``global_vector``, the step losses) after training on ``records``; components
        the task does not train are exactly zero in it (weight decay moves frozen weights too)."""
        self.engine.set_adapter(global_vector, self.spec)
        batches = make_batches(self.tokenizer, records, task.batch_size, task.max_length)
        losses = self.engine.train(batches, task.lrs[: len(batches)], task.weight_decay, task.seed,
                                   anchor=anchor, anchor_weight=anchor_weight, spec=self.spec, rho=task.rho)
        delta = self.engine.get_adapter() - global_vector.cpu()
        if self._rank < self.layout.total:
            delta = delta * component_mask(self.layout, self._rank)
        return delta, losses

    def response_loss(self, global_vector: torch.Tensor, records: list[dict], batch_size: int,
                      max_length: int) -> tuple[float, int]:
        """Summed loss and number of the response tokens of ``records`` under the global adapter (the
        helpfulness proxy is their ratio over all parts); ``(0.0, 0)`` when truncation to ``max_length``
        leaves none of them a response token."""
        self.engine.set_adapter(global_vector, self.spec)
        return self.engine.response_loss(encode_batches(self.tokenizer, records, batch_size, max_length))
