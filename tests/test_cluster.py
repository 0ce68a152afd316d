"""The cluster layer: resource plans for this machine and for fake clusters (no Ray), launch --dry-run
--nodes, deploy/ manifests; on Ray's local multi-node test cluster, nodes joining and leaving a run and an
update lost with its node; job submission with token authentication."""

import pytest

from fedsafe.cluster.plan import generation_models, make_plan
from fedsafe.config import ConfigError, load_config
from tests.conftest import ROOT, SMOKE, run_scenario

PAPER_GPU = ROOT / "configs" / "paper_gpu.yaml"
GPU8 = {"CPU": 96, "GPU": 8}


@pytest.mark.parametrize("resources, overrides, trainers", [  # the generation pool holds 1 CPU of these
    ({"CPU": 3}, [], 2),
    ({"CPU": 2}, [], 1),
    ({"CPU": 16}, [], 3),  # never more trainers than clients per round
    ({"CPU": 16}, ["cluster.num_trainers=5"], 5),
    ({"CPU": 17}, ["cluster.cpus_per_trainer=8"], 2),
    ({"CPU": 16}, ["cluster.cpus_per_trainer=8"], 1),
    ({"CPU": 16}, ["cluster.cpus_per_trainer=7", "generation.replicas=2"], 2),
    ({"CPU": 32, "GPU": 2}, ["trainer.gpus_per_client=1"], 2),
    ({"CPU": 32, "GPU": 2}, ["trainer.gpus_per_client=0.5"], 3),
])
def test_trainer_count_follows_resources(resources, overrides, trainers):
    plan = make_plan(load_config(SMOKE, overrides), resources)
    assert plan.trainers.count == trainers
    assert plan.coordinator.num_cpus == 0 and plan.num_clients == 10


def test_impossible_plans_say_what_to_change():
    with pytest.raises(ConfigError, match="no GPU"):
        make_plan(load_config(SMOKE, ["trainer.gpus_per_client=1"]), {"CPU": 4})
    with pytest.raises(ConfigError, match="cluster.num_trainers"):
        make_plan(load_config(SMOKE, ["cluster.num_trainers=4"]), {"CPU": 2})
    with pytest.raises(ConfigError, match="generation.replicas"):
        make_plan(load_config(SMOKE), {"CPU": 1})


def test_generation_pool_reserves_a_slot_per_model():
    cfg = load_config(SMOKE, ["evaluation.judge_model=judge-model", "evaluation.reward_model=rm",
                              "generation.replicas=2"])
    assert generation_models(cfg) == sorted({cfg.model.name, "judge-model", "rm"})
    plan = make_plan(cfg, {"CPU": 8})
    assert plan.generators.count == 6 and plan.trainers.count == 2


def per_node(plan):
    return [(n.trainer_groups, n.generators) for n in plan.nodes]


def test_one_cpu_machine():
    plan = make_plan(load_config(SMOKE), {"CPU": 2})  # 1 core + the generation pool's CPU on top
    assert (plan.trainers.count, plan.trainers.num_gpus, plan.generators.count) == (1, 0, 1)


def test_one_node_eight_gpus_generators_and_trainers_never_share_a_gpu():
    # 4 pool models x 1 GPU (base, generator, MD-Judge, reward model); 4 GPUs left, 3 clients a round
    plan = make_plan(load_config(PAPER_GPU), [GPU8])
    assert (plan.generators.count, plan.trainers.count, plan.trainers.num_gpus) == (4, 3, 1.0)
    two = make_plan(load_config(PAPER_GPU, ["trainer.gpus_per_client=2"]), [GPU8])
    assert (two.trainers.count, two.trainers.group_size, two.trainers.num_gpus) == (2, 2, 1.0)  # 4 of 4 GPUs
    assert two.trainers.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2


def test_four_nodes_eight_gpus():
    cfg = load_config(PAPER_GPU, ["federation.clients_per_round=10", "trainer.gpus_per_client=4",
                                  "generation.gpus_per_replica=2"])  # tensor-parallel 2 replicas
    plan = make_plan(cfg, [GPU8] * 4)
    # node 0: 4 replicas x 2 GPUs leave none; nodes 1-3: two 4-GPU clients each
    assert per_node(plan) == [(0, 4), (2, 0), (2, 0), (2, 0)]
    assert (plan.trainers.count, plan.trainers.group_size) == (6, 4)
    assert "tensor parallel 2" in plan.describe() and "torch.distributed group" in plan.describe()


def test_mixed_cluster_places_by_node():
    nodes = [{"CPU": 16}, {"CPU": 32, "GPU": 4}, {"CPU": 8, "GPU": 8}]  # CPU head, two GPU workers
    cfg = load_config(PAPER_GPU, ["federation.clients_per_round=10", "cluster.cpus_per_trainer=4",
                                  "evaluation.reward_model=''"])  # 3 pool models: base, generator, MD-Judge
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
    assert "on 5 node(s)" in out and "node 1 {'CPU': 96.0, 'GPU': 8.0}: 4 trainer group(s), 4 generator(s)" in out
    # the matrix's 8 federated runs get 3 groups each, side by side; concurrent_federations=1 plans one
    assert "served by 24 trainer group(s)" in out and "up to 8 side by side" in out
    assert launch.main(["--config", str(PAPER_GPU), "--dry-run", "--nodes", "1x16:0,4x96:8",
                        "cluster.concurrent_federations=1"]) == 0
    out = capsys.readouterr().out
    assert "served by 3 trainer group(s)" in out and "side by side" not in out
    assert launch.main(["--config", str(PAPER_GPU), "--dry-run", "--nodes", "4xlots"]) == 2


@pytest.mark.integration
def test_elastic_pool_follows_nodes_joining_and_leaving(tmp_path, model_cache):
    """Ray's local multi-node test cluster: a node joins after round 0 (its trainers take clients from
    round 1) and is removed without warning after round 1; the scenario waits until Ray reports it dead,
    so round 2 finds its 2 groups dead, drops them and trains on the head's group; the run ends."""
    shown = run_scenario("elastic", tmp_path, model_cache)
    assert shown["rounds"] == [0, 1, 2, 3, 4] and shown["clients_trained"] == [3] * 5, shown
    assert shown["trainer_groups"] == [1, 3, 1, 1, 1], shown  # 2 CPUs: generator + 1 trainer; +2 on the worker
    assert shown["pool"][1]["added"] == 2 and shown["pool"][2]["dropped"] == 2, shown
    assert shown["pool"][2]["lost_total"] == 2, shown
    assert 0 <= shown["final_rule"] <= 100


@pytest.mark.integration
def test_an_update_lost_with_its_node_is_trained_again(tmp_path, model_cache):
    """The worker node holding a finished client's update (in its object store) is removed as the update is
    handed to the coordinator: the update is lost on its way, the client is trained again elsewhere, and
    the round aggregates every sampled client."""
    shown = run_scenario("lost_update", tmp_path, model_cache)
    assert shown["groups_after_join"] == 3 and len(shown["events"]) == 1, shown
    lost = [f for f in shown["failures"] if f["reason"].startswith("update lost")]
    assert len(lost) == 1, shown
    assert f"client {lost[0]['client_id']}'s update" in shown["events"][0], shown
    assert shown["aggregated"] == sorted(shown["sampled"]), shown


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_ray_job_submit_on_loopback_with_a_token(tmp_path, model_cache):
    """docs/cluster.md's recipe: `ray start --head` on 127.0.0.1 with token authentication, then `ray job submit
    --working-dir . -- python launch.py ...` streams the run's log; a client without the token is refused."""
    import os
    import secrets
    import subprocess
    import sys
    import time
    from pathlib import Path

    ray_cli = str(Path(sys.executable).parent / "ray")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    url = f"http://127.0.0.1:{(dashboard := free_port())}"
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             # ports whose defaults the tests' own local Ray already holds (its job agent: 52365)
                             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                             "--num-cpus=3", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def jobs(client_env):
            return subprocess.run([ray_cli, "job", "list", "--address", url], env=client_env,
                                  capture_output=True, text=True, timeout=60)

        deadline = time.time() + 120
        while jobs(env).returncode != 0:
            assert time.time() < deadline and head.poll() is None, "the head node did not come up"
            time.sleep(2)
        wrong = tmp_path / "wrong_token"
        wrong.write_text(secrets.token_hex(32))
        refused = jobs({**env, "RAY_AUTH_TOKEN_PATH": str(wrong)})
        assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()

        runs = tmp_path / "runs"  # absolute: a job runs in a temporary copy of the working dir
        submit = [ray_cli, "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
                  sys.executable, "launch.py", "--config", "configs/smoke.yaml", "federation.num_rounds=2",
                  "evaluation.num_prompts=8", "evaluation.num_benign=8", f"output.root={runs}",
                  f"model.cache_dir={model_cache}", "output.trackers=[]"]
        for _ in range(20):  # the job agent may register a little after the dashboard answers
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            out = job.stdout + job.stderr
            if "No available agent to submit job" not in out:
                break
            time.sleep(3)
        assert job.returncode == 0 and "succeeded" in out, out[-3000:]
        assert "rounds: 100%" in out and "wall time" in out  # the run's own log, streamed
        assert len(list(runs.glob("smoke-*/results.json"))) == 1
    finally:
        head.terminate()  # `ray start --block` stops the processes it started (not other Ray clusters)
        head.wait(timeout=60)


def load_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_cluster_launcher_yaml_passes_rays_schema_and_plans_the_paper_setting():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_yaml(ROOT / "deploy" / "cluster-aws.yaml")
    validate_config(prepare_config(copy.deepcopy(raw)))  # Ray's own cluster-config schema
    broken = copy.deepcopy(raw)
    del broken["available_node_types"]["gpu_a100_x8"]["resources"]
    with pytest.raises(Exception, match="resources"):
        validate_config(prepare_config(broken))
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}  # nothing of a run's work on the head
    starts = " ".join(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts
    memory = {"g5.12xlarge": 24, "p4d.24xlarge": 40}  # GiB per GPU: A10G, A100 40 GB
    worker_types = [t for name, t in types.items() if name != raw["head_node_type"]]
    workers = [{**t["resources"], "gpu_memory_gib": memory[t["node_config"]["InstanceType"]]} for t in worker_types]
    at_start = [w for w, t in zip(workers, worker_types) for _ in range(t["min_workers"])]
    # the workers that start with the cluster hold the paper plan, memory included; the most it may grow to, more
    plan = make_plan(load_config(PAPER_GPU), [{"CPU": 0}] + at_start)
    assert plan.trainers.count == 3 and plan.generators.count == 4 and "fits" in plan.describe()
    most = [w for w, t in zip(workers, worker_types) for _ in range(t["max_workers"])]
    assert make_plan(load_config(PAPER_GPU, ["federation.clients_per_round=10"]), [{"CPU": 0}] + most).trainers.count == 10
    text = (ROOT / "deploy" / "cluster-aws.yaml").read_text()
    assert ".venv/bin/python launch.py" in text and "R580" in text  # the set-up's Python; the CUDA 13 driver


def test_rayjob_manifest_has_what_kuberay_requires_and_its_entrypoint_plans():
    import shlex

    job = load_yaml(ROOT / "deploy" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in groups:  # the CRD types rayStartParams as map[string]string
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] and container["resources"]["limits"] == container["resources"]["requests"]
    for w in cluster["workerGroupSpecs"]:
        assert w["groupName"] and w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
    (submitter,) = spec["submitterPodTemplate"]["spec"]["containers"]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]] + [submitter]
    for container in containers:  # every pod, the submitter's too, authenticates with the token
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    # the CUDA build make setup installs (docs/gpu.md)
    assert {c["image"] for c in containers} == {"ghcr.io/fedsafe/fedsafe:cuda13"}
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "/app/.venv/bin/python" and argv[1:3] == ["launch.py", "--config"]  # the set-up's venv
    cfg = load_config(ROOT / argv[3], argv[4:])
    assert cfg.output.root.startswith("/")  # a mounted volume, not the job's temporary working dir
    nodes = [{"CPU": 0}] + [
        {"CPU": float(w["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]),
         "GPU": float(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])}
        for w in cluster["workerGroupSpecs"] for _ in range(w["replicas"])]
    assert make_plan(cfg, nodes).trainers.count == cfg.federation.clients_per_round


def test_the_retry_policy_is_data_and_a_failed_client_goes_to_the_front_until_it_is_out_of_tries():
    from fedsafe.cluster.pool import RetryPolicy, Schedule
    from fedsafe.updates import ClientTask

    cfg = load_config(SMOKE, ["cluster.max_retries=1", "cluster.client_timeout_s=7", "cluster.round_timeout_s=9"])
    policy = RetryPolicy.from_config(cfg)
    assert policy == RetryPolicy(max_retries=1, client_timeout_s=7.0, round_timeout_s=9.0)
    assert [policy.again(n) for n in (1, 2)] == [True, False] and "client_timeout_s=7s" in policy.silence
    tasks = [ClientTask(c, 0, "benign", [], [1e-3], 1, 8, 0.0, 0) for c in (4, 8, 9)]
    run = Schedule(tasks, [], policy)
    assert run.pending == [0, 1, 2] and run.busy
    run.pending.remove(2)
    run.fail(2, "trainer died: x")
    assert run.pending == [2, 0, 1]  # a retry goes first
    run.pending.remove(2)
    run.fail(2, "timeout: y")
    assert run.pending == [0, 1]  # out of tries: the round goes on without client 9
    assert run.outcome.failures == [{"client_id": 9, "attempt": 1, "reason": "trainer died: x"},
                                    {"client_id": 9, "attempt": 2, "reason": "timeout: y"}]
