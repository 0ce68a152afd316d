"""Scale-out: resource plans for fake clusters (no Ray), launch --dry-run --nodes, deploy/ manifests."""

import pytest

from fedsafe.cluster.plan import make_plan
from fedsafe.config import ConfigError, load_config
from tests.conftest import ROOT, SMOKE

PAPER_GPU = ROOT / "configs" / "paper_gpu.yaml"
GPU8 = {"CPU": 96, "GPU": 8}


def per_node(plan):
    return [(n.trainer_groups, n.generators) for n in plan.nodes]


def test_one_cpu_machine():
    plan = make_plan(load_config(SMOKE), {"CPU": 2})  # 1 core + the generation pool's CPU on top
    assert (plan.trainers.count, plan.trainers.num_gpus, plan.generators.count) == (1, 0, 1)


def test_one_node_eight_gpus_generators_and_trainers_never_share_a_gpu():
    plan = make_plan(load_config(PAPER_GPU), [GPU8])  # 3 pool models x 1 GPU; 5 GPUs left, 3 clients a round
    assert (plan.generators.count, plan.trainers.count, plan.trainers.num_gpus) == (3, 3, 1.0)
    two = make_plan(load_config(PAPER_GPU, ["trainer.gpus_per_client=2"]), [GPU8])
    assert (two.trainers.count, two.trainers.group_size, two.trainers.num_gpus) == (2, 2, 1.0)  # 4 of 5 GPUs
    assert two.trainers.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2


def test_four_nodes_eight_gpus():
    cfg = load_config(PAPER_GPU, ["federation.clients_per_round=10", "trainer.gpus_per_client=4",
                                  "generation.gpus_per_replica=2"])  # tensor-parallel 2 replicas
    plan = make_plan(cfg, [GPU8] * 4)
    # node 0: 3 replicas x 2 GPUs leave 2 GPUs, too few for a 4-GPU client; nodes 1-3: two clients each
    assert per_node(plan) == [(0, 3), (2, 0), (2, 0), (2, 0)]
    assert (plan.trainers.count, plan.trainers.group_size) == (6, 4)
    assert "tensor parallel 2" in plan.describe() and "torch.distributed group" in plan.describe()


def test_mixed_cluster_places_by_node():
    nodes = [{"CPU": 16}, {"CPU": 32, "GPU": 4}, {"CPU": 8, "GPU": 8}]  # CPU head, two GPU workers
    cfg = load_config(PAPER_GPU, ["federation.clients_per_round=10", "cluster.cpus_per_trainer=4"])
    plan = make_plan(cfg, nodes)
    # replicas go where GPUs are (node 1 keeps 1 GPU for a trainer); node 2 has 8 GPUs but CPUs for 2
    assert per_node(plan) == [(0, 0), (1, 3), (2, 0)] and plan.trainers.count == 3
    assert plan.resources == {"CPU": 56.0, "GPU": 12.0}


def test_gpu_time_sharing_only_when_the_config_asks_for_fractions():
    shared = ["generation.gpus_per_replica=0.4", "generation.gpu_memory_utilization=0.35",
              "trainer.gpus_per_client=0.6"]
    cfg = load_config(SMOKE, shared)  # one pool model (the base model)
    assert make_plan(cfg, {"CPU": 8, "GPU": 1}).trainers.count == 1  # 0.4 + 0.6 on the one GPU
    assert make_plan(cfg, {"CPU": 8, "GPU": 2}).trainers.count == 2  # a third 0.6 fits on no GPU
    whole = load_config(SMOKE, ["generation.gpus_per_replica=1", "trainer.gpus_per_client=0.5"])
    assert make_plan(whole, {"CPU": 8, "GPU": 2}).trainers.count == 2  # the replica's GPU is its own
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(SMOKE, ["generation.gpus_per_replica=0.4", "generation.gpu_memory_utilization=0.5"])


@pytest.mark.parametrize("nodes, overrides, message", [
    ([{"CPU": 8}], ["trainer.gpus_per_client=1"], "no GPU"),
    ([{"CPU": 64, "GPU": 2}] * 3, ["trainer.gpus_per_client=4"], "largest node has 2"),
    ([{"CPU": 64, "GPU": 8}], ["cluster.num_trainers=9", "trainer.gpus_per_client=1"], "cluster.num_trainers"),
    ([{"CPU": 4, "GPU": 1}], ["generation.gpus_per_replica=2"], "generation.replicas"),
])
def test_impossible_cluster_plans_say_what_to_change(nodes, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(load_config(SMOKE, overrides), nodes)


def test_dry_run_plans_for_described_nodes(capsys):
    import launch

    assert launch.main(["--config", str(PAPER_GPU), "--dry-run", "--nodes", "1x16:0,4x96:8"]) == 0
    out = capsys.readouterr().out
    assert "on 5 node(s)" in out and "node 1 {'CPU': 96.0, 'GPU': 8.0}: 3 trainer group(s), 3 generator(s)" in out
    assert launch.main(["--config", str(PAPER_GPU), "--dry-run", "--nodes", "4xlots"]) == 2
