"""Coordinator actor: holds the global adapter, aggregates client updates, checkpoints every round.

A plain class made remote by ``fedsafe.cluster.pool``. Each update is staged here as soon as its client
finishes (``stage``): it arrives as an object-store reference passed as a top-level argument, so Ray
resolves it here, it never passes through the driver, and once staged it does not depend on the trainer's node
staying up. ``aggregate(round)`` then validates and aggregates what was staged. Aggregation runs
on this actor's device (a GPU if it was given one). Before the rule sees them, the updates of the round's
attacking clients pass through the attack's ``collude`` (where colluders' uploads meet; their benign
estimates are dropped there and never aggregated). Server state that must survive a resume (server
optimizer moments, FoolsGold's per-client histories, the last global step where the attack reads it,
RNG) goes into every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedsafe.actors import placement
from fedsafe.aggregation import AggregationContext, aggregate, get_rule
from fedsafe.aggregation.config import FACTORS
from fedsafe.aggregation.geometry import cosine, gram
from fedsafe.aggregation.lora_modes import (
    PRODUCT_MODES,
    combine,
    factors_error,
    lora_layout,
    product_updates,
    truncate,
)
from fedsafe.aggregation.lora_modes import products as lora_products
from fedsafe.aggregation.server_opt import ServerOptConfig, init_state, server_step
from fedsafe.attack import NO_ATTACK, RoundView, build_attack
from fedsafe.checkpoint import load_checkpoint, restore_rng, save_adapter, save_checkpoint
from fedsafe.defense.base import AggregateHook
from fedsafe.training.lora import AdapterSpec
from fedsafe.updates import SERVER_ID, ClientUpdate, update_problem

if TYPE_CHECKING:
    from fedsafe.config import ExperimentConfig


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator aggregates and where it checkpoints (``from_config`` reads a run's config).

    ``rule``, ``rule_params``, ``num_malicious``: the aggregation rule, its parameters and the f it is told;
    ``server_opt``: the server optimizer after it; ``max_update_norm`` (0 = no bound) and ``min_updates``:
    update validation; ``track_clients``: keep each client's summed update (client similarity);
    ``run_dir``, ``keep_checkpoints``: where checkpoints go, how many stay; ``seed``: for randomised rules;
    ``attack``, ``attack_params``: the attack whose ``collude`` sees the attacking clients' updates;
    ``mode``: how the LoRA factors combine (``fedsafe.aggregation.lora_modes``), ``lora_rank`` and ``scale``: the
    trained components and alpha / r, ``client_ranks``: the clients of lower rank."""

    rule: str = "fedavg"
    rule_params: dict = field(default_factory=dict)
    num_malicious: int = 0
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)
    run_dir: str = "."
    keep_checkpoints: int = 2
    seed: int = 0
    track_clients: bool = False
    max_update_norm: float = 0.0
    min_updates: int = 1
    attack: str = ""
    attack_params: dict = field(default_factory=dict)
    mode: str = FACTORS
    lora_rank: int = 0
    scale: float = 1.0
    client_ranks: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, run_dir: str) -> CoordinatorSettings:
        a = cfg.aggregation
        return cls(rule=a.rule, rule_params=dict(a.params), num_malicious=cfg.expected_malicious,
                   server_opt=a.server_opt, run_dir=str(run_dir), keep_checkpoints=cfg.output.keep_checkpoints,
                   seed=cfg.seed, track_clients=cfg.evaluation.client_similarity,
                   max_update_norm=a.max_update_norm, min_updates=a.min_updates,
                   attack=cfg.attack.name, attack_params=dict(cfg.attack.params), mode=a.mode,
                   lora_rank=cfg.lora.r, scale=cfg.lora.alpha / cfg.lora.r, client_ranks=cfg.client_ranks())


class Coordinator:
    def __init__(self, vector: torch.Tensor, spec: AdapterSpec, peft_config: dict, settings: CoordinatorSettings,
                 resume_from: str | None = None, hook: AggregateHook | None = None) -> None:
        """``vector``: the adapter round 0 starts from; ``hook``: the defense's, applied to every aggregate."""
        st = settings
        self.hook = hook
        self.max_update_norm, self.min_updates = st.max_update_norm, st.min_updates
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.vector = vector.clone().to(self.device)
        self.initial = self.vector.clone()  # where ``stack`` starts the trained components again
        self.spec = spec
        self.mode, self.client_ranks = st.mode, dict(st.client_ranks)
        self.layout = lora_layout(spec.names, spec.shapes, st.lora_rank, st.scale)
        if st.mode in PRODUCT_MODES and not self.layout.pairs:
            raise ValueError(f"aggregation.mode={st.mode} needs an adapter of LoRA pairs (lora_A, lora_B)")
        if hook is not None and st.mode in PRODUCT_MODES:
            raise ValueError(f"aggregation.mode={st.mode}: the defense's aggregate hook acts on the factors' "
                             "aggregate, which this mode does not form")
        self.peft_config = peft_config
        self.rule, self.rule_params, self.num_malicious = st.rule, dict(st.rule_params), st.num_malicious
        self.needs_history = get_rule(st.rule).needs_history
        self.track = self.needs_history or st.track_clients  # keep each client's summed updates
        self.server_opt = st.server_opt
        self.opt_state = init_state(st.server_opt, self.vector.numel(), self.device)
        self.history: dict[int, torch.Tensor] = {}
        self.staged: dict[int, object] = {}  # key (client id, SERVER_ID) -> update of round staged_round
        self.staged_round = -1
        self.colluded = False  # the staged updates have been through ``collude`` (``uploads``)
        self.run_dir = Path(st.run_dir)
        self.keep = st.keep_checkpoints
        self.seed = st.seed
        self.attack = build_attack(st.attack, **st.attack_params) if st.attack else NO_ATTACK
        self.previous_step: torch.Tensor | None = None  # the last change of the global adapter
        if resume_from is not None:
            ckpt = load_checkpoint(Path(resume_from))
            self.vector = ckpt.vector_for(spec).to(self.device)
            state = ckpt.server_state
            self.opt_state = {k[4:]: v.to(self.device) for k, v in state.items() if k.startswith("opt.")}
            self.history = {int(k[8:]): v.to(self.device) for k, v in state.items() if k.startswith("history.")}
            if "previous_step" in state:
                self.previous_step = state["previous_step"].to(self.device)
            restore_rng(ckpt)

    def global_vector(self) -> torch.Tensor:
        return self.vector.cpu()

    def ready(self) -> bool:
        return True

    def placement(self) -> dict:
        """Where Ray put the coordinator (``fedsafe.actors.placement``) and the device its tensors are on."""
        return {**placement(), "device": str(self.device)}

    def stage(self, round_idx: int, key: int, update: ClientUpdate) -> int:
        """Keep client ``key``'s update (``SERVER_ID``: the server's own) for ``aggregate(round_idx)``."""
        if round_idx != self.staged_round:
            self.staged, self.staged_round, self.colluded = {}, round_idx, False
        self.staged[key] = update
        return key

    def uploads(self, round_idx: int, attacking: list[int] = ()) -> list[int]:
        """Pass the ``attacking`` clients' updates staged for ``round_idx`` through the attack's ``collude``
        now (what the server receives) and return the clients whose uploads are sound, in id order."""
        if self.staged_round != round_idx:
            self.staged, self.staged_round = {}, round_idx
        if not self.colluded:
            server = self.staged.pop(SERVER_ID, None)
            self.staged = self.collude(self.staged, set(attacking))
            if server is not None:
                self.staged[SERVER_ID] = server
            self.colluded = True
        numel = self.vector.numel()
        return sorted(k for k, u in self.staged.items() if k != SERVER_ID and update_problem(u, numel) is None)

    def rank_of(self, client_id: int) -> int:
        return self.client_ranks.get(client_id, self.layout.rank)

    def candidate(self, client_id: int) -> torch.Tensor:
        """The client's own adapter: the global one (cut to its rank) plus its staged upload (after
        ``uploads``)."""
        start = truncate(self.vector, self.layout, self.rank_of(client_id))
        return (start + self.staged[client_id].delta.to(self.device)).cpu()

    def aggregate(self, round_idx: int, attacking: list[int] = (), reject: dict[int, str] | None = None,
                  scale: dict[int, float] | None = None) -> dict:
        """Aggregate the updates staged for ``round_idx`` (clients in id order), those of the ``attacking``
        clients after the attack's ``collude``; ``reject``: clients left out (reason each, reported with the
        other rejections), ``scale``: clients whose update is multiplied by a factor. See
        ``aggregate_updates``."""
        self.uploads(round_idx, attacking)
        staged, self.staged, self.colluded = self.staged, {}, False
        server = staged.pop(SERVER_ID, None)
        reject, scale = reject or {}, scale or {}
        screened = [{"client_id": k, "reason": reason} for k, reason in sorted(reject.items()) if k in staged]
        kept = [replace(u, delta=u.delta * scale[k]) if k in scale else u
                for k, u in sorted(staged.items()) if k not in reject]
        summary = self.aggregate_updates(round_idx, server, kept)
        if screened:
            summary["rejected"] = screened + summary.get("rejected", [])
        return summary

    def collude(self, staged: dict[int, object], attacking: set[int]) -> dict[int, object]:
        """``staged`` with the sound updates of ``attacking`` clients replaced by what the attack's
        ``collude`` makes of them, and every update's benign estimates dropped."""
        numel = self.vector.numel()
        ours = {k: u for k, u in staged.items() if k in attacking and update_problem(u, numel) is None}
        if ours:
            estimates = [e.to(self.device) for u in ours.values() for e in u.estimates
                         if tuple(e.shape) == (numel,)]
            view = RoundView(deltas={k: u.delta.to(self.device) for k, u in ours.items()},
                             estimates=torch.stack(estimates) if estimates else torch.zeros(0, numel, device=self.device),
                             previous_step=self.previous_step, num_sampled=len(staged))
            shaped = self.attack.collude(view)
            staged = {**staged, **{k: replace(u, delta=shaped[k].cpu()) for k, u in ours.items()}}
        return {k: replace(u, estimates=()) if isinstance(u, ClientUpdate) and u.estimates else u
                for k, u in staged.items()}

    def _server_state(self) -> dict[str, torch.Tensor]:
        state = {f"opt.{k}": v for k, v in self.opt_state.items()}
        state.update({f"history.{cid}": v for cid, v in self.history.items()})
        if self.attack.uses_previous_step and self.previous_step is not None:
            state["previous_step"] = self.previous_step
        return state

    def aggregate_updates(self, round_idx: int, server_update: ClientUpdate | None,
                          updates: list[ClientUpdate]) -> dict:
        """Validate the updates, apply the rule to the accepted deltas (ordered by client id), the server
        optimizer, then checkpoint. Rejected updates are reported with their reasons; with fewer than
        ``min_updates`` accepted the global adapter stays as it was (the round is still checkpointed)."""
        numel = self.vector.numel()
        problems = [update_problem(u, numel, self.max_update_norm) for u in updates]
        rejected = [{"client_id": getattr(u, "client_id", None), "reason": p} for u, p in zip(updates, problems) if p]
        accepted = [u for u, p in zip(updates, problems) if p is None]
        skipped = None
        if server_update is not None and (problem := update_problem(server_update, numel, self.max_update_norm)):
            rejected.append({"client_id": "server", "reason": problem})
            skipped = f"aggregation.rule={self.rule} needs the server's update, which was rejected"
        elif len(accepted) < self.min_updates:
            skipped = f"{len(accepted)} update(s) accepted, fewer than aggregation.min_updates={self.min_updates}"
        else:
            try:
                summary = self._aggregate(round_idx, server_update, accepted)
            except ValueError as err:  # e.g. Krum's n >= 2f + 3 after rejections
                skipped = f"aggregation.rule={self.rule} on {len(accepted)} accepted update(s): {err}"
        if skipped:
            save_checkpoint(self.run_dir, round_idx, self.vector.cpu(), self.spec, self.peft_config, self.keep,
                            self._server_state())
            summary = {"clients": [], "weights": [], "update_norms": [], "aggregate_norm": 0.0,
                       "global_norm": float(self.vector.norm()), "skipped": skipped}
        return {**summary, "rejected": rejected} if rejected else summary

    def _aggregate(self, round_idx: int, server_update: ClientUpdate | None, updates: list[ClientUpdate]) -> dict:
        ordered = sorted(updates, key=lambda u: u.client_id)
        deltas = torch.stack([u.delta for u in ordered]).to(self.device)
        ranks = [self.rank_of(u.client_id) for u in ordered]
        counts = torch.tensor([float(u.num_examples) for u in ordered], device=self.device)
        products = self.mode in PRODUCT_MODES  # the rule sees each client's change of the product B A
        matrix = product_updates(self.vector, deltas, ranks, self.layout).float() if products else deltas
        history = {u.client_id: self.history.get(u.client_id, torch.zeros_like(row)) + row
                   for u, row in zip(ordered, matrix)} if self.track else {}
        server = server_update.delta.to(self.device) if server_update is not None else None
        if products and server is not None:
            server = product_updates(self.vector, server[None], [self.layout.rank], self.layout)[0].float()
        ctx = AggregationContext(
            num_malicious=self.num_malicious, round_idx=round_idx, seed=self.seed,
            history=torch.stack([history[u.client_id] for u in ordered]) if self.needs_history else None,
            server_update=server,
            global_params=lora_products(self.vector, self.layout, slice(None)).float() if products else self.vector,
        )
        result = aggregate(self.rule, matrix, counts, context=ctx, **self.rule_params)
        aggregated, extra = result.vector, {}
        if self.layout.pairs:  # what averaging the factors misses of the products' average (every mode)
            extra["factors_error"] = factors_error(self.vector, deltas, ranks, counts, self.layout)
        if products:
            w = result.weights.double() / max(float(result.weights.sum()), 1e-12)
            factor_step = (w[:, None] * deltas.double()).sum(dim=0)
            new, info = combine(self.mode, self.vector, self.initial, factor_step, aggregated.double(), self.layout)
            step, opt_state, extra = new - self.vector, self.opt_state, {**extra, **info}
        else:
            if self.hook is not None:
                aggregated, info = self.hook.apply(aggregated)
                extra[self.hook.name] = info
            step, opt_state = server_step(self.server_opt, self.opt_state, aggregated)
        if not bool(torch.isfinite(step).all()):  # e.g. a rule parameter that divides by zero
            raise ValueError("the aggregate holds NaN or Inf; the global adapter is kept as it was")
        # only once the step is sound: a skipped round leaves the histories and the optimizer as they were
        self.history.update(history)
        self.opt_state = opt_state
        self.vector = self.vector + step
        self.previous_step = step
        save_checkpoint(self.run_dir, round_idx, self.vector.cpu(), self.spec, self.peft_config, self.keep,
                        self._server_state())
        return {
            "clients": [u.client_id for u in ordered],
            "weights": [round(float(w), 6) for w in result.weights],
            "update_norms": [round(float(u.delta.norm()), 6) for u in ordered],
            "aggregate_norm": float(aggregated.norm()),
            "global_norm": float(self.vector.norm()),
            **extra,
        }

    def similarity(self) -> dict:
        """Cosine similarity of the clients' summed updates (the paper's Fig. 3a), clients in id order."""
        ids = sorted(self.history)
        return {"clients": ids, "cosine": cosine(gram(torch.stack([self.history[c] for c in ids]))).tolist()
                if ids else []}

    def export(self, vector: torch.Tensor, folder: str) -> str:
        """Write ``vector`` as a PEFT adapter folder (safetensors) at ``folder``."""
        return str(save_adapter(Path(folder), vector, self.spec, self.peft_config))
