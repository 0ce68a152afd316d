"""Experiments as matrices of arms: the driver every run goes through (``launch.py`` calls ``run_experiment``).

    arms:
      - {name: "FedAvg, no attack", attack: false}
      - {name: "FedAvg", rule: fedavg}
      - {name: "Median", rule: median}
      - {name: "FedAvg + Level 2", rule: fedavg, defense_level: 2}

Every arm is the run's config with the arm's changes (``arm_config``), and runs through one function, the
loop's ``fedsafe.experiment.run_arm``. A config without ``arms`` is a matrix of one arm (two when it has a
defense: the model before and after it). Arms with the same federated part (clients, data, rule,
training, evaluation) share one federated run: the first arm trains it, the others load its last
checkpoint, so every defense starts from the same aggregated adapter; generated data is made once (the
generation cache keeps it). Where the trainer pool has room for several federated runs
(``cluster.concurrent_federations``), the arms of different federated runs go side by side, one thread
per federated run (``run_side_by_side``); the results are those of one after another.

Where things go. A config with arms keeps everything finished under ``<output.root>/cache``, keyed by a
hash of what determines it, so running the matrix again (or another with common arms) recomputes nothing
that is done, and an interrupted federated run continues from its last checkpoint:

    runs/cache/federations/<key>/   config.yaml metrics.jsonl checkpoints/ clients.json evaluation/
    runs/cache/arms/<key>/          result.json adapter/ (PEFT, safetensors) evaluation/ (answers)

A config without arms keeps its federated run in the run folder itself (``--resume`` continues it) and
its arms in ``<run>/arms/<name>/``. Either way the run folder gets ``results.json``, ``report.md`` and
``report.html`` in one schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from fedsafe.aggregation.config import FACTORS
from fedsafe.analysis import analyse, results_frame
from fedsafe.attack import build_attack
from fedsafe.cluster.plan import Plan
from fedsafe.config import ArmConfig, ConfigError, ExperimentConfig, from_yaml_text, to_dict, to_yaml
from fedsafe.defense import build_defense
from fedsafe.evaluation.evaluate import JUDGES_VERSION, calibration, judge_model_name
from fedsafe.experiment import Session, cache_counts, poisons_benign, run_arm
from fedsafe.files import write_whole
from fedsafe.preflight import arm_defense, check_components
from fedsafe.records import SCHEMA, ArmResult, RunResults
from fedsafe.run_dir import read_rounds, record_invocation, single_writer

FEDERATION_FIELDS = ("seed", "data_seed", "model", "lora", "clients", "federation", "train", "aggregation", "attack",
                     "evaluation")
GENERATION_FIELDS = ("backend", "model", "dtype")  # what changes generated text (data, answers)


def arm_config(base: ExperimentConfig, arm: ArmConfig, seed: int | None = None) -> ExperimentConfig:
    """The config of one arm and seed: ``base`` with the arm's attack, rule, defense level and overrides, and
    ``seed`` (default: ``base.seed``), validated again. ``defense_level`` k > 0 sets ``defense.level`` and
    adds ``posthoc_sft`` to the arm's other ``defenses`` (default: the base's), 0 leaves it out."""
    d = to_dict(base)
    d["arms"], d["seeds"] = [], []
    d["seed"] = base.seed if seed is None else seed
    if not arm.attack:
        for group in d["clients"]:
            if group["role"] == "malicious":
                group["count"] = 0
    if arm.attack_name:
        d["attack"] = {"name": arm.attack_name, "params": dict(arm.attack_params)}
    if arm.rule:
        d["aggregation"]["rule"], d["aggregation"]["params"] = arm.rule, dict(arm.rule_params)
    d["defense"]["name"], d["defense"]["level"] = arm_defense(base.defense.name, base.defense.level, arm)
    try:
        cfg = from_yaml_text(yaml.safe_dump(d, sort_keys=False), list(arm.overrides))
        check_components(cfg)
        return cfg
    except ConfigError as err:
        raise ConfigError(f"arms[{arm.name}]: {err}") from None


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def federation_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines the federated run and its per-round evaluations (the defense
    too when it changes the rounds); a federation without malicious clients is the same whatever they would
    have done (the paper's no-attack row is shared by its tables)."""
    d = to_dict(cfg)
    del d["train"]["gradient_checkpointing"]  # trades memory for time: the same model to float rounding
    for key, default in (("mode", FACTORS), ("fold_rank", 0)):  # keys from before they existed stay the same
        if d["aggregation"][key] == default:
            del d["aggregation"][key]
    for group in d["clients"]:
        if group["lora_rank"] == 0:
            del group["lora_rank"]
    if cfg.num_malicious == 0 and not poisons_benign(cfg):  # nobody attacks: the attack and the idle malicious
        # groups change nothing
        d["attack"] = None
        d["clients"] = [g if g["count"] > 0 else None for g in d["clients"]]  # positions seed the groups' data
    fields = [{k: d[k] for k in FEDERATION_FIELDS}, {k: d["generation"][k] for k in GENERATION_FIELDS}]
    if rounds := build_defense(cfg.defense).round_key():
        fields.append(rounds)
    return _digest(fields)


def arm_key(cfg: ExperimentConfig) -> str:
    """Hash of the federated run plus the defense (if any) and the version of the judges that score it
    (``defense.params`` when it holds something: a key from before it existed stays the same)."""
    defense = to_dict(cfg)["defense"]
    if not defense["params"]:
        del defense["params"]
    parts = [federation_key(cfg), defense if cfg.defense.name != "none" else None, JUDGES_VERSION]
    if trigger := build_attack(cfg.attack.name, **cfg.attack.params).trigger:  # asked with it too, attacked or not
        parts.append(dataclasses.asdict(trigger))
    return _digest(parts)


@dataclass
class Arm:
    spec: ArmConfig
    cfg: ExperimentConfig
    federation: str  # federation_key
    key: str  # arm_key
    fed_dir: Path  # where its federated run lives
    dir: Path  # where its result, adapter and answers go
    seed: int = 0

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"


def implicit_arms(cfg: ExperimentConfig) -> list[ArmConfig]:
    """A config without arms: its own model, and with a defense also the model before the defense."""
    name = cfg.aggregation.rule
    if cfg.defense.name == "none":
        return [ArmConfig(name=name)]
    level = cfg.defense.level if "posthoc_sft" in cfg.defense.names else 0
    shown = f"{cfg.defense.name} (level {level})" if level else cfg.defense.name
    return [ArmConfig(name=name, defenses="none"), ArmConfig(name=f"{name} + {shown}", defense_level=level)]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"


def expand_arms(cfg: ExperimentConfig, run_dir: Path | None = None) -> list[Arm]:
    """Every arm and seed with its config and folders: under ``run_dir`` for a config without arms (in
    ``seed-<s>/`` when there are several seeds), else in the cache under ``output.root``."""
    arms = []
    seeds = cfg.run_seeds
    for seed in seeds:  # seed by seed: an interrupted run has whole seeds
        for spec in cfg.arms or implicit_arms(cfg):
            arm_cfg = arm_config(cfg, spec, seed)
            federation, key = federation_key(arm_cfg), arm_key(arm_cfg)
            if cfg.arms:
                fed_dir, arm_dir = cache_root(cfg) / "federations" / federation, cache_root(cfg) / "arms" / key
            else:
                if run_dir is None:
                    raise ValueError("a config without arms keeps its arms in its run folder: pass run_dir")
                fed_dir = Path(run_dir) / f"seed-{seed}" if len(seeds) > 1 else Path(run_dir)
                arm_dir = fed_dir / "arms" / slug(spec.name)
            arms.append(Arm(spec, arm_cfg, federation, key, fed_dir, arm_dir, seed))
    return arms


def planning_arms(cfg: ExperimentConfig) -> list[Arm]:
    """The matrix's arms as a run not started yet would lay them out (for --dry-run)."""
    return expand_arms(cfg, Path(cfg.output.root) / f"{cfg.output.name}-<timestamp>")


def describe_arms(cfg: ExperimentConfig, arms: list[Arm] | None = None) -> str:
    """The arms (default: ``planning_arms``), which federated run each shares, and whether it is already
    finished (for --dry-run)."""
    arms = planning_arms(cfg) if arms is None else arms
    runs = list(dict.fromkeys(a.federation for a in arms))
    seeds = cfg.run_seeds
    lines = [f"matrix: {len(arms) // len(seeds)} arms x {len(seeds)} seed(s) {seeds} over {len(runs)} federated runs"]
    for arm in arms:
        done = "finished" if arm.result_path.is_file() else "to run"
        lines.append(f"  {arm.spec.name} (seed {arm.seed}): rule {arm.cfg.aggregation.rule}, attack "
                     f"{arm.cfg.attack.name if arm.spec.attack else 'none'}, "
                     f"defense {arm.cfg.defense.name}" + (f" level {arm.cfg.defense.level}" if arm.spec.defense_level else "")
                     + lora_line(arm.cfg) + f", federated run {runs.index(arm.federation) + 1} ({done})")
    return "\n".join(lines)


def lora_line(cfg: ExperimentConfig) -> str:
    """How the arm combines LoRA adapters, where it differs from averaging the factors of one rank."""
    ranks = ", ".join(f"{name} rank {rank}" for name, rank in cfg.group_ranks().items())
    mode = f", LoRA {cfg.aggregation.mode}" if cfg.aggregation.mode != FACTORS else ""
    return mode + (f" ({ranks} of {cfg.lora.r})" if ranks else "")


def cache_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.root) / "cache"


def collect_arms(arms: list[Arm]) -> dict:
    """One entry per arm: the first seed's result (its fields describe the arm), ``runs`` (each seed's
    folder and evaluation); ``fedsafe.analysis`` adds the per-seed values, summaries and paired tests."""
    out: dict = {}
    for a in arms:
        result = ArmResult.load(a.result_path).to_dict()
        entry = out.setdefault(a.spec.name, {**result, "runs": []})
        entry["runs"].append({"seed": a.seed, "dir": str(a.dir), "federation_dir": result["federation_dir"],
                              "evaluation": result["evaluation"], "seconds": result["seconds"],
                              "phases": result.get("phases", {}), "detection": result.get("detection"),
                              "screening": result.get("screening"), "defense_cost": result.get("defense_cost"),
                              "evaluation_seconds": result.get("evaluation_seconds", {})})
    return out


def group_by_federation(arms: list[Arm]) -> dict[Path, list[Arm]]:
    """Arms by the folder of their federated run, in order: each group runs in order (its first arm trains
    the federation, the others load it)."""
    groups: dict[Path, list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.fed_dir, []).append(arm)
    return groups


def planned_federations(cfg: ExperimentConfig, arms: list[Arm] | None = None) -> int:
    """How many federated runs of ``arms`` (default: the whole matrix) the plan makes room for side by side:
    all of them, at most ``cluster.concurrent_federations`` when set."""
    count = len(group_by_federation(planning_arms(cfg) if arms is None else arms))
    return max(1, min(cfg.cluster.concurrent_federations or count, count))


class Progress:
    """What a run shows while it goes: the trackers (``output.trackers``) get every round's scalars, and
    ``report.html`` is rewritten after every round and every finished arm (``fedsafe.report.write_live_report``).
    Called from the federations' threads; a failure to show progress is reported once and never stops the run."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, arms: list[Arm], track: bool = True) -> None:
        from fedsafe.tracking import Trackers, series_name

        self.cfg, self.run_dir, self.arms = cfg, Path(run_dir), arms
        # each federated run is named after the first arm that uses it
        self.series = {fed_dir: series_name(group[0].spec.name, group[0].seed)
                       for fed_dir, group in group_by_federation(arms).items()}
        self.trackers = Trackers(cfg.output.trackers if track else [], self.run_dir, self.run_dir.name, to_dict(cfg),
                                 cfg.output)
        self.lock = threading.Lock()
        self.finished: dict = {"name": cfg.output.name, "rounds": cfg.federation.num_rounds, "arms": {}}
        self.failed = False
        self._show(self._collect)

    def _show(self, what, *args) -> None:
        try:
            what(*args)
        except Exception as err:  # noqa: BLE001 - progress is a view; the run's files are what count
            if not self.failed:
                tqdm.write(f"progress display failed ({type(err).__name__}: {err}); the run goes on without it")
            self.failed = True

    def round_done(self, arm: Arm, record: dict) -> None:
        self._show(self.trackers.log_round, self.series[arm.fed_dir], record)
        self.show("running")

    def _collect(self) -> None:
        """The finished arms (those a cache already holds too): their rounds reach the trackers (those of a
        federated run trained elsewhere too), their rows the report."""
        done = [a for a in self.arms if a.result_path.is_file()]
        for fed_dir in dict.fromkeys(a.fed_dir for a in done):
            for record in read_rounds(fed_dir):
                self.trackers.log_round(self.series[fed_dir], record)
        arms = collect_arms(done)
        if arms:
            arms = analyse(arms)[0]
        with self.lock:
            self.finished = {**self.finished, "arms": arms}

    def arm_finished(self) -> None:
        self._show(self._collect)
        self.show("running")

    def show(self, state: str) -> None:
        self._show(self.write, state)

    def write(self, state: str) -> None:
        from fedsafe.report import write_live_report

        with self.lock:
            rounds = {self.series[fed_dir]: read_rounds(fed_dir) for fed_dir in self.series}
            done = sum(a.result_path.is_file() for a in self.arms)
            write_live_report(self.run_dir, self.finished, rounds, done, len(self.arms), state)

    def close(self, results: dict | None = None) -> None:
        """The end of the run: the trackers get the result table and the report's plots (``results``), or
        the live report says the run stopped (none)."""
        try:
            if results is None:
                self.show("stopped")
            elif self.trackers.trackers:
                plots = {p.stem: p for p in sorted((self.run_dir / "plots").glob("*.png")) if p.stem != "progress"}
                self.trackers.log_results(results_frame(results), results["table"], plots)
        finally:
            self.trackers.close()


def write_stopped_report(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """``report.html`` of a run folder without ``results.json`` (a run that stopped): its federated runs'
    rounds so far and the arms it finished; the trackers are left alone."""
    progress = Progress(cfg, run_dir, expand_arms(cfg, run_dir), track=False)
    progress.write("stopped")
    return Path(run_dir) / "report.html"


def finish_arm(session: Session, arm: Arm, on_round, in_cache: bool, progress: Progress | None = None) -> None:
    """Run one arm (``run_arm``) and write its result beside it (``in_cache``: and its config beside its
    federated run); ``progress`` sees each round (before ``on_round``) and the finished arm."""
    if in_cache:
        write_whole(arm.fed_dir / "config.yaml", to_yaml(arm.cfg))
    tqdm.write(f"arm {arm.spec.name!r}, seed {arm.seed}: federated run {arm.federation} in {arm.fed_dir}")

    def round_done(record: dict) -> None:
        if progress is not None:
            progress.round_done(arm, record)
        if on_round is not None:
            on_round(record)

    result = run_arm(session, arm.cfg, arm.fed_dir, arm.dir, round_done)
    result = ArmResult.from_dict({"arm": dataclasses.asdict(arm.spec), "seed": arm.seed, "federation": arm.federation,
                                  **result})
    write_whole(arm.result_path, json.dumps(result.to_dict(), indent=2))
    if progress is not None:
        progress.arm_finished()


class Stopped(Exception):
    """Raised in a federation's thread after its round when another thread failed or the run was stopped."""


def run_side_by_side(groups: list[list[Arm]], workers: int, finish, on_round, on_stop=None) -> None:
    """``finish(arm, on_round)`` for every arm, each group's arms in order in one thread, ``workers`` groups
    at a time. The first error (or Ctrl-C / SIGTERM in the main thread) stops the others and is raised once
    every thread has ended: ``on_stop()`` (e.g. shutting the pools down, so that their calls fail at once)
    runs first; a thread between rounds stops after its round (its checkpoint is written)."""
    stop = threading.Event()

    def after_round(record: dict) -> None:
        if on_round is not None:
            on_round(record)
        if stop.is_set():
            raise Stopped()

    def work(group: list[Arm]) -> None:
        for arm in group:
            if stop.is_set():
                return
            finish(arm, after_round)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="federation")
    futures = [pool.submit(work, group) for group in groups]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        stop.set()
        if on_stop is not None:
            on_stop()
        pool.shutdown(wait=True, cancel_futures=True)  # the other threads' errors (pools shut) end with them
        raise
    pool.shutdown()


def run_experiment(cfg: ExperimentConfig, run_dir: Path, plan: Plan | None = None, on_round=None) -> dict:
    """Run every arm not already finished (each through ``run_arm``); write ``results.json`` and the
    report into ``run_dir``; return the results. ``on_round(record)`` is called after each round. Each arm's
    folders have one writer (``fedsafe.run_dir.single_writer``, taken in ``run_arms``); the run folder's lock
    is the caller's (``fedsafe.api.RunLifecycle`` holds it for the whole run)."""
    from fedsafe.report import write_report

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    invocations = record_invocation(run_dir)
    arms = expand_arms(cfg, run_dir)
    todo = [a for a in arms if not a.result_path.is_file()]
    if cfg.arms:
        tqdm.write(f"{len(arms)} arms, {len(arms) - len(todo)} already finished (cache: {cache_root(cfg)})")
    progress = Progress(cfg, run_dir, arms)
    progress.show("running")
    try:
        cache = run_arms(cfg, todo, plan, on_round, progress) if todo else None
        results = {
            "schema": SCHEMA, "name": cfg.output.name, "model": cfg.model.name, "rounds": cfg.federation.num_rounds,
            "num_clients": cfg.num_clients, "num_malicious": cfg.num_malicious,
            "clients_per_round": cfg.federation.clients_per_round, "generation_backend": cfg.generation.backend,
            "judge_model": judge_model_name(cfg), "generation_cache": cache, "seeds": cfg.run_seeds,
            "sampling": cfg.federation.sampling, "data_seed": cfg.data_seed, "arms": collect_arms(arms),
            "decoding": {"temperature": cfg.evaluation.temperature, "top_p": cfg.evaluation.top_p,
                         "max_new_tokens": cfg.evaluation.max_new_tokens, "samples_per_prompt": 1},
            "computed": [f"{a.spec.name} (seed {a.seed})" for a in todo], "wall_s": time.perf_counter() - started,
            "calibration": calibration(cfg.evaluation.rule_keywords, cfg.evaluation.max_new_tokens),
            "invocations": invocations,
        }
        results["arms"], results["analysis"] = analyse(results["arms"])
        write_whole(run_dir / "results.json", RunResults.from_dict(results).to_json(run_dir))
        results["table"] = write_report(run_dir, results)
    except BaseException:
        progress.close()
        raise
    progress.close(results)
    return results


def adapter_shape(cfg: ExperimentConfig) -> tuple:
    """What the trainers' PEFT adapter is built with: arms that differ here need their own trainers."""
    a = cfg.adapter_lora
    return cfg.lora.r, a.r, a.alpha, tuple(a.target_modules), a.dropout


def run_arms(cfg: ExperimentConfig, todo: list[Arm], plan: Plan | None, on_round, progress: Progress) -> dict | None:
    """Run the arms of ``todo`` on one session per adapter shape (``adapter_shape``: the folds of
    ``aggregation.mode`` stack and exact need components beyond lora.r), side by side where the plan has
    room; returns the generation cache's counts (summed over the sessions)."""
    with ExitStack() as held:  # every folder this run writes has one writer: taken before Ray starts
        for folder in dict.fromkeys(d for a in todo for d in (a.fed_dir, a.dir)):
            held.enter_context(single_writer(folder))
        todo = [a for a in todo if not a.result_path.is_file()]  # finished meanwhile by another run
        shapes: dict[tuple, list[Arm]] = {}
        for arm in todo:
            shapes.setdefault(adapter_shape(arm.cfg), []).append(arm)
        counts = [run_session(cfg, arms, plan, on_round, progress) for arms in shapes.values()]
    counted = [c for c in counts if c]
    return {k: sum(c[k] for c in counted) for k in counted[0]} if counted else None


def run_session(cfg: ExperimentConfig, todo: list[Arm], plan: Plan | None, on_round, progress: Progress) -> dict | None:
    """The arms of ``todo`` (one adapter shape) on one session, built for their shape."""
    first = todo[0].cfg
    shaped = dataclasses.replace(cfg, lora=first.lora, aggregation=dataclasses.replace(
        cfg.aggregation, mode=first.aggregation.mode, fold_rank=first.fold_rank))
    by_federation = list(group_by_federation(todo).values())
    session = Session(shaped, plan, federations=planned_federations(cfg, todo))
    try:
        side_by_side = session.side_by_side(len(by_federation))
        if side_by_side > 1:
            tqdm.write(f"{len(by_federation)} federated runs, {side_by_side} side by side on "
                       f"{len(session.pool.groups)} trainer groups")
            run_side_by_side(by_federation, side_by_side,
                             lambda arm, after_round: finish_arm(session, arm, after_round, bool(cfg.arms), progress),
                             on_round, on_stop=session.close)
        else:
            for arm in todo:
                finish_arm(session, arm, on_round, bool(cfg.arms), progress)
    finally:
        session.close()
    return cache_counts(session.generation)
