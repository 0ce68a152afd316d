"""The federated loop of one arm, every phase in order (docs/method.md describes what it simulates).

    setup     data loaded (a malicious group's through the attack's ``make_data``, poison spread thin into
              benign groups, cover data for malicious clients), sharded over the clients; the defense by
              name, its ``before_training``
              (hardening may give the rounds a new starting adapter; the projection trains its direction;
              screening draws its canaries)
    rounds    sample clients (an attacking client where the attack's schedule strikes) -> trainers train
              from the global adapter -> the attack's ``collude`` on the attacking clients' updates -> the
              defense's ``screen`` of the uploads -> coordinator aggregates (through the defense's aggregate
              hook) and checkpoints -> the defense's ``on_round``
    defense   the defense's ``after_training`` (the post-hoc fine-tune) gives the adapter to evaluate
    evaluate  the final adapter saved as a PEFT folder, every configured metric, ``result.json``

``run_arm`` runs that for one config; ``fedsafe.matrix`` calls it once per arm (a config without arms is
a matrix of one arm, or two with a defense: the undefended and the defended model).

    python launch.py --config configs/smoke.yaml
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fedsafe.attack import NO_ATTACK, Attack, AttackContext, build_attack
from fedsafe.checkpoint import latest_sound_checkpoint
from fedsafe.cluster import runtime
from fedsafe.cluster.generation import GenerationPool
from fedsafe.cluster.plan import Plan, generation_reserve
from fedsafe.cluster.pool import CoordinatorHandle, CoordinatorLost, FinishedFederation, TrainerPool, fetch, put
from fedsafe.config import ClientGroupConfig, ConfigError, ExperimentConfig
from fedsafe.data.federation import (
    ClientSpec,
    build_clients,
    check_partition_key,
    dirichlet_shards,
    make_shards,
    round_subset,
    sample_balanced,
    sample_clients,
    spread_poison,
)
from fedsafe.data.sources import load_records
from fedsafe.data.synthesis import ALIGNED_SUFFIX, SynthesisArgs, Synthesizer
from fedsafe.data.text import find_overlap
from fedsafe.defense import Defense, RoundUploads, Screened, ServerContext, available_defenses, build_defense
from fedsafe.defense.base import NoDefense
from fedsafe.evaluation.evaluate import EvalInputs, evaluate_model, judge_model_name, safety_verdicts
from fedsafe.metrics.detection import detection_counts, exposure, screening_counts
from fedsafe.models.builtin import resolve_model_path
from fedsafe.run_dir import MetricsLog, read_rounds, timed
from fedsafe.seeding import Salt, derive_seed
from fedsafe.training.sft import cosine_lr
from fedsafe.updates import SERVER_ID, ClientTask


@dataclass
class FederatedData:
    clients: list[ClientSpec]
    shards: dict[int, list[dict]]  # client id -> its records
    eval: EvalInputs  # harmful evaluation prompts, held-out benign pairs
    root: list[dict]  # the server's root data (rules needing a server update), else empty
    synthesis: dict = field(default_factory=dict)  # generated data set -> counts before/after the judge filter
    cover: dict[int, list[dict]] = field(default_factory=dict)  # malicious client id -> its benign cover data
    attack: Attack = NO_ATTACK  # the malicious clients' attack, built once for the run


SERVER = ClientSpec(client_id=SERVER_ID, group="server", role="server", index_in_group=0)


def poisons_benign(cfg: ExperimentConfig, attack: Attack | None = None) -> bool:
    """The attack (``attack``, else the one ``cfg`` names) puts harmful records into benign clients' data
    (poison spread thin)."""
    attack = attack or build_attack(cfg.attack.name, **cfg.attack.params)
    return any(attack.poison_fraction(g.name) > 0 for g in cfg.clients if g.role == "benign" and g.count)


def check_held_out(data: FederatedData, extra: list[dict] = ()) -> None:
    """No evaluation prompt (harmful or benign) may occur in client, root or defense data (``extra``)."""
    training = [r for shard in [*data.shards.values(), *data.cover.values()] for r in shard] + data.root + list(extra)
    overlap = find_overlap(data.eval.prompts, (r["instruction"] for r in training))
    if overlap:
        raise ConfigError(f"{len(overlap)} evaluation prompt(s) also occur in client, root or defense data, e.g. "
                          f"{overlap[0]!r}; evaluation.prompts and benign_prompts must be held out of every "
                          "training data set")


ALIGNED_ANSWER_ARGS = SynthesisArgs(max_new_tokens=96)


def aligned_answers(synth: Synthesizer | None, group: str):
    """The refusals of a group's aligned pairs, written per instruction by the off-the-shelf model with the
    safe suffix (``clients[].aligned_answers: generated``)."""
    if synth is None:
        raise ConfigError(f"clients[{group}].aligned_answers=generated needs the generation pool; "
                          "use aligned_answers=templates where there is none")
    generate = synth.generate_fn(ALIGNED_ANSWER_ARGS)
    return lambda instructions, seed: generate([i + ALIGNED_SUFFIX for i in instructions], seed)


def load_data(cfg: ExperimentConfig, synth: Synthesizer | None = None) -> FederatedData:
    """Evaluation prompts; each group's data (a malicious group's from the attack's ``make_data`` when the
    attack writes it, with ``synth``; else loaded from the group's source), cut into shards of
    ``examples_per_client`` (``group_shards``), a benign group's with the attack's poison spread thin; the
    malicious clients' cover data when the attack needs it; the server's root data. The attack is built here,
    once for the run, and travels in the returned data."""
    ev, a = cfg.evaluation, cfg.aggregation
    attack = build_attack(cfg.attack.name, **cfg.attack.params)
    harmful = [r["instruction"] for r in load_records(ev.prompts, ev.num_prompts, cfg.seed, **ev.prompts_args)]
    benign = load_records(ev.benign_prompts, ev.num_benign, derive_seed(cfg.seed, Salt.BENIGN_PROMPTS),
                          **ev.benign_prompts_args) if ev.benign_prompts else []
    graded = load_records(ev.helpfulness_prompts, ev.num_helpfulness, derive_seed(cfg.seed, Salt.BENIGN_PROMPTS),
                          **ev.helpfulness_prompts_args) if ev.helpfulness_prompts else []
    triggered = [attack.trigger.insert(p) for p in harmful] if attack.trigger else []
    inputs = EvalInputs(harmful, benign, graded, triggered)
    per_client = cfg.federation.examples_per_client
    clients = build_clients([(g.name, g.role, g.count) for g in cfg.clients])
    shards: dict[int, list[dict]] = {}
    cover: dict[int, list[dict]] = {}
    synthesis: dict = {}
    for group_index, group in enumerate(cfg.clients):
        if group.count == 0:
            continue
        seed = derive_seed(cfg.seed_for_data, group_index)
        made = attack.make_data(AttackContext(synth, inputs.prompts), group.count * per_client, seed) \
            if group.role == "malicious" else None
        if made is None:
            records = group_records(group, group.count * per_client, seed, synth)
        else:
            records, counts = made
            if counts:  # generated: counts before and after the judge filter
                synthesis[f"clients.{group.name}"] = counts
        members = [c for c in clients if c.group == group.name]
        group_data = group_shards(cfg, group.name, records, len(members), derive_seed(cfg.seed, group_index))
        fraction = attack.poison_fraction(group.name) if group.role == "benign" else 0.0
        if fraction > 0:
            need = sum(round(fraction * len(s)) for s in group_data)
            poison, counts = attack.make_data(AttackContext(synth, inputs.prompts), need,
                                              derive_seed(cfg.seed_for_data, group_index, Salt.POISON))
            if counts:  # generated (MaliciousGen): counts before and after the judge filter
                synthesis[f"poison.{group.name}"] = counts
            if len(poison) < need:
                raise ConfigError(f"attack.name={cfg.attack.name}: poisoning {fraction:g} of clients[{group.name}]'s "
                                  f"records needs {need} harmful records, the attack wrote {len(poison)}")
            group_data = spread_poison(group_data, poison, fraction, derive_seed(cfg.seed, group_index, Salt.POISON))
        shards.update({c.client_id: shard for c, shard in zip(members, group_data)})
        if group.role == "malicious" and attack.cover:
            cover.update(cover_data(cfg, group_index, members, synth))
    root = load_records(a.root_dataset, a.root_examples, derive_seed(cfg.seed_for_data, Salt.ROOT_DATA),
                        **a.root_dataset_args) if a.root_dataset else []
    data = FederatedData(clients, shards, inputs, root, synthesis, cover, attack)
    check_held_out(data)
    return data


def group_records(group: ClientGroupConfig, num: int, seed: int, synth: Synthesizer | None) -> list[dict]:
    """``num`` records from ``group``'s own data source (aligned refusals written by the pool when asked)."""
    refuse = aligned_answers(synth, group.name) if group.aligned_answers == "generated" else None
    return load_records(group.dataset, num, seed, refuse=refuse, **group.dataset_args)


def group_shards(cfg: ExperimentConfig, group: str, records: list[dict], num_clients: int, seed: int) -> list[list[dict]]:
    """``records`` cut into ``num_clients`` shards: iid, or by ``federation.dirichlet_alpha`` over the
    records' ``federation.partition_key``."""
    f = cfg.federation
    if f.dirichlet_alpha > 0:
        check_partition_key(f.partition_key, group, records)
        categories = [str(r[f.partition_key]) for r in records]
        split = dirichlet_shards(categories, num_clients, f.examples_per_client, f.dirichlet_alpha, seed)
    else:
        split = make_shards(len(records), num_clients, f.examples_per_client, seed)
    return [[records[i] for i in shard] for shard in split]


def cover_data(cfg: ExperimentConfig, group_index: int, members: list[ClientSpec],
               synth: Synthesizer | None) -> dict[int, list[dict]]:
    """Benign cover data for a malicious group's clients: a draw from the first benign group's source (as
    benign clients hold), one iid shard each."""
    benign = next((g for g in cfg.clients if g.role == "benign"), None)
    if benign is None:
        raise ConfigError(f"attack.name={cfg.attack.name} gives malicious clients benign cover data from the "
                          "first benign group's source; add a group of role benign (count 0 is enough)")
    per_client = cfg.federation.examples_per_client
    records = group_records(benign, len(members) * per_client,
                            derive_seed(cfg.seed_for_data, group_index, Salt.COVER), synth)
    split = make_shards(len(records), len(members), per_client, derive_seed(cfg.seed, group_index, Salt.COVER))
    return {c.client_id: [records[i] for i in shard] for c, shard in zip(members, split)}


def round_clients(cfg: ExperimentConfig, num_clients: int, round_idx: int) -> list[int]:
    """The clients round ``round_idx`` samples (``federation.sampling``) from the ``num_clients`` of ``cfg``."""
    f = cfg.federation
    if f.sampling == "balanced":
        roles = [c.role for c in build_clients([(g.name, g.role, g.count) for g in cfg.clients])]
        if len(roles) != num_clients:
            raise ValueError(f"round_clients: the config has {len(roles)} clients, asked for {num_clients}")
        return sample_balanced(roles, f.clients_per_round, round_idx, cfg.seed)
    return sample_clients(num_clients, f.clients_per_round, round_idx, cfg.seed if f.sampling == "seeded" else None)


def times_sampled(cfg: ExperimentConfig, round_idx: int, client_id: int) -> int:
    """How many rounds before ``round_idx`` sampled ``client_id`` (``round_clients``)."""
    return sum(client_id in round_clients(cfg, cfg.num_clients, r) for r in range(round_idx))


def client_task(cfg: ExperimentConfig, client: ClientSpec, shard: list[dict], round_idx: int,
                cover: list[dict] = (), attack: Attack | None = None) -> ClientTask:
    """The task of ``client`` in ``round_idx``. A malicious client (whose ``attack`` the caller gives: the
    run's, ``FederatedData.attack``) that does not strike this round trains like a benign one on its ``cover``
    data (role benign); one that strikes gets, beside its own records, the cover subsets its benign estimates
    train on."""
    t = cfg.train
    seed = None if cfg.federation.sampling == "paper" else cfg.seed
    size = t.batch_size * t.local_steps

    def draw(records, draw_seed: int | None) -> list[dict]:
        return [records[i] for i in round_subset(list(range(len(records))), size, draw_seed, round_idx, client.client_id)]

    role, records, estimates = client.role, draw(shard, seed), []
    if client.role == "malicious":
        if attack is None:
            raise ValueError(f"client {client.client_id} is malicious: client_task needs the run's attack")
        before = times_sampled(cfg, round_idx, client.client_id)
        if not attack.strikes(round_idx, before):
            role, records = "benign", draw(cover, seed)
        else:
            estimates = [draw(cover, derive_seed(cfg.seed, i, Salt.COVER)) for i in range(attack.benign_estimates)]
            if benign := round(attack.cover_share * len(records)):  # its benign data beside the harmful
                records = records[:len(records) - benign] + draw(cover, derive_seed(cfg.seed, Salt.COVER))[:benign]
    lr = cosine_lr(round_idx, cfg.federation.num_rounds, t.lr, t.min_lr)
    return ClientTask(
        client_id=client.client_id, round_idx=round_idx, role=role, records=records,
        lrs=[lr] * t.local_steps, batch_size=t.batch_size, max_length=t.max_length,
        weight_decay=t.weight_decay, seed=derive_seed(cfg.seed, round_idx, client.client_id),
        attack=cfg.attack.name, attack_params=dict(cfg.attack.params), cover=estimates,
        rank=cfg.client_ranks().get(client.client_id, 0),
    )


def resume_point(run_dir: Path) -> tuple[int, str | None]:
    """(first round to run, checkpoint folder to resume from or None); a damaged latest checkpoint is
    reported and the one before it used."""
    ckpt = latest_sound_checkpoint(run_dir, warn=tqdm.write)
    if ckpt is None:
        return 0, None
    return ckpt.round_idx + 1, str(ckpt.folder)


def side_by_side(groups: int, clients_per_round: int, limit: int, federations: int) -> int:
    """How many of ``federations`` federated runs train at once on ``groups`` trainer groups: one per
    ``clients_per_round`` groups, at most ``limit`` (``cluster.concurrent_federations``; 0 = no limit), at
    least one."""
    return max(1, min(groups // clients_per_round, limit or federations, federations))


class Session:
    """What every arm of a run shares: Ray, the plan, the generation pool, the synthesizer and the trainer
    pool (one base model and LoRA shape for all arms). ``close()`` stops the actors."""

    def __init__(self, cfg: ExperimentConfig, plan: Plan | None = None, federations: int = 1) -> None:
        """``federations``: how many federations may train side by side (trainer groups are planned for
        them where the cluster has room)."""
        resolve_model_path(cfg.model)  # builds a builtin model once, here, before any actor loads it
        resources = runtime.connect(cfg.cluster, generation_reserve(cfg)[0])
        self.plan = plan or runtime.plan_on_cluster(cfg, federations, runtime.model_shapes(cfg), resources,
                                                    say=tqdm.write)
        self.generation = GenerationPool(cfg, cache_dir=Path(cfg.output.root) / "cache" / "generations")
        self.synth = Synthesizer(self.generation, judge_model_name(cfg))
        try:
            self.pool = TrainerPool(self.plan, cfg, federations)
        except BaseException:  # trainers that cannot start: free the generators' resources too (Ray stays up)
            self.generation.shutdown()
            raise
        self.init = self.pool.initial_adapter()
        self.init_ref = put(self.init.vector)
        self.cfg = cfg

    def side_by_side(self, federations: int) -> int:
        """How many of ``federations`` waiting federated runs train at once (``side_by_side``)."""
        return side_by_side(len(self.pool.groups), self.cfg.federation.clients_per_round,
                            self.cfg.cluster.concurrent_federations, federations)

    def register_adapter(self, vector_ref) -> str:
        return self.generation.register_adapter(vector_ref, self.init.spec, self.init.peft_config)

    def server_context(self, cfg: ExperimentConfig, data: FederatedData) -> ServerContext:
        training = [r["instruction"] for shard in [*data.shards.values(), *data.cover.values(), data.root]
                    for r in shard]
        return ServerContext(seed=cfg.seed, data_seed=cfg.seed_for_data, max_length=cfg.train.max_length,
                             held_out=data.eval.prompts,
                             synthesizer=self.synth, train=self.pool.train_server,
                             register_adapter=self.register_adapter,
                             check_data=lambda records: check_held_out(data, records),
                             initial=self.init_ref, fetch=fetch, spec=self.init.spec,
                             generate=lambda requests: self.generation.generate(cfg.model.name, requests),
                             judge=lambda answers: safety_verdicts(  # the screening's canary answers, at their length
                                 answers, cfg.evaluation.rule_keywords, True, cfg.defense.screening.max_new_tokens),
                             training=training)

    def evaluate(self, cfg: ExperimentConfig, inputs: EvalInputs, vector_ref, out_dir: Path, name: str,
                 seconds: dict[str, float] | None = None) -> dict:
        """Every configured metric of the base model plus the adapter ``vector_ref`` (``seconds``: the wall
        time of each part)."""
        loss = lambda records: self.pool.response_loss(vector_ref, records, cfg.train.batch_size,  # noqa: E731
                                                       cfg.train.max_length)
        return evaluate_model(cfg, self.generation, self.register_adapter(vector_ref), inputs, out_dir, name, loss,
                              seconds)

    def close(self) -> None:
        """Stop the actors (once; a second call does nothing)."""
        if not self.pool.closed:
            self.pool.shutdown()
            self.generation.shutdown()


def round_inputs(cfg: ExperimentConfig, inputs: EvalInputs) -> EvalInputs:
    """The per-round evaluation: the first ``evaluation.round_num_prompts`` harmful prompts (0 = all), and
    the benign ones only when every prompt is used."""
    n = cfg.evaluation.round_num_prompts
    return inputs if n == 0 else EvalInputs(inputs.harmful[:n], [])


def federate(session: Session, cfg: ExperimentConfig, data: FederatedData, run_dir: Path, on_round=None,
             defense: Defense | None = None, ctx: ServerContext | None = None, start=None
             ) -> CoordinatorHandle | FinishedFederation:
    """The round loop; continues after the last checkpoint in ``run_dir``. Returns the coordinator, which
    holds the final global adapter (a finished federation runs no round and starts no coordinator: its last
    checkpoint is read, ``FinishedFederation``). ``start``: the adapter round 0 starts from (the defense's
    hardened one; default the trainers' initial adapter). The defense screens each round's uploads
    (``screen``) and hooks its aggregate (``aggregate_hook``); ``defense.on_round`` sees each
    round's record before it is logged; ``on_round(record)`` is called after. A coordinator that dies is
    started again from the last checkpoint and its round run again (at most ``cluster.max_retries`` times
    per run)."""
    defense = defense or NoDefense()
    rounds = cfg.federation.num_rounds
    start_round, resume_from = resume_point(run_dir)
    if start_round >= rounds:
        return FinishedFederation(session.init, resume_from)
    hook = defense.aggregate_hook()

    def coordinator_from(checkpoint: str | None) -> CoordinatorHandle:
        return CoordinatorHandle(session.init, cfg, str(run_dir), checkpoint, start, hook)

    coordinator = coordinator_from(resume_from)
    screen = (lambda view: defense.screen(ctx, view)) if defense.changes_rounds else None
    log = MetricsLog(run_dir, start_round)
    if start_round:
        tqdm.write(f"resuming {run_dir} at round {start_round} of {rounds}")
    restarts = 0
    with tqdm(range(start_round, rounds), desc="rounds", initial=start_round, total=rounds) as bar:
        for round_idx in bar:
            record, coordinator, restarts = run_round_restarting(session, cfg, data, coordinator, round_idx,
                                                                 round_idx > start_round, run_dir, restarts,
                                                                 coordinator_from, screen)
            record["coordinator_restarts"] = restarts
            defense.on_round(ctx, round_idx, record)
            if cfg.evaluation.every_n_rounds and (round_idx + 1) % cfg.evaluation.every_n_rounds == 0:
                record["evaluation"] = session.evaluate(cfg, round_inputs(cfg, data.eval), coordinator.global_ref(),
                                                        run_dir, f"round_{round_idx:04d}")
            log.log(record)
            if on_round is not None:
                on_round(record)
    if cfg.evaluation.client_similarity:
        roles = [c.role for c in data.clients]
        (Path(run_dir) / "clients.json").write_text(json.dumps({"roles": roles, **coordinator.similarity()}))
    return coordinator


def run_round_restarting(session: Session, cfg: ExperimentConfig, data: FederatedData,
                         coordinator: CoordinatorHandle, round_idx: int, resize: bool, run_dir: Path,
                         restarts: int, coordinator_from, screen=None) -> tuple[dict, CoordinatorHandle, int]:
    """``run_round``; a coordinator that dies is started again from the last checkpoint
    (``coordinator_from(checkpoint)``) and the round run again, at most ``cluster.max_retries`` times per
    run. Returns (record, the coordinator, restarts)."""
    while True:
        try:
            return run_round(session, cfg, data, coordinator, round_idx, resize, screen), coordinator, restarts
        except CoordinatorLost as err:
            restarts += 1
            if restarts > cfg.cluster.max_retries:
                raise RuntimeError(f"the coordinator died {restarts} times ({err}); the run stops here. "
                                   f"Continue it with: fedsafe run --resume {run_dir}") from None
            tqdm.write(f"round {round_idx}: the coordinator died ({err}); restarting it from the last checkpoint")
            coordinator.shutdown()
            next_round, resume_from = resume_point(run_dir)
            coordinator = coordinator_from(resume_from)
            if next_round > round_idx:  # it died after checkpointing this round: the round is done
                return {"round": round_idx, "recovered": f"the coordinator died after checkpointing ({err}); "
                        "this round's training and aggregation records are lost"}, coordinator, restarts


def run_round(session: Session, cfg: ExperimentConfig, data: FederatedData, coordinator: CoordinatorHandle,
              round_idx: int, resize: bool, screen=None) -> dict:
    """One round: sample clients, train them (each update staged in the coordinator as it finishes),
    ``screen`` the uploads (the defense's, if it screens), aggregate and checkpoint. Returns the round's
    record; clients that failed every try are listed under ``failed`` and their tries under ``failures``."""
    round_start = time.perf_counter()
    sampled = round_clients(cfg, len(data.clients), round_idx)
    tasks = [client_task(cfg, data.clients[c], data.shards[c], round_idx, data.cover.get(c, []), data.attack)
             for c in sampled]
    attacking = [t.client_id for t in tasks if t.role == "malicious"]
    if data.root:  # the server trains on its root data like a client (FLTrust's g0)
        tasks.append(client_task(cfg, SERVER, data.root, round_idx))
    resized = session.pool.resize() if resize else {}
    with tqdm(total=len(tasks), desc=f"round {round_idx} clients", leave=False) as bar:  # closed on Ctrl-C too
        outcome = session.pool.train(coordinator.global_ref(), tasks, on_done=lambda _: bar.update(),
                                     stage=lambda task, ref: coordinator.stage(round_idx, task, ref))
    screened = screen(RoundUploads(round_idx, coordinator.uploads(round_idx, attacking), coordinator.global_ref(),
                                   coordinator.candidate)) if screen else None
    screened = screened or Screened()
    summary = coordinator.aggregate(round_idx, attacking, screened.reject, screened.scale)
    metrics = outcome.metrics[:len(sampled)]
    record = {
        "round": round_idx, "sampled": sampled, "lr": tasks[0].lrs[0],
        "client_metrics": [vars(m) for m in metrics if m is not None], "seconds": time.perf_counter() - round_start,
        "trainer_groups": len(session.pool.groups), **summary, "attacking": attacking,
        **(exposure(summary["clients"], summary["weights"], attacking) if attacking and summary["weights"] else {}),
    }
    if screened.record:
        record["screening"] = screened.record
    if outcome.failures:
        record["failures"] = outcome.failures
    if failed := [t.client_id for t, m in zip(tasks, outcome.metrics) if m is None]:
        record["failed"] = failed
    if resized.get("added") or resized.get("dropped") or session.pool.lost:
        record["trainer_pool"] = {**resized, "lost_total": session.pool.lost}
    if data.root and outcome.metrics[-1] is not None:
        record["server_metrics"] = vars(outcome.metrics[-1])
    return record


def run_arm(session: Session, cfg: ExperimentConfig, fed_dir: Path, arm_dir: Path, on_round=None) -> dict:
    """One arm: setup, the rounds (in ``fed_dir``, continued from its checkpoints; a finished federation is
    only loaded, so arms with the same federation share it), the defense, evaluation. Writes the final
    adapter (``arm_dir/adapter``, a PEFT folder), the answers (``arm_dir/evaluation``) and returns the result."""
    started = time.perf_counter()
    phases: dict[str, float] = {}  # wall time of each part, for the report's "where the time went"
    evaluation_seconds: dict[str, float] = {}
    fed_dir, arm_dir = Path(fed_dir), Path(arm_dir)
    arm_dir.mkdir(parents=True, exist_ok=True)
    with timed(phases, "setup"):  # data (generated by the pool when not cached), the defense's preparation
        defense = build_defense(cfg.defense)
        data = load_data(cfg, session.synth)
        ctx = session.server_context(cfg, data)
        start_round = resume_point(fed_dir)[0]
        ctx.rounds_left = start_round < cfg.federation.num_rounds
        start = defense.before_training(ctx)
    with timed(phases, "rounds"):
        coordinator = federate(session, cfg, data, fed_dir, on_round, defense, ctx, start)
    with timed(phases, "defense"):
        final_ref = defense.after_training(ctx, coordinator.global_ref())
    adapter = coordinator.export(final_ref, str(arm_dir / "adapter"))
    coordinator.shutdown()
    with timed(phases, "evaluation"):
        evaluation = session.evaluate(cfg, data.eval, final_ref, arm_dir, "final", evaluation_seconds)
    applied, rounds = defense.summary(), read_rounds(fed_dir)
    synthesis = {**data.synthesis, **({"defense": applied["synthesis"]} if applied.get("synthesis") else {})}
    return {
        "rule": cfg.aggregation.rule, "attack": cfg.attack.name, "attack_params": dict(cfg.attack.params),
        "num_malicious": cfg.num_malicious, "attacked": cfg.num_malicious > 0 or poisons_benign(cfg, data.attack),
        "benign_clients": cfg.num_clients - cfg.num_malicious,
        "defense": cfg.defense.name, "defense_level": applied.get("level", 0), "evaluation": evaluation,
        "lora": {"mode": cfg.aggregation.mode, "ranks": cfg.group_ranks()},
        "data": {"synthesis": synthesis, "eval_harmful": len(data.eval.harmful), "eval_benign": len(data.eval.benign),
                 "defense_examples": applied.get("examples", 0)},
        "detection": detection_counts(rounds), "screening": screening_counts(rounds),
        "defense_cost": defense_cost(rounds, phases, applied),
        "adapter": adapter, "federation_dir": str(fed_dir), "resumed_at_round": start_round,
        "seconds": time.perf_counter() - started, "phases": phases, "evaluation_seconds": evaluation_seconds,
    }


def defense_cost(rounds: list[dict], phases: dict[str, float], applied: dict) -> dict:
    """What the defenses cost: the screening's answers and seconds over the rounds, the setup (where
    hardening and the projection's direction are trained) and the post-hoc phase, and each defense's own
    summary (data sizes)."""
    screening = [r["screening"] for r in rounds if r.get("screening")]
    return {"screening_answers": sum(s["answers"] for s in screening),
            "screening_seconds": round(sum(s["seconds"] for s in screening), 2),
            "setup_seconds": round(phases.get("setup", 0.0), 2), "posthoc_seconds": round(phases.get("defense", 0.0), 2),
            **{k: v for k, v in applied.items() if k in available_defenses()}}


def cache_counts(generation: GenerationPool) -> dict | None:
    cache = generation.cache
    return {"hits": cache.hits, "misses": cache.misses} if cache else None
