"""An experiment matrix: several arms of one config that share what they can (PAPER.md Tables 1 and 3).

    arms:
      - {name: "FedAvg, no attack", attack: false}
      - {name: "FedAvg", rule: fedavg}
      - {name: "Median", rule: median}
      - {name: "FedAvg + Level 2", rule: fedavg, defense_level: 2}

Every arm is the run's config with the arm's changes (``arm_config``). Arms with the same federated part
(clients, data, rule, training, evaluation) share one federated run, so the attacked FedAvg adapter is
trained once and every post-hoc defense on it starts from it; Level 1 and 2 defense data are made once
(the generation cache keeps them). Everything finished is kept under ``<output.root>/cache``, keyed by a
hash of what determines it, so running the matrix again recomputes nothing that is done, and an
interrupted federated run continues from its last checkpoint:

    runs/cache/federations/<key>/   config.yaml metrics.jsonl checkpoints/ clients.json evaluation/
    runs/cache/arms/<key>/          result.json evaluation/ (answers)

Arms run one after another on one Ray session (one trainer pool, one generation pool); each federated
run's clients train side by side on the trainers, as resources allow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from fedsafe.cluster.plan import Plan
from fedsafe.config import ArmConfig, ConfigError, ExperimentConfig, from_yaml_text, to_dict, to_yaml
from fedsafe.experiment import (
    FederatedData, Session, cache_counts, check_held_out, defend, defense_data, federate, load_data, server_defense_data,
)
from fedsafe.evaluation.metrics import judge_model_name

FEDERATION_FIELDS = ("seed", "model", "lora", "clients", "federation", "train", "aggregation", "attack", "evaluation")
GENERATION_FIELDS = ("backend", "model", "dtype")  # what changes generated text (data, answers)


def arm_config(base: ExperimentConfig, arm: ArmConfig) -> ExperimentConfig:
    """The config of one arm: ``base`` with the arm's attack, rule and defense level (validated again)."""
    d = to_dict(base)
    d["arms"] = []
    if not arm.attack:
        for group in d["clients"]:
            if group["role"] == "malicious":
                group["count"] = 0
    if arm.rule:
        d["aggregation"]["rule"], d["aggregation"]["params"] = arm.rule, dict(arm.rule_params)
    defense = d["defense"]
    if arm.defense_level == 0:
        defense["name"] = "none"
    else:
        defense["name"] = "posthoc_sft"
        if arm.defense_level == 1:
            defense["dataset"], defense["dataset_args"] = defense["level1_dataset"], defense["level1_dataset_args"]
        else:
            args = defense["dataset_args"] if defense["dataset"] == "defensegen" else {}
            defense["dataset"] = "defensegen"
            defense["dataset_args"] = {**args, "generator": "offtheshelf" if arm.defense_level == 2 else "global"}
    try:
        return from_yaml_text(yaml.safe_dump(d, sort_keys=False))
    except ConfigError as err:
        raise ConfigError(f"arms[{arm.name}]: {err}") from None


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def federation_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines the federated run and its per-round evaluations."""
    d = to_dict(cfg)
    return _digest([{k: d[k] for k in FEDERATION_FIELDS}, {k: d["generation"][k] for k in GENERATION_FIELDS}])


def arm_key(cfg: ExperimentConfig) -> str:
    """Hash of the federated run plus the post-hoc defense (if any)."""
    return _digest([federation_key(cfg), to_dict(cfg)["defense"] if cfg.defense.name != "none" else None])


@dataclass
class Arm:
    spec: ArmConfig
    cfg: ExperimentConfig
    federation: str  # federation_key
    key: str  # arm_key

    @property
    def level(self) -> int:
        return self.spec.defense_level


def expand_arms(cfg: ExperimentConfig) -> list[Arm]:
    arms = []
    for spec in cfg.arms:
        arm_cfg = arm_config(cfg, spec)
        arms.append(Arm(spec, arm_cfg, federation_key(arm_cfg), arm_key(arm_cfg)))
    return arms


def describe_arms(cfg: ExperimentConfig) -> str:
    """The arms, which federated run each shares, and whether it is already finished (for --dry-run)."""
    arms = expand_arms(cfg)
    runs = list(dict.fromkeys(a.federation for a in arms))
    lines = [f"matrix: {len(arms)} arms over {len(runs)} federated runs"]
    for arm in arms:
        done = "finished" if _result_path(cfg, arm).is_file() else "to run"
        lines.append(f"  {arm.spec.name}: rule {arm.cfg.aggregation.rule}, attack {arm.spec.attack}, defense level "
                     f"{arm.level}, federated run {runs.index(arm.federation) + 1} ({done})")
    return "\n".join(lines)


def cache_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.root) / "cache"


def _result_path(cfg: ExperimentConfig, arm: Arm) -> Path:
    return cache_root(cfg) / "arms" / arm.key / "result.json"


def run_matrix(cfg: ExperimentConfig, run_dir: Path, plan: Plan | None = None) -> dict:
    """Run every arm not already finished; write the matrix report into ``run_dir``; return the results."""
    from fedsafe.report import write_matrix_report

    started = time.perf_counter()
    arms = expand_arms(cfg)
    todo = [a for a in arms if not _result_path(cfg, a).is_file()]
    tqdm.write(f"{len(arms)} arms, {len(arms) - len(todo)} already finished (cache: {cache_root(cfg)})")
    cache = None
    if todo:
        session = Session(cfg, plan)
        try:
            _run_arms(session, cfg, todo)
        finally:
            session.close()
        cache = cache_counts(session.generation)
    results = {
        "name": cfg.output.name, "model": cfg.model.name, "rounds": cfg.federation.num_rounds,
        "num_clients": cfg.num_clients, "num_malicious": sum(g.count for g in cfg.clients if g.role == "malicious"),
        "clients_per_round": cfg.federation.clients_per_round, "generation_backend": cfg.generation.backend,
        "judge_model": judge_model_name(cfg), "generation_cache": cache,
        "arms": {a.spec.name: json.loads(_result_path(cfg, a).read_text()) for a in arms},
        "computed": [a.spec.name for a in todo], "wall_s": time.perf_counter() - started,
    }
    (Path(run_dir) / "results.json").write_text(json.dumps(results, indent=2))
    results["table"] = write_matrix_report(run_dir, results, cache_root(cfg))
    return results


def _run_arms(session: Session, cfg: ExperimentConfig, todo: list[Arm]) -> None:
    """One federated run per distinct federation key, then each of its arms' defense and evaluation."""
    by_federation: dict[str, list[Arm]] = {}
    for arm in todo:
        by_federation.setdefault(arm.federation, []).append(arm)
    made: dict[str, tuple[list[dict], dict]] = {}  # Level 1-2 defense data by the defense's hash
    for key, group in by_federation.items():
        fed_cfg = group[0].cfg
        fed_dir = cache_root(cfg) / "federations" / key
        fed_dir.mkdir(parents=True, exist_ok=True)
        (fed_dir / "config.yaml").write_text(to_yaml(fed_cfg))
        tqdm.write(f"federated run {key} (resumed from its checkpoints if any), for: {', '.join(a.spec.name for a in group)}")
        data = load_data(_without_defense(fed_cfg), session.synth)
        coordinator = federate(session, fed_cfg, data, fed_dir)
        final_ref = coordinator.global_ref()
        for arm in group:
            arm_started = time.perf_counter()
            out_dir = _result_path(cfg, arm).parent
            ref, synthesis, num_defense = final_ref, {}, 0
            if arm.level:
                records, synthesis = _defense_records(session, arm, data, final_ref, made)
                ref, num_defense = defend(session, arm.cfg, records, coordinator, final_ref), len(records)
            evaluation = session.evaluate(arm.cfg, data.eval, ref, out_dir, "final")
            result = {
                "arm": dataclasses.asdict(arm.spec), "federation": key, "rule": arm.cfg.aggregation.rule,
                "attack": arm.spec.attack, "defense_level": arm.level, "evaluation": evaluation,
                "data": {"synthesis": {**data.synthesis, **({"defense": synthesis} if synthesis else {})},
                         "eval_harmful": len(data.eval.harmful), "eval_benign": len(data.eval.benign),
                         "defense_examples": num_defense},
                "seconds": time.perf_counter() - arm_started,
            }
            _result_path(cfg, arm).write_text(json.dumps(result, indent=2))
        coordinator.shutdown()


def _without_defense(cfg: ExperimentConfig) -> ExperimentConfig:
    return from_yaml_text(to_yaml(cfg), ["defense.name=none"])


def _defense_records(session: Session, arm: Arm, data: FederatedData, final_ref, made: dict):
    """Level 1-2 data once per defense config (shared by every federation); Level 3 per federation."""
    if arm.level == 3:
        return defense_data(session, arm.cfg, data, final_ref)
    key = _digest(to_dict(arm.cfg)["defense"])
    if key not in made:
        made[key] = server_defense_data(arm.cfg, session.synth, data.eval.prompts)
        check_held_out(data, made[key][0])
    return made[key]
