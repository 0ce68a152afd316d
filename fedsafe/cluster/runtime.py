"""Start an embedded local Ray, or join an existing cluster.

No address (and no RAY_ADDRESS): a new local Ray with this machine's CPUs, dashboard off or on 127.0.0.1
(never a cluster that ``ray start`` left running here).
``cluster.address=auto`` or RAY_ADDRESS (set by ``ray job submit``): join that cluster.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading

from fedsafe.config import ClusterConfig

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def local_resources(cfg: ClusterConfig, generation_cpus: float = 0.0) -> dict[str, float]:
    """What a local Ray would be given on this machine (used by --dry-run too). The generation pool's
    CPUs come on top of the cores: generation and training take turns in the round loop (trainers idle
    while the pool answers), so on one machine they share the cores instead of splitting them."""
    import torch

    cores = float(cfg.num_cpus or os.cpu_count() or 1)
    return {"CPU": cores + generation_cpus, "GPU": float(torch.cuda.device_count())}


def target_address(cfg: ClusterConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def connect(cfg: ClusterConfig, generation_cpus: float = 0.0) -> list[dict[str, float]]:
    """Start or join Ray; returns the resources of each alive node."""
    import ray

    if not ray.is_initialized():
        address = target_address(cfg)
        common = dict(logging_level=logging.WARNING, runtime_env={"env_vars": WORKER_ENV})
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if address:
            ray.init(address=address, **common)
        else:
            res = local_resources(cfg, generation_cpus)
            ray.init(address="local", num_cpus=int(res["CPU"]), num_gpus=int(res["GPU"]),
                     include_dashboard=cfg.dashboard, dashboard_host=cfg.dashboard_host,
                     _system_config=local_system_config(cfg), **common)
        if threading.current_thread() is threading.main_thread() and on_sigterm not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init puts sys.exit there; keep the driver's handler
    return alive_nodes()


def local_system_config(cfg: ClusterConfig) -> dict:
    """Ray settings of an embedded local Ray. Without the dashboard nothing can read Ray's task events
    (the state API goes through it), yet the GCS keeps up to 100,000 of them: about 37 KB more memory per
    round (benchmarks/soak.py), so they are not reported."""
    return {} if cfg.dashboard else {"task_events_report_interval_ms": 0}


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's total CPU and GPU (what ``fedsafe.cluster.plan.make_plan`` packs)."""
    import ray

    return [{"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
            for n in ray.nodes() if n["Alive"]]


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def first_line(reason) -> str:
    """A reason (text or exception) in one line, for logs and round records; an exception as its type and
    first line (a failed task's by its cause), without terminal colours."""
    if not isinstance(reason, BaseException):
        return str(reason).strip().splitlines()[0]
    err = getattr(reason, "cause", None) or reason
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
