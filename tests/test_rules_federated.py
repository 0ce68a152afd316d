"""Every aggregation rule inside a real federated run. One Ray session (trainers, generation pool) serves
all rules; each rule gets its own coordinator and run folder, as the matrix's arms do."""

import pytest

from fedsafe.aggregation import available_rules
from fedsafe.run_dir import create_run_dir
from tests.test_integration import read_metrics

RULE_PARAMS = {"trimmed_mean": ["aggregation.params={num_trim: 1}"],
               "fltrust": ["aggregation.root_dataset=toy_benign", "aggregation.root_examples=40"],
               "dnc": ["aggregation.params={b: 2000}"]}
SHARED = ["federation.clients_per_round=7", "aggregation.num_malicious=1", "federation.num_rounds=2",
          "train.local_steps=2", "evaluation.num_prompts=4", "evaluation.benign_prompts=''"]


@pytest.fixture(scope="module")
def session(ray_cluster, model_cache, tmp_path_factory):
    from fedsafe.config import load_config
    from fedsafe.experiment import Session
    from tests.conftest import SMOKE

    cfg = load_config(SMOKE, [f"model.cache_dir={model_cache}", f"output.root={tmp_path_factory.mktemp('rules')}",
                              "output.tensorboard=false", *SHARED])
    s = Session(cfg)
    yield s
    s.close()


@pytest.mark.integration
@pytest.mark.parametrize("rule", available_rules())
def test_every_rule_runs_in_a_federated_run(session, smoke_cfg, rule):
    from fedsafe.experiment import federate, load_data

    cfg = smoke_cfg(f"aggregation.rule={rule}", *SHARED, *RULE_PARAMS.get(rule, []))
    run_dir = create_run_dir(cfg)
    coordinator = federate(session, cfg, load_data(cfg, session.synth), run_dir)
    coordinator.shutdown()
    records = read_metrics(run_dir)
    assert [m["round"] for m in records] == [0, 1]
    for m in records:
        assert len(m["weights"]) == 7 and min(m["weights"]) >= 0 and m["global_norm"] > 0
        assert [c["client_id"] for c in m["client_metrics"]] == m["sampled"]  # no server row among clients
