"""Faults on a real local Ray: processes are killed with SIGKILL (found by the title Ray gives them,
e.g. ``ray::Trainer.train``) while they work, and the run must end as if nothing had happened."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from fedsafe.checkpoint import ADAPTER_FILE, checkpoint_dir
from fedsafe.config import load_config
from fedsafe.experiment import Session, federate, load_data
from fedsafe.matrix import run_experiment
from tests.conftest import PROMPTS, ROOT, SMOKE, arm, read_metrics, trained_adapter

pytestmark = pytest.mark.integration

FAULT_RUN = ["federation.num_rounds=3", "evaluation.num_prompts=8", "evaluation.num_benign=8",
             "output.keep_checkpoints=10", "output.trackers=[]"]


def ray_processes(title: str) -> list[psutil.Process]:
    """Workers of this test's Ray cluster whose title starts with ``title`` (Ray names an actor's worker
    ``ray::Class.method`` while it runs a method and ``ray::Class`` when idle). Workers of any other Ray on
    the machine are left alone: a worker's parent is its cluster's raylet, started with its GCS address."""
    import ray

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(title):
            try:
                parent = proc.parent()
                if parent is not None and any(gcs in arg for arg in parent.cmdline()):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile
                continue
    return found


def kill_when_seen(title: str, events: list[str], timeout: float = 120.0) -> threading.Thread:
    """Start a thread that SIGKILLs the first process titled ``title`` as soon as one appears."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in ray_processes(title):
                proc.send_signal(signal.SIGKILL)
                events.append(f"killed {title} (pid {proc.pid})")
                return
            time.sleep(0.01)
        events.append(f"no {title} seen within {timeout:g}s")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def final_adapter(run_dir) -> bytes:
    return (checkpoint_dir(run_dir, 2) / ADAPTER_FILE).read_bytes()


@pytest.fixture(scope="module")
def fault_cfg(model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")

    def make(*overrides: str):
        return load_config(SMOKE, [f"model.cache_dir={model_cache}", f"output.root={root}", *FAULT_RUN, *overrides])

    return make


@pytest.fixture(scope="module")
def baseline(ray_cluster, fault_cfg, tmp_path_factory):
    """An uninterrupted run: the result every faulty run must reproduce (CPU, same seed)."""
    run_dir = tmp_path_factory.mktemp("baseline")
    return run_dir, run_experiment(fault_cfg(), run_dir)


def test_trainer_and_coordinator_killed_mid_run_the_result_is_unchanged(ray_cluster, fault_cfg, baseline, tmp_path):
    """Round 1: a trainer is killed while it trains (its client is retried on the other trainer, the pool
    starts a new group before round 2). Round 2: the coordinator is killed (it is started again from the
    round-1 checkpoint and the round run again)."""
    events: list[str] = []
    watchers = []

    def on_round(record: dict) -> None:
        if record["round"] == 0:
            watchers.append(kill_when_seen("ray::Trainer.train", events))
        elif record["round"] == 1:
            watchers[0].join()
            watchers.append(kill_when_seen("ray::Coordinator", events))

    run_dir = tmp_path / "run"
    results = run_experiment(fault_cfg(), run_dir, on_round=on_round)
    assert [e.split(" (")[0] for e in events] == ["killed ray::Trainer.train", "killed ray::Coordinator"]

    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    r1, r2 = records[1], records[2]
    assert [f["attempt"] for f in r1["failures"]] == [1] and "trainer died" in r1["failures"][0]["reason"]
    assert "failed" not in r1 and [c["client_id"] for c in r1["client_metrics"]] == r1["sampled"] == r1["clients"]
    assert r2["coordinator_restarts"] == 1 and r2["trainer_pool"]["lost_total"] == 1
    assert r2["clients"] == r2["sampled"]
    assert final_adapter(run_dir) == final_adapter(baseline[0])
    assert arm(results)["evaluation"] == arm(baseline[1])["evaluation"]


def resume_to_the_end(run_dir, baseline) -> dict:
    """``launch.py --resume run_dir`` to the end; the run must have one metrics line per round and the
    uninterrupted run's final adapter and evaluation. Returns its results."""
    resumed = subprocess.run([sys.executable, "launch.py", "--resume", str(run_dir)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2]
    assert final_adapter(run_dir) == final_adapter(baseline[0])
    assert arm(results)["evaluation"] == arm(baseline[1])["evaluation"]
    return results


def test_driver_killed_then_resume_equals_uninterrupted(fault_cfg, baseline, model_cache, tmp_path):
    """The whole driver (and the local Ray it started) is SIGKILLed once round 0 is checkpointed;
    ``launch.py --resume`` finishes the run with the uninterrupted run's adapter and evaluation."""
    args = [f"model.cache_dir={model_cache}", f"output.root={tmp_path}", *FAULT_RUN]
    driver = subprocess.Popen([sys.executable, "launch.py", "--config", str(SMOKE), *args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("smoke-*/checkpoints/round_0000")) and time.monotonic() < deadline:
        assert driver.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    (run_dir,) = tmp_path.glob("smoke-*")
    assert not (run_dir / "results.json").exists()

    results = resume_to_the_end(run_dir, baseline)
    assert 1 <= arm(results)["resumed_at_round"] <= 2
    # one line per round; a round checkpointed just before the kill but never logged says so
    assert all("client_metrics" in r or "before its record" in r["recovered"] for r in read_metrics(run_dir))


def training_descendant(pid: int) -> psutil.Process | None:
    """A process of the driver ``pid``'s own local Ray that is training a client right now."""
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if (proc.cmdline() or [""])[0].startswith("ray::Trainer.train"):
                return proc
        except psutil.Error:
            continue
    return None


def signal_mid_training(argv: list[str], sig: signal.Signals, tmp_path, checkpoints: str = "smoke-*/checkpoints"
                        ) -> str:
    """Start ``launch.py argv``, send ``sig`` to the driver alone while one of its trainers trains a round
    after round 0 (an event, not a delay), wait for it to end; check exit 128 + sig and that every process
    of its local Ray is gone. Returns the last line it wrote to stderr, progress bars' codes removed.
    ``checkpoints``: where (a glob under tmp_path) the run's round checkpoints appear."""
    driver = subprocess.Popen([sys.executable, "launch.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(driver.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300  # a bound on a hung run, not a wait
    trainer = None
    while trainer is None:
        assert time.monotonic() < deadline and driver.poll() is None, "the run ended before it could be signalled"
        assert not list(tmp_path.glob(f"{checkpoints}/round_0002")), "the rounds ended before a signal"
        if list(tmp_path.glob(f"{checkpoints}/round_0000")):
            trainer = training_descendant(driver.pid)
        time.sleep(0.01)
    ray_processes = psutil.Process(driver.pid).children(recursive=True)
    driver.send_signal(sig)
    assert driver.wait(timeout=300) == 128 + sig
    reader.join(timeout=60)
    _, alive = psutil.wait_procs(ray_processes, timeout=120)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "".join(errors)).replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-1]


def test_sigint_then_sigterm_mid_training_stop_with_one_line_and_the_resume_equals_uninterrupted(
        fault_cfg, baseline, model_cache, tmp_path):
    """Ctrl-C (SIGINT) while a trainer trains; ``--resume``, then SIGTERM while a trainer trains again; each
    ends with one line naming the run folder and the --resume command, exit 128 + the signal, no Ray process
    left. A last ``--resume`` finishes with the uninterrupted run's adapter and evaluation."""
    args = [f"model.cache_dir={model_cache}", f"output.root={tmp_path}", *FAULT_RUN]
    last = signal_mid_training(["--config", str(SMOKE), *args], signal.SIGINT, tmp_path)
    (run_dir,) = tmp_path.glob("smoke-*")
    resume = f"continue with: python launch.py --resume {run_dir}"
    assert last == f"stopped by SIGINT in {run_dir}, at the last completed round; {resume}"
    last = signal_mid_training(["--resume", str(run_dir)], signal.SIGTERM, tmp_path)
    assert last == f"stopped by SIGTERM in {run_dir}, at the last completed round; {resume}"
    assert not (run_dir / "results.json").exists()

    results = resume_to_the_end(run_dir, baseline)
    assert 1 <= arm(results)["resumed_at_round"] <= 3


def test_sigterm_stops_federated_runs_side_by_side_and_the_resume_finishes_them(model_cache, tmp_path):
    """Two seeds' federated runs side by side (one client a round, two trainer groups): SIGTERM while a
    trainer trains ends every thread with the one line and exit 143, no Ray process left; ``--resume``
    finishes both seeds."""
    args = [f"model.cache_dir={model_cache}", f"output.root={tmp_path}", *FAULT_RUN, "seeds=[0, 1]",
            "federation.clients_per_round=1", "cluster.num_cpus=3"]
    last = signal_mid_training(["--config", str(SMOKE), *args], signal.SIGTERM, tmp_path,
                               checkpoints="smoke-*/seed-*/checkpoints")
    (run_dir,) = tmp_path.glob("smoke-*")
    assert last == (f"stopped by SIGTERM in {run_dir}, at the last completed round; "
                    f"continue with: python launch.py --resume {run_dir}")
    resumed = subprocess.run([sys.executable, "launch.py", "--resume", str(run_dir)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 federated runs, 2 side by side" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["seed"] for r in next(iter(results["arms"].values()))["runs"]] == [0, 1]
    for seed in (0, 1):
        assert [r["round"] for r in read_metrics(run_dir / f"seed-{seed}")] == [0, 1, 2]


class ExitOnArrival(dict):
    """A record whose unpickling ends the process: the trainer that receives the task dies at once."""

    def __reduce__(self):
        return os._exit, (1,)


class HangOnArrival(dict):
    """A record whose unpickling blocks for an hour: the trainer that receives the task never answers."""

    def __reduce__(self):
        return time.sleep, (3600,)


def test_clients_that_keep_failing_are_left_out_and_the_round_closes(ray_cluster, fault_cfg, tmp_path):
    """Round 0 samples clients 0, 2, 6, 9: client 6 kills every trainer it reaches, client 9 hangs every
    trainer it reaches. Each is tried twice (cluster.max_retries=1), then the round closes with the
    two updates that arrived (aggregation.min_updates=2); round 1 runs on a rebuilt trainer pool."""
    cfg = fault_cfg("federation.num_rounds=2", "federation.clients_per_round=4", "aggregation.min_updates=2",
                    "cluster.max_retries=1", "cluster.client_timeout_s=6", "federation.sampling=paper")
    session = Session(cfg)
    try:
        data = load_data(cfg, session.synth)
        data.shards[6] = [ExitOnArrival()] * len(data.shards[6])
        data.shards[9] = [HangOnArrival()] * len(data.shards[9])
        federate(session, cfg, data, tmp_path).shutdown()
    finally:
        session.close()
    r0, r1 = read_metrics(tmp_path)
    assert r0["sampled"] == [0, 2, 6, 9] and r0["failed"] == [6, 9]
    tries = {(f["client_id"], f["attempt"]): f["reason"] for f in r0["failures"]}
    assert sorted(tries) == [(6, 1), (6, 2), (9, 1), (9, 2)]
    assert all(tries[6, a].startswith("trainer died") for a in (1, 2))
    assert all(tries[9, a].startswith("timeout") for a in (1, 2))
    assert r0["clients"] == [0, 2] and "skipped" not in r0 and len(r0["weights"]) == 2
    assert r1["sampled"] == r1["clients"] == [0, 1, 2, 4] and "failures" not in r1
    assert r1["trainer_groups"] == 2 and r1["trainer_pool"]["lost_total"] == 4


def test_a_generation_replica_killed_mid_call_is_restarted_and_the_answers_are_complete(smoke_cfg, ray_cluster,
                                                                                       model_cache):
    """Greedy answers with an adapter: a replica killed while it answers is restarted (with the adapter
    loaded again) and its requests sent again; the answers equal an undisturbed call's."""
    import ray

    from fedsafe.cluster.generation import GenerationPool
    from fedsafe.requests import GenerationParams, Request

    vector, spec, peft_config = trained_adapter(model_cache)
    cfg = smoke_cfg("lora.r=8", "generation.backend=hf", "generation.cache=false", "generation.hf_batch_size=4")
    pool = GenerationPool(cfg)
    try:
        key = pool.register_adapter(ray.put(vector), spec, peft_config)
        params = GenerationParams(max_new_tokens=24, temperature=0.0)
        requests = [Request(p, params, adapter=key) for p in PROMPTS * 8]
        undisturbed = pool.generate(cfg.model.name, requests)
        events: list[str] = []
        kill_when_seen("ray::Generator.generate", events, timeout=60)
        answers = pool.generate(cfg.model.name, requests)
        assert events and events[0].startswith("killed") and pool.restarts == 1
        assert answers == undisturbed and len(answers) == len(requests)
        plain = pool.generate(cfg.model.name, [Request(p, params) for p in PROMPTS * 8])
        assert plain != undisturbed, "the adapter should change some answers (so it was loaded again)"
    finally:
        pool.shutdown()
