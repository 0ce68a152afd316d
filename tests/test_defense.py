"""Defenses (``fedsafe.defense``): the registry, the level type, the post-hoc task, and PosthocSFT's stages
for each level with a fake generation pool and a fake server context (no model, no Ray)."""

from __future__ import annotations

import dataclasses

import pytest

from fedsafe.config import ConfigError
from fedsafe.data.synthesis import ALIGNED_SUFFIX, Synthesizer
from fedsafe.defense import DefenseLevel, ServerContext, available_defenses, build_defense, register_defense
from fedsafe.defense.config import DefenseConfig
from fedsafe.defense.posthoc import posthoc_round_tasks, posthoc_task
from fedsafe.training.sft import cosine_lr
from fedsafe.updates import SERVER_ID
from tests.conftest import FakePool


def test_registry_and_levels():
    assert available_defenses() == ["hardening", "none", "posthoc_sft", "projection", "screening"]
    with pytest.raises(ConfigError, match="defense.name must be one of"):
        build_defense(DefenseConfig(name="unlearning"))
    with pytest.raises(ValueError, match="already registered"):
        register_defense("none", lambda cfg: None)
    with pytest.raises(ConfigError, match="defense.level must be 1"):
        DefenseConfig(name="posthoc_sft", level=0)
    assert [level.needs_trained_model for level in DefenseLevel] == [False, False, True]
    assert DefenseLevel(2) is DefenseLevel.OFF_THE_SHELF


def test_posthoc_task_draws_records_epoch_by_epoch_with_a_cosine_lr():
    cfg = DefenseConfig(name="posthoc_sft", steps=5, batch_size=4, lr=1e-3, min_lr=1e-5, schedule="session")
    records = [{"instruction": f"i{k}", "response": "r"} for k in range(6)]
    task = posthoc_task(cfg, records, max_length=64, seed=1)
    assert task.client_id == SERVER_ID and task.role == "server" and len(task.records) == 20
    assert sorted(r["instruction"] for r in task.records[:6]) == sorted(r["instruction"] for r in records)
    assert task.lrs == [cosine_lr(s, 5, 1e-3, 1e-5) for s in range(5)] and task.lrs[0] > task.lrs[-1]


def test_posthoc_rounds_are_the_authors_fl_script_with_one_client():
    cfg = DefenseConfig(name="posthoc_sft", steps=12, rounds=4, batch_size=2, lr=1e-3, min_lr=1e-5)
    records = [{"instruction": f"i{k}", "response": "r"} for k in range(10)]
    tasks = posthoc_round_tasks(cfg, records, max_length=64, seed=1)
    assert [t.round_idx for t in tasks] == [0, 1, 2, 3]
    assert all(len(t.records) == 6 and len({r["instruction"] for r in t.records}) == 6 for t in tasks)  # 2 x 3
    assert len({tuple(r["instruction"] for r in t.records) for t in tasks}) == 4  # a fresh subset each round
    assert [t.lrs for t in tasks] == [[cosine_lr(r, 4, 1e-3, 1e-5)] * 3 for r in range(4)]  # constant in a round
    with pytest.raises(ConfigError, match="multiple of defense.rounds"):
        DefenseConfig(name="posthoc_sft", steps=10, rounds=4)


class Server:
    """A fake server context: ``train`` returns a new 'adapter' naming the task it trained on."""

    def __init__(self, pool: FakePool) -> None:
        self.trained, self.checked, self.registered = [], [], []
        self.ctx = ServerContext(seed=0, max_length=64, held_out=["Tell me about walking a dog."],
                                 synthesizer=Synthesizer(pool, "judge"), train=self.train,
                                 register_adapter=self.register, check_data=self.checked.append)

    def train(self, global_ref, task):
        self.trained.append(task)
        return f"{global_ref}+defended"

    def register(self, global_ref) -> str:
        self.registered.append(global_ref)
        return "key-of-" + global_ref


def defense_cfg(level: int, **kw) -> DefenseConfig:
    return DefenseConfig(name="posthoc_sft", level=level, num_examples=8, steps=3, batch_size=2, schedule="session",
                         synthesis={"seeds": "toy_malicious", "normal": "toy_benign_eval", "filter": "rule"}, **kw)


def test_level_1_trains_on_the_public_set_from_before_the_rounds():
    server, defense = Server(FakePool()), build_defense(defense_cfg(1, dataset="toy_defense"))
    defense.before_training(server.ctx)
    assert len(server.checked) == 1 and len(server.checked[0]) == 8  # held-out check on the data made
    defense.on_round(server.ctx, 0, {"round": 0})
    assert defense.after_training(server.ctx, "global") == "global+defended"
    (task,) = server.trained
    assert len(task.lrs) == 3 and len(task.records) == 6 and server.registered == []
    assert defense.summary() == {"level": 1, "examples": 8, "synthesis": {}}
    rounds = build_defense(dataclasses.replace(defense_cfg(1, dataset="toy_defense"), schedule="rounds", rounds=3))
    rounds.before_training(server.ctx)
    assert rounds.after_training(server.ctx, "global") == "global+defended+defended+defended"  # one round each


def test_level_2_data_is_written_by_the_off_the_shelf_model_before_the_rounds():
    pool = FakePool()
    server, defense = Server(pool), build_defense(defense_cfg(2))
    defense.before_training(server.ctx)
    aligned = [c for c in pool.calls if c[3].endswith(ALIGNED_SUFFIX)]
    assert aligned and all(c[:3] == ("off-the-shelf", "auto", "") for c in pool.calls)
    records = server.checked[0]
    assert len(records) == 8 and [r["response"].startswith("I'm sorry") for r in records] == [True, False] * 4
    assert "Tell me about walking a dog." not in [r["instruction"] for r in records]
    defense.after_training(server.ctx, "global")
    assert defense.summary()["synthesis"]["kept"] == {"aligned": 4, "normal": 4}


def test_level_3_data_is_written_by_the_aggregated_model_after_the_rounds():
    pool = FakePool()
    server, defense = Server(pool), build_defense(defense_cfg(3))
    defense.before_training(server.ctx)
    assert pool.calls == [] and server.checked == []  # nothing to write before there is a model
    assert defense.after_training(server.ctx, "global") == "global+defended"
    assert server.registered == ["global"]
    answers = [c for c in pool.calls if c[3].endswith(ALIGNED_SUFFIX) or c[0] == "base"]
    assert answers and all(c[:3] == ("base", "alpaca", "key-of-global") for c in answers)
    assert len(server.checked[0]) == 8 and defense.summary()["level"] == 3


def test_no_defense_leaves_the_adapter_as_it_is():
    server, defense = Server(FakePool()), build_defense(DefenseConfig())
    defense.before_training(server.ctx)
    assert defense.after_training(server.ctx, "global") == "global" and defense.summary() == {}
    assert server.trained == [] and server.checked == []


# A defense written as a user adds one: this module and one register line, nothing else in fedsafe.
NEW_DEFENSE = '''
"""``audit``: each round, record the share of sampled clients that uploaded (a defense with settings, data
and a seed stream of its own)."""

from dataclasses import dataclass

from fedsafe.defense import DefenseBase, defense_params
from fedsafe.specs import DataRef


@dataclass
class AuditParams:
    every: int = 1
    probes: int = 4

    def __post_init__(self):
        if self.every < 1:
            raise TypeError(f"every must be >= 1, got {self.every}")


class Audit(DefenseBase):
    salt = 179424673

    @classmethod
    def data(cls, cfg):
        p = defense_params(cfg, "audit", AuditParams)
        return [DataRef("defense.params.audit", "toy_harmful_eval", {}, p.probes, "defense.params.audit.probes")]

    def __init__(self, cfg):
        self.params = defense_params(cfg, "audit", AuditParams)
        self.rounds = 0

    def on_round(self, ctx, round_idx, record):
        if round_idx % self.params.every == 0:
            self.rounds += 1
            record["audit"] = len(record.get("weights", []))

    def summary(self):
        return {"audit": {"rounds": self.rounds}}
'''


def test_a_new_defense_is_one_module_and_one_register_line(tmp_path, monkeypatch):
    """The preflight, the data check, the seed salts, the arms and the cost record pick up what the new
    defense declares; its settings come from ``defense.params.<name>``, checked by its own dataclass."""
    import importlib.util

    from fedsafe.config import load_config
    from fedsafe.defense import registry
    from fedsafe.experiment import defense_cost
    from fedsafe.preflight import check_components, data_fields

    (tmp_path / "audit_defense.py").write_text(NEW_DEFENSE)
    spec = importlib.util.spec_from_file_location("audit_defense", tmp_path / "audit_defense.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(registry, "_DEFENSES", dict(registry._DEFENSES))
    register_defense("audit", module.Audit)  # the one register line

    cfg = load_config(None, ["defense.name=audit+posthoc_sft", "defense.params={audit: {every: 2, probes: 5}}"])
    check_components(cfg)
    audit = [r for r in data_fields(cfg) if r.field == "defense.params.audit"]
    assert [(r.source, r.count, r.asked_by) for r in audit] == [("toy_harmful_eval", 5, "defense.params.audit.probes")]
    assert any(r.field == "defense.dataset" for r in data_fields(cfg))  # the post-hoc one still declared

    defense = build_defense(cfg.defense)
    for r in range(4):
        defense.on_round(None, r, record := {"weights": [1.0, 0.0, 1.0]})
    assert defense.summary()["audit"] == {"rounds": 2} and record == {"weights": [1.0, 0.0, 1.0]}
    assert defense_cost([], {}, defense.summary())["audit"] == {"rounds": 2}

    arms = load_config(None, ["defense.params={audit: {probes: 3}}", "arms=[{name: a, defenses: audit}]"])
    assert [r.count for r in data_fields(arms) if r.field == "defense.params.audit"] == [3]
    with pytest.raises(ConfigError, match="defense.params.audit: every must be >= 1"):
        build_defense(load_config(None, ["defense.name=audit", "defense.params={audit: {every: 0}}"]).defense)
    with pytest.raises(ConfigError, match="defense.params.audit: .*unexpected keyword argument 'evry'"):
        check_components(load_config(None, ["defense.name=audit", "defense.params={audit: {evry: 2}}"]))
    with pytest.raises(ConfigError, match="defense.params.audti: not a defense"):
        check_components(load_config(None, ["defense.name=audit", "defense.params={audti: {every: 2}}"]))
    assert len(all_salts()) == len(set(all_salts()))


def all_salts() -> list[int]:
    from fedsafe.defense import defense_type
    from fedsafe.seeding import Salt

    return [int(s) for s in Salt] + [defense_type(n).salt for n in available_defenses() if defense_type(n).salt]


def test_every_seed_salt_differs_from_every_other():
    from fedsafe.seeding import Salt

    salts = all_salts()
    assert len(salts) == len(set(salts)) == len(Salt) + 3  # screening, projection and hardening declare theirs
