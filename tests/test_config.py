import pickle
import re

import pytest

from fedsafe.config import ConfigError, ExperimentConfig, from_yaml_text, load_config, to_yaml
from tests.conftest import SMOKE


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert [(g.role, g.count) for g in cfg.clients] == [("benign", 7), ("malicious", 3)]
    assert cfg.federation.clients_per_round == 3
    assert (cfg.lora.r, cfg.lora.alpha, cfg.train.lr, cfg.train.batch_size) == (32, 64, 5e-5, 16)


def test_yaml_then_overrides_in_order():
    cfg = load_config(SMOKE, ["train.lr=0.01", "clients.0.count=5", "aggregation.rule=trimmed_mean",
                              "aggregation.params={num_trim: 1}"])
    assert cfg.train.lr == 0.01
    assert cfg.clients[0].count == 5 and cfg.clients[1].count == 3
    assert cfg.aggregation.params == {"num_trim": 1}
    assert cfg.federation.num_rounds == 4  # from the file


@pytest.mark.parametrize("override, expected", [
    ("train.lrr=1", "train.lrr"),
    ("nosuch=1", "nosuch"),
    ("train.lr=abc", "train.lr"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("lora.dropout=1.5", "lora.dropout must be in [0, 1)"),
    ("aggregation.rule=krumm", "aggregation.rule must be one of"),
    ("clients.0.role=evil", "role must be one of"),
    ("federation.clients_per_round=11", "clients_per_round (11) must be <= the number of clients (10)"),
    ("evaluation.rule_keywords=mine", "evaluation.rule_keywords"),
    ("train.lr", "must look like key.sub=value"),
    ("aggregation.rule=krum", "krum needs n >= 2f + 3; got n=3, num_malicious=1"),
    ("aggregation.rule=bulyan", "bulyan needs n >= 4f + 3"),
    ("aggregation.params={lower: true}", "unexpected keyword argument 'lower'"),
    ("aggregation.rule=fltrust", "set aggregation.root_dataset"),
    ("aggregation.server_opt.name=sgd", "aggregation.server_opt.name must be one of"),
])
def test_bad_values_name_the_key(override, expected):
    """Values are checked when the config loads; components (the rule on this run's shape, the attack, the
    defenses) when the preflight builds them, before anything starts."""
    from fedsafe.preflight import check_components

    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_components(load_config(SMOKE, [override]))


def test_expected_malicious_follows_the_paper():
    assert load_config(SMOKE).expected_malicious == 1  # round(3 * 3 / 10)
    assert load_config(SMOKE, ["federation.clients_per_round=10"]).expected_malicious == 3
    assert load_config(SMOKE, ["aggregation.num_malicious=0"]).expected_malicious == 0
    cfg = load_config(SMOKE, ["federation.clients_per_round=7", "aggregation.rule=krum"])
    assert cfg.expected_malicious == 2  # round(2.1): n=7 >= 2*2+3 holds


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_round_trips_through_yaml_and_pickle():
    cfg = load_config(SMOKE, ["train.lr=0.02", "aggregation.rule=dnc", "aggregation.params={b: 100, niters: 2}"])
    assert from_yaml_text(to_yaml(cfg)) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_a_config_can_start_from_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text(f"base: {SMOKE}\nfederation: {{num_rounds: 7}}\narms: [{{name: a}}]\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {lr: 0.5}\narms: [{name: b}, {name: c}]\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.local_steps=3"])
    assert cfg.model.name == "builtin:tiny-llama"  # from the smoke file, two levels up
    assert (cfg.federation.num_rounds, cfg.train.lr, cfg.train.local_steps) == (7, 0.5, 3)
    assert [a.name for a in cfg.arms] == ["b", "c"]  # a list in the child replaces the base's
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_a_layer_naming_another_attack_or_rule_starts_its_params_afresh(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("attack: {name: maliciousgen, params: {instructions: generate}}\n"
                    "aggregation: {rule: trimmed_mean, params: {num_trim: 1}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nattack: {name: data_poisoning}\naggregation: {rule: median}\n")
    cfg = load_config(child)
    assert (cfg.attack.name, cfg.attack.params, cfg.aggregation.rule, cfg.aggregation.params) == (
        "data_poisoning", {}, "median", {})
    same = tmp_path / "same.yaml"
    same.write_text("base: base.yaml\nattack: {name: maliciousgen}\n")  # the same attack keeps its params
    assert load_config(same).attack.params == {"instructions": "generate"}


# keys added to the schema after the pin, each at an empty default that changes no run: (section, key) -> value
ADDED_SINCE_PIN = {("defense", "params"): {}, ("aggregation", "mode"): "factors", ("aggregation", "fold_rank"): 0}
ADDED_TO_EVERY_GROUP = {"lora_rank": 0}  # keys added to each clients[] group since the pin


def test_every_shipped_config_resolves_as_pinned():
    """Each file in configs/ loads to the resolved config pinned in tests/fixtures/resolved_configs.json
    (written from the code before the configs moved beside their components): a refactor of the schema
    that changes a default or drops a key fails here. Regenerate the file only for an intended change."""
    import json

    from fedsafe.config import to_dict
    from tests.conftest import ROOT

    pinned = json.loads((ROOT / "tests" / "fixtures" / "resolved_configs.json").read_text())
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(pinned) == shipped
    for name in shipped:
        resolved = to_dict(load_config(ROOT / "configs" / name))
        for (section, key), value in ADDED_SINCE_PIN.items():
            assert resolved[section].pop(key) == value, f"{name}: {section}.{key}"
        for group in resolved["clients"]:
            for key, value in ADDED_TO_EVERY_GROUP.items():
                assert group.pop(key) == value, f"{name}: clients[{group['name']}].{key}"
        assert resolved == pinned[name], name


def test_output_root_under_the_home_folder_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(None, ["output.root=~/runs"]).output.root == str(tmp_path / "runs")  # not a folder named "~"
