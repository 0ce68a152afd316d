"""The coordinator actor as a plain class (no Ray): it rejects broken or hostile updates before
aggregation, records why, and goes on; stages updates per round; runs every registered rule on made-up
updates of a federated round and checkpoints each round."""

import pytest
import torch

from fedsafe.actors.coordinator import Coordinator, CoordinatorSettings
from fedsafe.aggregation import available_rules, get_rule
from fedsafe.checkpoint import latest_checkpoint, load_checkpoint
from fedsafe.training.lora import AdapterSpec
from fedsafe.updates import ClientUpdate, update_problem

SPEC = AdapterSpec(names=("m.lora_A.weight", "m.lora_B.weight"), shapes=((2, 3), (3, 2)))  # d = 12


def good(client_id: int, value: float = 1.0) -> ClientUpdate:
    return ClientUpdate(client_id, 10, torch.full((12,), value))


@pytest.mark.parametrize("update, reason", [
    (ClientUpdate(1, 10, torch.tensor([float("nan")] + [0.0] * 11)), "NaN or Inf"),
    (ClientUpdate(1, 10, torch.tensor([float("inf")] * 12)), "NaN or Inf"),
    (ClientUpdate(1, 10, torch.zeros(11)), "shape [11]"),
    (ClientUpdate(1, 10, torch.zeros(3, 4)), "shape [3, 4]"),
    (ClientUpdate(1, 10, torch.zeros(12, dtype=torch.long)), "dtype"),
    (ClientUpdate(1, 0, torch.zeros(12)), "num_examples"),
    (ClientUpdate(1, 10, torch.full((12,), 100.0)), "max_update_norm"),
    ({"client_id": 1, "delta": [0.0] * 12}, "not a ClientUpdate"),
])
def test_each_problem_is_named(update, reason):
    assert reason in update_problem(update, 12, max_norm=50.0)
    assert update_problem(good(1), 12, max_norm=50.0) is None


def make_coordinator(tmp_path, **kw) -> Coordinator:
    return Coordinator(torch.zeros(12), SPEC, {"r": 2}, CoordinatorSettings(run_dir=str(tmp_path), **kw))


def test_rejected_updates_are_recorded_and_the_round_goes_on(tmp_path):
    coordinator = make_coordinator(tmp_path, max_update_norm=50.0)
    hostile = [ClientUpdate(7, 10, torch.full((12,), float("nan"))), ClientUpdate(8, 10, torch.zeros(5)),
               ClientUpdate(9, 10, torch.full((12,), 1e6))]
    summary = coordinator.aggregate_updates(0, None, [good(1, 1.0), *hostile, good(2, 3.0)])
    assert summary["clients"] == [1, 2]
    assert [r["client_id"] for r in summary["rejected"]] == [7, 8, 9]
    assert torch.allclose(coordinator.global_vector(), torch.full((12,), 2.0))  # mean of the accepted two
    assert (tmp_path / "checkpoints").exists() or any(tmp_path.iterdir())


def test_too_few_accepted_updates_leave_the_global_adapter_unchanged(tmp_path):
    coordinator = make_coordinator(tmp_path, min_updates=2)
    summary = coordinator.aggregate_updates(0, None, [good(1), ClientUpdate(2, 10, torch.full((12,), float("inf")))])
    assert "min_updates=2" in summary["skipped"] and summary["rejected"][0]["client_id"] == 2
    assert torch.equal(coordinator.global_vector(), torch.zeros(12))
    krum = make_coordinator(tmp_path / "krum", rule="krum")  # n >= 2f + 3 fails once updates are rejected
    summary = krum.aggregate_updates(0, None, [good(1), ClientUpdate(2, 10, torch.zeros(3))])
    assert "krum needs n >= 2f + 3" in summary["skipped"] and torch.equal(krum.global_vector(), torch.zeros(12))


def test_updates_are_staged_per_round_and_aggregated_in_client_order(tmp_path):
    coordinator = make_coordinator(tmp_path)
    coordinator.stage(0, 5, good(5, 3.0))
    coordinator.stage(0, 1, good(1, 1.0))
    assert coordinator.aggregate(0)["clients"] == [1, 5]
    assert torch.allclose(coordinator.global_vector(), torch.full((12,), 2.0))
    coordinator.stage(1, 2, good(2, 100.0))  # staged for a round that never aggregated: dropped
    coordinator.stage(2, 3, good(3, 1.0))
    assert coordinator.aggregate(2)["clients"] == [3]
    assert "0 update(s) accepted" in coordinator.aggregate(3)["skipped"]  # nothing staged: the round is skipped


def test_a_skipped_round_leaves_the_client_histories_as_they_were(tmp_path):
    coordinator = make_coordinator(tmp_path, rule="krum", track_clients=True)  # f = 0: Krum needs 3 updates
    summary = coordinator.aggregate_updates(0, None, [good(1), good(2)])
    assert "skipped" in summary and coordinator.history == {}
    coordinator.aggregate_updates(1, None, [good(1), good(2), good(3)])
    assert sorted(coordinator.history) == [1, 2, 3] and torch.equal(coordinator.history[1], torch.ones(12))


RULE_PARAMS = {"trimmed_mean": {"num_trim": 1}, "dnc": {"b": 12}}


@pytest.mark.parametrize("rule", available_rules())
def test_every_rule_aggregates_a_federated_round_and_checkpoints_it(rule, tmp_path):
    """Seven sampled clients (ids out of order), f = 1, two rounds, the server's own update for the rules
    that need one: weights for the seven in client order, a moved global adapter, one checkpoint a round,
    and the per-client histories the rules with memory keep."""
    coordinator = make_coordinator(tmp_path, rule=rule, rule_params=RULE_PARAMS.get(rule, {}), num_malicious=1)
    generator = torch.Generator().manual_seed(0)
    server = get_rule(rule).needs_server_update
    for round_idx, ids in enumerate([[9, 2, 5, 0, 7, 3, 1], [4, 8, 6, 0, 2, 9, 5]]):
        updates = [ClientUpdate(c, 10 + c, torch.randn(12, generator=generator) + 1.0) for c in ids]
        server_update = ClientUpdate(-1, 10, torch.ones(12)) if server else None
        summary = coordinator.aggregate_updates(round_idx, server_update, updates)
        assert "skipped" not in summary, summary
        assert summary["clients"] == sorted(ids)
        assert len(summary["weights"]) == 7 and min(summary["weights"]) >= 0
        assert summary["global_norm"] > 0
        assert load_checkpoint(latest_checkpoint(tmp_path)).round_idx == round_idx
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path)).vector_for(SPEC), coordinator.global_vector())
    if get_rule(rule).needs_history:
        assert sorted(coordinator.history) == sorted({9, 2, 5, 0, 7, 3, 1, 4, 8, 6})


def test_a_non_finite_aggregate_is_refused_and_the_global_adapter_kept(tmp_path):
    """A rule parameter the config checks would refuse (max_norm NaN), given to the coordinator directly:
    the round is skipped like a rejected update and the global adapter, histories and checkpoint stay sound."""
    coordinator = make_coordinator(tmp_path, rule="norm_bound", rule_params={"max_norm": float("nan")},
                                   track_clients=True)
    summary = coordinator.aggregate_updates(0, None, [good(1), good(2, 3.0)])
    assert "NaN or Inf" in summary["skipped"]
    assert torch.equal(coordinator.global_vector(), torch.zeros(12)) and coordinator.history == {}
    saved = load_checkpoint(latest_checkpoint(tmp_path))
    assert saved.round_idx == 0 and torch.equal(saved.vector_for(SPEC), torch.zeros(12))
