"""The federated round loop, every phase in order (STYLE habit 3).

    setup     load data, shard it over the clients, start/join Ray, start trainers and the coordinator
    rounds    sample clients -> trainers train from the global adapter -> coordinator aggregates + checkpoints
    defense   optional post-hoc fine-tune of the global adapter on the server's data (PAPER.md §4)
    evaluate  answers to harmful prompts, rule judge (PAPER.md §6); results.json and report.md

    python launch.py --config configs/smoke.yaml
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fedsafe.checkpoint import latest_checkpoint, load_checkpoint
from fedsafe.cluster import runtime
from fedsafe.cluster.generation import GenerationPool
from fedsafe.cluster.plan import Plan, generation_reserve, make_plan
from fedsafe.cluster.pool import CoordinatorHandle, CoordinatorLost, TrainerPool
from fedsafe.config import ConfigError, ExperimentConfig
from fedsafe.data.federation import ClientSpec, build_clients, make_shards, round_subset, sample_clients
from fedsafe.data.sources import load_records
from fedsafe.data.text import find_overlap
from fedsafe.defense.posthoc import posthoc_task
from fedsafe.data.generated import Synthesizer, defense_level
from fedsafe.evaluation.metrics import EvalInputs, evaluate_model, judge_model_name
from fedsafe.models.loading import resolve_model_path
from fedsafe.run_dir import MetricsLog, write_results
from fedsafe.seeding import derive_seed
from fedsafe.training.sft import cosine_lr
from fedsafe.updates import SERVER_ID, ClientTask


@dataclass
class FederatedData:
    clients: list[ClientSpec]
    shards: dict[int, list[dict]]  # client id -> its records
    eval: EvalInputs  # harmful evaluation prompts, held-out benign pairs
    root: list[dict]  # the server's root data (rules needing a server update), else empty
    defense: list[dict]  # the server's defense data (Levels 1-2), else empty (none, or Level 3: made later)
    synthesis: dict = field(default_factory=dict)  # generated data set -> counts before/after the judge filter


SERVER = ClientSpec(client_id=SERVER_ID, group="server", role="server", index_in_group=0)


def check_held_out(data: FederatedData, extra: list[dict] = ()) -> None:
    """No evaluation prompt (harmful or benign) may occur in client, root or defense data."""
    training = [r for shard in data.shards.values() for r in shard] + data.root + data.defense + list(extra)
    overlap = find_overlap(data.eval.prompts, (r["instruction"] for r in training))
    if overlap:
        raise ConfigError(f"{len(overlap)} evaluation prompt(s) also occur in client, root or defense data, e.g. "
                          f"{overlap[0]!r}; evaluation.prompts and benign_prompts must be held out of every "
                          "training data set")


def load_data(cfg: ExperimentConfig, synth: Synthesizer | None = None) -> FederatedData:
    """Evaluation prompts; each group's data set (loaded, or generated through ``synth``), cut into iid
    shards of ``examples_per_client``; the server's root and defense data."""
    ev, a = cfg.evaluation, cfg.aggregation
    harmful = [r["instruction"] for r in load_records(ev.prompts, ev.num_prompts, cfg.seed, **ev.prompts_args)]
    benign = load_records(ev.benign_prompts, ev.num_benign, derive_seed(cfg.seed, 31), **ev.benign_prompts_args) \
        if ev.benign_prompts else []
    held_out = EvalInputs(harmful, benign).prompts
    per_client = cfg.federation.examples_per_client
    clients = build_clients([(g.name, g.role, g.count) for g in cfg.clients])
    shards: dict[int, list[dict]] = {}
    synthesis: dict = {}
    for group_index, group in enumerate(cfg.clients):
        if group.count == 0:
            continue
        seed = derive_seed(cfg.seed, group_index)
        if group.dataset == "maliciousgen":
            records, synthesis[f"clients.{group.name}"] = _synth(synth).attack(
                group.count * per_client, seed, held_out, dict(group.dataset_args))
        else:
            records = load_records(group.dataset, group.count * per_client, seed, **group.dataset_args)
        members = [c for c in clients if c.group == group.name]
        for client, shard in zip(members, make_shards(len(records), len(members), per_client, seed)):
            shards[client.client_id] = [records[i] for i in shard]
    root = load_records(a.root_dataset, a.root_examples, derive_seed(cfg.seed, 7727), **a.root_dataset_args) \
        if a.root_dataset else []
    defense, defense_synthesis = server_defense_data(cfg, synth, held_out)
    if defense_synthesis:
        synthesis["defense"] = defense_synthesis
    data = FederatedData(clients, shards, EvalInputs(harmful, benign), root, defense, synthesis)
    check_held_out(data)
    return data


def server_defense_data(cfg: ExperimentConfig, synth: Synthesizer | None, held_out: list[str]) -> tuple[list, dict]:
    """The server's defense data known before training: Level 1 (a public set) or Level 2 (generated by the
    off-the-shelf model); [] for no defense and for Level 3 (made after the rounds). Returns (records,
    synthesis counts or {})."""
    d = cfg.defense
    level = defense_level(d.dataset, dict(d.dataset_args)) if d.name != "none" else 0
    seed = derive_seed(cfg.seed, 104729)
    if level == 2:
        return _synth(synth).defense(d.num_examples, seed, held_out, dict(d.dataset_args))
    if level == 1:
        return load_records(d.dataset, d.num_examples, seed, **d.dataset_args), {}
    return [], {}


def _synth(synth: Synthesizer | None) -> Synthesizer:
    if synth is None:
        raise ConfigError("generated data sets (maliciousgen, defensegen) need the generation pool; "
                          "call load_data with a Synthesizer")
    return synth


def client_task(cfg: ExperimentConfig, client: ClientSpec, shard: list[dict], round_idx: int) -> ClientTask:
    t = cfg.train
    subset = round_subset(list(range(len(shard))), t.batch_size * t.local_steps, cfg.seed, round_idx, client.client_id)
    lr = cosine_lr(round_idx, cfg.federation.num_rounds, t.lr, t.min_lr)
    return ClientTask(
        client_id=client.client_id, round_idx=round_idx, role=client.role, records=[shard[i] for i in subset],
        lrs=[lr] * t.local_steps, batch_size=t.batch_size, max_length=t.max_length,
        weight_decay=t.weight_decay, seed=derive_seed(cfg.seed, round_idx, client.client_id),
        attack=cfg.attack.name, attack_params=dict(cfg.attack.params),
    )


def resume_point(run_dir: Path) -> tuple[int, str | None]:
    """(first round to run, checkpoint folder to resume from or None)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0, None
    return load_checkpoint(ckpt).round_idx + 1, str(ckpt)


class Session:
    """What every arm of a run shares: Ray, the plan, the generation pool, the synthesizer and the trainer
    pool (one base model and LoRA shape for all arms). ``close()`` stops the actors."""

    def __init__(self, cfg: ExperimentConfig, plan: Plan | None = None) -> None:
        resolve_model_path(cfg.model)  # builds a builtin model once, here, before any actor loads it
        resources = runtime.connect(cfg.cluster, generation_reserve(cfg)[0])
        self.plan = plan or make_plan(cfg, resources)
        self.generation = GenerationPool(cfg, cache_dir=Path(cfg.output.root) / "cache" / "generations")
        self.synth = Synthesizer(self.generation, judge_model_name(cfg))
        self.pool = TrainerPool(self.plan, cfg)
        self.init = self.pool.initial_adapter()

    def evaluate(self, cfg: ExperimentConfig, inputs: EvalInputs, vector_ref, out_dir: Path, name: str) -> dict:
        """Every configured metric of the base model plus the adapter ``vector_ref``."""
        adapter = self.generation.register_adapter(vector_ref, self.init.spec, self.init.peft_config)
        loss = lambda records: self.pool.response_loss(vector_ref, records, cfg.train.batch_size,  # noqa: E731
                                                       cfg.train.max_length)
        return evaluate_model(cfg, self.generation, adapter, inputs, out_dir, name, loss)

    def close(self) -> None:
        self.pool.shutdown()
        self.generation.shutdown()


def round_inputs(cfg: ExperimentConfig, inputs: EvalInputs) -> EvalInputs:
    """The per-round evaluation: the first ``evaluation.round_num_prompts`` harmful prompts (0 = all), and
    the benign ones only when every prompt is used."""
    n = cfg.evaluation.round_num_prompts
    return inputs if n == 0 else EvalInputs(inputs.harmful[:n], [])


def federate(session: Session, cfg: ExperimentConfig, data: FederatedData, run_dir: Path,
             on_round=None) -> CoordinatorHandle:
    """The round loop; continues after the last checkpoint in ``run_dir``. Returns the coordinator, which
    holds the final global adapter. ``on_round(record)`` is called after each round is logged. A
    coordinator that dies is started again from the last checkpoint and its round run again (at most
    ``cluster.max_retries`` times per run)."""
    rounds = cfg.federation.num_rounds
    start_round, resume_from = resume_point(run_dir)
    coordinator = CoordinatorHandle(session.init, cfg, str(run_dir), resume_from)
    log = MetricsLog(run_dir, start_round, cfg.output.tensorboard)
    if start_round:
        tqdm.write(f"resuming {run_dir} at round {start_round} of {rounds}")
    restarts = 0
    for round_idx in tqdm(range(start_round, rounds), desc="rounds", initial=start_round, total=rounds):
        while True:
            try:
                record = run_round(session, cfg, data, coordinator, round_idx, resize=round_idx > start_round)
                break
            except CoordinatorLost as err:
                restarts += 1
                if restarts > cfg.cluster.max_retries:
                    raise RuntimeError(f"the coordinator died {restarts} times ({err}); the run stops here. "
                                       f"Continue it with: python launch.py --resume {run_dir}") from None
                tqdm.write(f"round {round_idx}: the coordinator died ({err}); restarting it from the last checkpoint")
                coordinator.shutdown()
                next_round, resume_from = resume_point(run_dir)
                coordinator = CoordinatorHandle(session.init, cfg, str(run_dir), resume_from)
                if next_round > round_idx:  # it died after checkpointing this round: the round is done
                    record = {"round": round_idx, "recovered": f"the coordinator died after checkpointing ({err}); "
                              "this round's training and aggregation records are lost"}
                    break
        record["coordinator_restarts"] = restarts
        scalars = {"round/seconds": record.get("seconds", 0.0)}
        if record.get("client_metrics"):
            scalars["train/loss"] = sum(m["loss"] for m in record["client_metrics"]) / len(record["client_metrics"])
        if cfg.evaluation.every_n_rounds and (round_idx + 1) % cfg.evaluation.every_n_rounds == 0:
            record["evaluation"] = session.evaluate(cfg, round_inputs(cfg, data.eval), coordinator.global_ref(),
                                                    run_dir, f"round_{round_idx:04d}")
            scalars["safety/rule"] = record["evaluation"]["safety"]["rule"]
        log.log(record, scalars)
        if on_round is not None:
            on_round(record)
    log.close()
    if cfg.evaluation.client_similarity:
        roles = [c.role for c in data.clients]
        (Path(run_dir) / "clients.json").write_text(json.dumps({"roles": roles, **coordinator.similarity()}))
    return coordinator


def run_round(session: Session, cfg: ExperimentConfig, data: FederatedData, coordinator: CoordinatorHandle,
              round_idx: int, resize: bool) -> dict:
    """One round: sample clients, train them (each update staged in the coordinator as it finishes),
    aggregate and checkpoint. Returns the round's record; clients that failed every try are listed under
    ``failed`` and their tries under ``failures``."""
    round_start = time.perf_counter()
    sampled = sample_clients(len(data.clients), cfg.federation.clients_per_round, round_idx)
    tasks = [client_task(cfg, data.clients[c], data.shards[c], round_idx) for c in sampled]
    if data.root:  # the server trains on its root data like a client (FLTrust's g0)
        tasks.append(client_task(cfg, SERVER, data.root, round_idx))
    resized = session.pool.resize() if resize else {}
    bar = tqdm(total=len(tasks), desc=f"round {round_idx} clients", leave=False)
    outcome = session.pool.train(coordinator.global_ref(), tasks, on_done=lambda _: bar.update(),
                                 stage=lambda task, ref: coordinator.stage(round_idx, task, ref))
    bar.close()
    summary = coordinator.aggregate(round_idx)
    metrics = outcome.metrics[:len(sampled)]
    record = {
        "round": round_idx, "sampled": sampled, "lr": tasks[0].lrs[0],
        "client_metrics": [vars(m) for m in metrics if m is not None], "seconds": time.perf_counter() - round_start,
        "trainer_groups": len(session.pool.groups), **summary,
    }
    if outcome.failures:
        record["failures"] = outcome.failures
    if failed := [t.client_id for t, m in zip(tasks, outcome.metrics) if m is None]:
        record["failed"] = failed
    if resized.get("added") or resized.get("dropped") or session.pool.lost:
        record["trainer_pool"] = {**resized, "lost_total": session.pool.lost}
    if data.root and outcome.metrics[-1] is not None:
        record["server_metrics"] = vars(outcome.metrics[-1])
    return record


def defense_data(session: Session, cfg: ExperimentConfig, data: FederatedData, final_ref) -> tuple[list[dict], dict]:
    """The server's defense data: Levels 1-2 were loaded with the rest; Level 3 is written now by the
    aggregated model through its own adapter. Returns (records, synthesis counts or {})."""
    d = cfg.defense
    if defense_level(d.dataset, dict(d.dataset_args)) != 3:
        return data.defense, data.synthesis.get("defense", {})
    adapter = session.generation.register_adapter(final_ref, session.init.spec, session.init.peft_config)
    records, report = session.synth.defense(d.num_examples, derive_seed(cfg.seed, 104729), data.eval.prompts,
                                            dict(d.dataset_args), adapter)
    check_held_out(data, records)
    return records, report


def defend(session: Session, cfg: ExperimentConfig, records: list[dict], coordinator: CoordinatorHandle, final_ref):
    """PAPER.md §4: continue training the aggregated adapter on the defense data on a trainer actor."""
    task = posthoc_task(cfg.defense, records, cfg.train.max_length, derive_seed(cfg.seed, 104729))
    outcome = session.pool.train(final_ref, [task])
    if outcome.updates[0] is None:
        raise RuntimeError(f"the post-hoc defense failed on every try: {outcome.failures}")
    return coordinator.apply_delta(outcome.updates[0])


def run_experiment(cfg: ExperimentConfig, run_dir: Path, plan: Plan | None = None, on_round=None) -> dict:
    """Run (or continue, if ``run_dir`` holds checkpoints) one experiment; returns the results dict.
    Configs with ``arms`` go to ``fedsafe.matrix.run_matrix``. ``on_round``: see ``federate``."""
    if cfg.arms:
        from fedsafe.matrix import run_matrix

        return run_matrix(cfg, run_dir, plan)
    started = time.perf_counter()
    start_round = resume_point(run_dir)[0]
    session = Session(cfg, plan)
    data = load_data(cfg, session.synth)
    coordinator = federate(session, cfg, data, run_dir, on_round)
    rounds = cfg.federation.num_rounds
    final_ref = coordinator.global_ref()
    models = {f"global (round {rounds})": session.evaluate(cfg, data.eval, final_ref, run_dir, "final")}
    d = cfg.defense
    level = defense_level(d.dataset, dict(d.dataset_args)) if d.name != "none" else 0
    if d.name == "posthoc_sft":
        records, data.synthesis["defense"] = defense_data(session, cfg, data, final_ref)
        final_ref = defend(session, cfg, records, coordinator, final_ref)
        coordinator.export(final_ref, "defended_adapter")
        models[f"global + {d.name} (level {level})"] = session.evaluate(cfg, data.eval, final_ref, run_dir, "defended")
    session.close()

    results = {
        "name": cfg.output.name, "model": cfg.model.name, "rounds": rounds, "num_clients": cfg.num_clients,
        "num_malicious": sum(c.role == "malicious" for c in data.clients),
        "clients_per_round": cfg.federation.clients_per_round, "aggregation": cfg.aggregation.rule,
        "defense": cfg.defense.name, "defense_level": level, "generation_backend": cfg.generation.backend,
        "generator_model": session.generation.generator_model, "judge_model": judge_model_name(cfg),
        "data": {"synthesis": data.synthesis, "eval_harmful": len(data.eval.harmful),
                 "eval_benign": len(data.eval.benign), "defense_examples": len(data.defense)},
        "generation_cache": cache_counts(session.generation),
        "evaluation": list(models.values())[-1], "models": models,
        "wall_s": time.perf_counter() - started, "resumed_at_round": start_round,
    }
    results["table"] = write_results(run_dir, results)
    return results


def cache_counts(generation: GenerationPool) -> dict | None:
    cache = generation.cache
    return {"hits": cache.hits, "misses": cache.misses} if cache else None
