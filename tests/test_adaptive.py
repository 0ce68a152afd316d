"""Adaptive attackers (``fedsafe.attack``: defense_aware, constrained, sleeper, intermittent, sybil,
thin_poison), non-iid shards, and the detection counts, on made-up updates and data (no Ray); the tiny
model where training is the point."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from fedsafe.actors.coordinator import Coordinator, CoordinatorSettings
from fedsafe.actors.trainer import Trainer
from fedsafe.attack import RoundView, available_attacks, build_attack
from fedsafe.attack.shaping import alie_z
from fedsafe.config import ConfigError, LoRAConfig, ModelConfig, load_config
from fedsafe.data.federation import dirichlet_shards, spread_poison
from fedsafe.experiment import client_task, load_data, poisons_benign, round_clients, times_sampled
from fedsafe.metrics.detection import detection_counts, exposure, pooled, rates
from fedsafe.training.lora import AdapterSpec
from fedsafe.updates import ClientUpdate
from tests.conftest import SMOKE


def view(deltas: dict[int, torch.Tensor], estimates: torch.Tensor, num_sampled: int = 5, previous=None) -> RoundView:
    return RoundView(deltas=deltas, estimates=estimates, previous_step=previous, num_sampled=num_sampled)


def made_up(seed: int = 0, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A harmful update pointing away from four benign estimates that share a direction."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    benign = direction + 0.5 * torch.randn(4, d, generator=g)
    harmful = -3.0 * direction + torch.randn(d, generator=g)
    return harmful, benign


def test_every_new_attack_is_registered():
    assert {"defense_aware", "constrained", "sleeper", "intermittent", "sybil", "thin_poison"} <= set(available_attacks())


def test_norm_and_cosine_shaping_meet_both_constraints_and_keep_the_harmful_side():
    harmful, benign = made_up()
    attack = build_attack("defense_aware", constraints=["cosine", "norm"], min_cosine=0.6)
    shaped = attack.collude(view({7: harmful}, benign))[7]
    mean = benign.mean(dim=0)
    assert math.isclose(float(shaped.norm()), float(benign.norm(dim=1).median()), rel_tol=1e-5)
    assert math.isclose(float(torch.cosine_similarity(shaped, mean, dim=0)), 0.6, abs_tol=1e-5)
    # the smallest turn: of the updates with that cosine, it stays nearest the harmful direction
    assert float(torch.cosine_similarity(shaped, harmful, dim=0)) > float(torch.cosine_similarity(mean, harmful, dim=0))


def test_cosine_bound_defaults_to_the_least_similar_benign_estimate():
    harmful, benign = made_up(1)
    shaped = build_attack("defense_aware", constraints=["cosine"]).collude(view({0: harmful}, benign))[0]
    mean = benign.mean(dim=0)
    least = float(torch.cosine_similarity(benign, mean[None], dim=1).min())
    assert math.isclose(float(torch.cosine_similarity(shaped, mean, dim=0)), least, abs_tol=1e-5)
    assert math.isclose(float(shaped.norm()), float(harmful.norm()), rel_tol=1e-5)  # cosine keeps the norm


def test_alie_places_each_coordinate_by_hand():
    benign = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 4.0]])  # mean [1, 1, 3], unbiased std [1.414, 0, 1.414]
    harmful = torch.tensor([10.0, -5.0, 3.5])
    n, f = 5, 2
    z = alie_z(n, f)  # s = floor(5 / 2 + 1) - 2 = 1; z = Phi^-1(4 / 5)
    assert math.isclose(z, 0.8416212, rel_tol=1e-6)
    shaped = build_attack("defense_aware", constraints=["alie"]).collude(view({1: harmful, 2: harmful}, benign, n))
    s = math.sqrt(2.0)
    assert torch.allclose(shaped[1], torch.tensor([1 + z * s, 1.0, 3.5]))  # clamped up, pinned, inside the band
    assert torch.equal(shaped[1], shaped[2])
    alone = build_attack("defense_aware", constraints=["alie"]).collude(view({1: harmful, 2: harmful}, benign, 2))
    assert torch.equal(alone[1], harmful)  # every sampled client attacks: no benign majority to stay inside


def test_previous_step_reference_and_bad_parameters():
    harmful, _ = made_up(2)
    previous = torch.ones(64)
    attack = build_attack("defense_aware", constraints=["norm", "cosine"], reference="previous_step")
    assert not attack.cover and attack.benign_estimates == 0 and attack.uses_previous_step
    shaped = attack.collude(view({3: harmful}, torch.zeros(0, 64), previous=previous))[3]
    assert math.isclose(float(shaped.norm()), 8.0, rel_tol=1e-5)  # ||ones(64)|| = 8
    assert float(torch.cosine_similarity(shaped, previous, dim=0)) >= -1e-6  # min_cosine 0 with one estimate
    assert torch.equal(attack.collude(view({3: harmful}, torch.zeros(0, 64)))[3], harmful)  # round 0: no step yet
    for params, message in [({"constraints": []}, "must name some of"), ({"constraints": ["alie", "norm"]}, "alone"),
                            ({"constraints": ["alie"], "reference": "previous_step"}, "two or more"),
                            ({"constraints": ["norm"], "reference": "server"}, "reference must be one of")]:
        with pytest.raises(ConfigError, match=message):
            build_attack("defense_aware", **params)


def test_sybils_upload_one_shared_update_and_schedules_strike_when_they_say():
    a, b = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 5.0])
    shared = build_attack("sybil").collude(view({4: a, 9: b}, torch.zeros(0, 2)))
    assert torch.equal(shared[4], torch.tensor([2.0, 4.0])) and torch.equal(shared[9], shared[4])
    sleeper, every = build_attack("sleeper", start_round=3), build_attack("intermittent", every=3)
    assert [sleeper.strikes(r, 0) for r in range(5)] == [False, False, False, True, True]
    assert [every.strikes(9, k) for k in range(7)] == [True, False, False, True, False, False, True]
    with pytest.raises(ConfigError, match="every must be >= 1"):
        build_attack("intermittent", every=0)


def test_a_dormant_sleeper_trains_on_its_cover_data_as_a_benign_client():
    cfg = load_config(SMOKE, ["attack.name=sleeper", "attack.params={start_round: 2}", "federation.examples_per_client=16"])
    data = load_data(cfg)
    malicious = next(c for c in data.clients if c.role == "malicious")
    cover = {r["instruction"] for r in data.cover[malicious.client_id]}
    assert len(data.cover) == 3 and not cover & {r["instruction"] for r in data.shards[malicious.client_id]}
    early = client_task(cfg, malicious, data.shards[malicious.client_id], 1, data.cover[malicious.client_id], data.attack)
    late = client_task(cfg, malicious, data.shards[malicious.client_id], 2, data.cover[malicious.client_id], data.attack)
    assert early.role == "benign" and {r["instruction"] for r in early.records} <= cover and early.cover == []
    assert late.role == "malicious" and late.records[0]["source"] == "toy_malicious"


@pytest.mark.parametrize("sampling", ["seeded", "balanced"])
def test_intermittent_counts_the_times_a_client_was_sampled(sampling):
    cfg = load_config(SMOKE, ["seed=5", f"federation.sampling={sampling}"])
    rounds = [round_clients(cfg, cfg.num_clients, r) for r in range(12)]
    client = Counter(c for r in rounds for c in r).most_common(1)[0][0]
    seen = [r for r in range(12) if client in rounds[r]]
    assert len(seen) > 2 and [times_sampled(cfg, r, client) for r in seen] == list(range(len(seen)))


def test_defense_aware_clients_train_estimates_on_distinct_cover_subsets():
    cfg = load_config(SMOKE, ["attack.name=defense_aware", "attack.params={constraints: [alie], estimates: 2}",
                              "federation.examples_per_client=200"])
    data = load_data(cfg)
    malicious = next(c for c in data.clients if c.role == "malicious")
    task = client_task(cfg, malicious, data.shards[malicious.client_id], 0, data.cover[malicious.client_id], data.attack)
    assert task.role == "malicious" and len(task.cover) == 2 and len(task.cover[0]) == len(task.records)
    assert task.cover[0] != task.cover[1]


def test_spread_poison_puts_the_fraction_into_every_shard():
    shards = [[{"i": (k, j)} for j in range(20)] for k in range(5)]
    harmful = [{"harm": j} for j in range(100)]
    poisoned = spread_poison(shards, harmful, 0.3, seed=0)
    assert [sum("harm" in r for r in s) for s in poisoned] == [6] * 5
    assert len({r["harm"] for s in poisoned for r in s if "harm" in r}) == 30  # each harmful record once
    assert all(len(s) == 20 for s in poisoned) and all("harm" not in r for s in shards for r in s)
    with pytest.raises(ValueError, match="needs as many harmful records"):
        spread_poison(shards, harmful[:10], 0.3, seed=0)


def test_thin_poison_loads_no_malicious_client_and_poisons_each_benign_one():
    cfg = load_config(SMOKE, ["attack.name=thin_poison", "attack.params={fraction: 0.25, dataset: toy_malicious}",
                              "clients.0.count=10", "clients.1.count=0", "federation.examples_per_client=16"])
    assert cfg.num_malicious == 0 and poisons_benign(cfg)
    data = load_data(cfg)
    assert [sum(r["source"] == "toy_malicious" for r in data.shards[c.client_id]) for c in data.clients] == [4] * 10
    per_group = load_config(SMOKE, ["attack.name=thin_poison", "attack.params={fraction: {other: 0.5}, dataset: toy_malicious}"])
    assert not poisons_benign(per_group)
    with pytest.raises(ConfigError, match="exactly one of data"):
        build_attack("thin_poison", fraction=0.1)


def test_dirichlet_shards_follow_alpha():
    categories = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    mixed = dirichlet_shards(categories, 10, 50, alpha=1e5, seed=0)
    totals = Counter(categories[i] for s in mixed for i in s)
    assert all(len(s) == 50 for s in mixed) and len({i for s in mixed for i in s}) == 500  # disjoint
    for shard in mixed:  # each client's mix near the global one (0.6, 0.3, 0.1)
        counts = Counter(categories[i] for i in shard)
        assert abs(counts["a"] / 50 - 0.6) < 0.2 and abs(counts["c"] / 50 - 0.1) < 0.15
    assert totals["a"] > totals["c"]
    skewed = dirichlet_shards(categories, 10, 50, alpha=0.05, seed=0)
    top_shares = [Counter(categories[i] for i in s).most_common(1)[0][1] / 50 for s in skewed]
    assert sum(share >= 0.9 for share in top_shares) >= 6  # most clients hold one category
    with pytest.raises(ValueError, match="needs 1100 records"):
        dirichlet_shards(categories, 11, 100, alpha=1.0, seed=0)


def test_the_loop_splits_by_source_with_dirichlet_alpha():
    cfg = load_config(SMOKE, ["federation.dirichlet_alpha=0.05", "federation.examples_per_client=20",
                              "clients.0.dataset_args={aligned_fraction: 0.0, aligned_share: 0.5}"])
    data = load_data(cfg)
    shares = [sum(r["source"] == "aligned" for r in data.shards[c.client_id]) / 20 for c in data.clients
              if c.role == "benign"]
    assert any(s >= 0.8 for s in shares) and any(s <= 0.2 for s in shares)  # iid shards would sit near 0.5
    with pytest.raises(ConfigError, match="partition_key='topic'"):
        load_data(load_config(SMOKE, ["federation.dirichlet_alpha=1.0", "federation.partition_key=topic"]))


def test_detection_counts_by_hand():
    rounds = [
        {"clients": [1, 2, 8], "weights": [0.5, 0.5, 0.0], "attacking": [8]},  # Krum-like: attacker dropped
        {"clients": [3, 8, 9], "weights": [0.0, 0.6, 0.4], "attacking": [8, 9]},  # a benign one dropped
        {"clients": [1, 4, 5], "weights": [0.3, 0.3, 0.4], "attacking": []},
        {"round": 3, "skipped": "too few updates", "clients": [], "weights": []},
    ]
    counts = detection_counts(rounds)
    assert counts == {"malicious": 3, "malicious_flagged": 1, "benign": 6, "benign_flagged": 1, "shares": [0.0, 1.0]}
    r = rates(pooled([counts, counts]))
    assert math.isclose(r["tpr"]["percent"], 100 / 3) and r["tpr"]["n"] == 6 and r["fpr"]["n"] == 12
    assert r["tpr"]["ci95"][0] < 100 / 3 < r["tpr"]["ci95"][1] and r["malicious_share"] == 50.0
    assert exposure([3, 8, 9], [0.0, 0.6, 0.4], [8, 9]) == {"kept_malicious": [8, 9], "malicious_share": 1.0}


def test_the_coordinator_lets_colluders_shape_and_drops_their_estimates(tmp_path):
    spec = AdapterSpec(names=("w",), shapes=((4,),))
    settings = CoordinatorSettings(run_dir=str(tmp_path), attack="sybil")
    coordinator = Coordinator(torch.zeros(4), spec, {}, settings)
    rows = {0: torch.tensor([1.0, 0, 0, 0]), 1: torch.tensor([0, 2.0, 0, 0]), 2: torch.tensor([0, 0, 4.0, 0])}
    for cid, delta in rows.items():
        coordinator.stage(0, cid, ClientUpdate(cid, 4, delta, (torch.ones(4),) if cid else ()))
    staged = coordinator.collude(dict(coordinator.staged), {1, 2})
    assert torch.equal(staged[1].delta, torch.tensor([0, 1.0, 2.0, 0])) and torch.equal(staged[2].delta, staged[1].delta)
    assert torch.equal(staged[0].delta, rows[0]) and all(u.estimates == () for u in staged.values())
    summary = coordinator.aggregate(0, [1, 2])
    assert torch.allclose(coordinator.global_vector(), torch.tensor([1 / 3, 2 / 3, 4 / 3, 0]))
    assert summary["weights"] == [pytest.approx(1 / 3)] * 3


@pytest.fixture(scope="module")
def tiny_trainer(model_cache):
    trainer = Trainer(ModelConfig(cache_dir=model_cache), LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                      seed=0)
    trainer.start()
    return trainer


def test_constrained_training_pulls_the_update_toward_the_benign_estimate(tiny_trainer):
    cfg = load_config(SMOKE, ["attack.name=constrained", "federation.examples_per_client=16", "train.local_steps=4",
                              "train.batch_size=4"])
    data = load_data(cfg)
    malicious = next(c for c in data.clients if c.role == "malicious")
    task = client_task(cfg, malicious, data.shards[malicious.client_id], 0, data.cover[malicious.client_id], data.attack)
    start = tiny_trainer.initial_adapter().vector
    distances = {}
    for weight in (0.0, 1000.0):
        task_w = task.__class__(**{**vars(task), "attack_params": {"weight": weight}})
        update, metrics = tiny_trainer.train(start, task_w)
        (estimate,) = update.estimates
        distances[weight] = float((update.delta - estimate).norm())
        assert metrics.role == "malicious" and update.num_examples == len(task.records)
    assert distances[1000.0] < 0.5 * distances[0.0]


@pytest.mark.integration
def test_every_adaptive_attack_end_to_end_on_the_tiny_model(ray_cluster, smoke_cfg):
    """Each new attack in a federated run of the tiny model: the rounds record who attacked and what the
    rule kept, the results carry the detection counts and the report their table."""
    from fedsafe.matrix import run_experiment
    from fedsafe.run_dir import create_run_dir, read_rounds

    arms = ('[{name: base, attack: false},'
            ' {name: defense-aware, attack_name: defense_aware, attack_params: {constraints: [cosine, norm]}, rule: krum_paper},'
            ' {name: alie, attack_name: defense_aware, attack_params: {constraints: [alie]}, rule: median},'
            ' {name: constrained, attack_name: constrained, attack_params: {weight: 1.0}, rule: fedavg},'
            ' {name: sleeper, attack_name: sleeper, attack_params: {start_round: 1}, rule: foolsgold},'
            ' {name: intermittent, attack_name: intermittent, attack_params: {every: 2}, rule: dnc},'
            ' {name: sybil, attack_name: sybil, rule: foolsgold},'
            ' {name: thin, attack_name: thin_poison, attack_params: {fraction: 0.25, dataset: toy_malicious},'
            '  overrides: ["clients.0.count=10", "clients.1.count=0"]}]')
    cfg = smoke_cfg(f"arms={arms}", "federation.num_rounds=2", "federation.clients_per_round=6",
                    "aggregation.num_malicious=1", "train.local_steps=2", "evaluation.num_prompts=8",
                    "evaluation.benign_prompts=''", "federation.examples_per_client=16")
    run_dir = create_run_dir(cfg)
    results = run_experiment(cfg, run_dir)
    arms_out = results["arms"]
    for name in ("defense-aware", "alie", "constrained", "sybil"):
        rounds = read_rounds(arms_out[name]["federation_dir"])
        attacked = [r for r in rounds if r["attacking"]]
        assert attacked and all(set(r["attacking"]) <= set(r["sampled"]) for r in rounds)
        assert all("malicious_share" in r and set(r["kept_malicious"]) <= set(r["attacking"]) for r in attacked)
        detection = arms_out[name]["runs"][0]["detection"]
        assert detection["malicious"] == sum(len(r["attacking"]) for r in rounds)
    sybil = [r for r in read_rounds(arms_out["sybil"]["federation_dir"]) if len(r["attacking"]) > 1]
    for r in sybil:  # the colluders' shared update: equal norms
        norms = {round(n, 5) for c, n in zip(r["clients"], r["update_norms"]) if c in r["attacking"]}
        assert len(norms) == 1
    sleeper = read_rounds(arms_out["sleeper"]["federation_dir"])
    assert sleeper[0]["attacking"] == [] and {c["role"] for c in sleeper[0]["client_metrics"]} == {"benign"}
    thin = arms_out["thin"]
    assert thin["num_malicious"] == 0 and thin["attacked"] and thin["paired"]["rule"]["reference"] == "base"
    assert arms_out["constrained"]["paired"]["rule"]["reference"] == "base"
    assert "paired" not in arms_out["alie"]  # a rule's arm is compared with FedAvg under the same attack: none here
    assert "What the rules did with the attackers' updates" in (run_dir / "report.md").read_text()
