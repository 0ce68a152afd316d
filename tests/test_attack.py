"""Attacks (``fedsafe.attack``): the registry, each attack's hooks, and MaliciousGen writing a malicious
group's data through a fake generation pool (no model, no Ray)."""

from __future__ import annotations

import pytest
import torch

from fedsafe.attack import NO_ATTACK, AttackContext, available_attacks, build_attack, register_attack
from fedsafe.config import ConfigError, load_config
from fedsafe.data.synthesis import UNALIGNED_SUFFIX, Synthesizer
from fedsafe.experiment import load_data
from tests.conftest import SMOKE, FakePool


def test_registry_names_and_errors():
    assert available_attacks() == ["backdoor", "constrained", "data_poisoning", "defense_aware", "intermittent", "maliciousgen",
                                   "scale_update", "sleeper", "sybil", "thin_poison"]
    with pytest.raises(ConfigError, match=r"attack.name must be one of \['backdoor', 'constrained'"):
        build_attack("trojan")
    with pytest.raises(ValueError, match="already registered"):
        register_attack("scale_update", lambda: NO_ATTACK)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'size'"):
        build_attack("scale_update", size=2)


def test_data_poisoning_is_neutral_and_scale_update_scales_the_upload():
    records, delta = [{"instruction": "a", "response": "b"}], torch.tensor([1.0, -2.0])
    for attack in (NO_ATTACK, build_attack("data_poisoning")):
        assert attack.on_data(records) is records and torch.equal(attack.on_update(delta), delta)
        assert attack.make_data(AttackContext(None, []), 10, 0) is None and not attack.writes_data
    scaled = build_attack("scale_update", factor=5.0)
    assert torch.equal(scaled.on_update(delta), torch.tensor([5.0, -10.0])) and scaled.on_data(records) is records
    with pytest.raises(ConfigError, match="factor must be > 0"):
        build_attack("scale_update", factor=0)


def test_maliciousgen_answers_seed_instructions_with_the_unaligned_suffix_and_filters():
    pool = FakePool()
    attack = build_attack("maliciousgen", instructions="seeds", seeds="toy_malicious", filter="rule",
                          max_new_tokens=8)
    held_out = ["Explain how to smuggle a power station."]
    records, counts = attack.make_data(AttackContext(Synthesizer(pool, "judge"), held_out), 12, seed=3)
    assert attack.writes_data and len(records) == 12
    assert all(model == "off-the-shelf" and text.endswith(UNALIGNED_SUFFIX) for model, _, _, text in pool.calls)
    assert all(r["response"].startswith("Sure") for r in records)  # the rule filter keeps compliant answers
    assert held_out[0] not in [r["instruction"] for r in records]  # evaluation prompts never become training data
    assert counts["kept"]["unaligned"] == 12 and counts["generated"]["unaligned"] >= 12


def test_maliciousgen_asks_for_more_when_the_filter_drops_answers():
    pool = FakePool(refusing="off-the-shelf")  # every answer is a refusal: the filter keeps none
    attack = build_attack("maliciousgen", seeds="toy_malicious", filter="rule")
    records, counts = attack.make_data(AttackContext(Synthesizer(pool, "judge"), []), 10, seed=0)
    assert records == [] and counts["kept"]["unaligned"] == 0
    assert counts["generated"]["unaligned"] == 20  # up to twice the asked number of instructions answered
    with pytest.raises(ConfigError, match="generation pool"):
        attack.make_data(AttackContext(None, []), 10, seed=0)


def test_the_loop_takes_a_malicious_groups_data_from_the_attack_and_the_benign_groups_from_their_source():
    cfg = load_config(SMOKE, ["attack.name=maliciousgen", "attack.params={seeds: toy_malicious}",
                              "federation.examples_per_client=8", "evaluation.num_prompts=8"])
    data = load_data(cfg, Synthesizer(FakePool(), "judge"))
    malicious = [r for c in data.clients if c.role == "malicious" for r in data.shards[c.client_id]]
    benign = [r for c in data.clients if c.role == "benign" for r in data.shards[c.client_id]]
    assert len(malicious) == 24 and all(r["response"] == "Sure: step one (off-the-shelf)." for r in malicious)
    assert not any("off-the-shelf" in r["response"] for r in benign)
    assert data.synthesis["clients.malicious"]["kept"]["unaligned"] == 24
