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
# what reaches every worker from the driver's environment when it is set there: the hub token of gated
# models (Llama-2, Mistral) and where the hub cache lives. Passed in Ray's runtime environment only: never
# printed, never written to a run folder.
HUB_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT",
           "TRANSFORMERS_OFFLINE", "HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER")


def extensions_dir() -> str:
    """Where DeepSpeed's JIT extension builds go on every node: the user's TORCH_EXTENSIONS_DIR, else a
    folder of this run under the system temp folder, so that a build killed in an earlier run (whose lock
    file makes every later build wait forever) never blocks this one."""
    import tempfile
    import time

    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        tempfile.gettempdir(), "fedsafe-torch-extensions", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables every worker gets: ``WORKER_ENV``, the hub settings of ``HUB_ENV`` that are
    set in ``environ`` (default: this process's), and ``TORCH_EXTENSIONS_DIR``."""
    environ = os.environ if environ is None else environ
    return {**WORKER_ENV, **{k: environ[k] for k in HUB_ENV if environ.get(k)},
            "TORCH_EXTENSIONS_DIR": EXTENSIONS_DIR}


EXTENSIONS_DIR = extensions_dir()


def actor_env(num_gpus: float) -> dict:
    """An actor's runtime environment: an actor that asks for no GPU sees none (Ray 2.60 no longer empties
    ``CUDA_VISIBLE_DEVICES`` for it, so it would open a CUDA context on a GPU another actor was given) and
    keeps its tensors on the CPU; one with GPUs sees those Ray gave it."""
    return {"env_vars": {**worker_env(), **({} if num_gpus else {"CUDA_VISIBLE_DEVICES": ""})}}


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Warning)\b")


def cause_line(err: BaseException) -> str:
    """The root cause of a Ray error in one line: the task's own exception (``cause``), or the last
    ``SomeError: message`` line of the traceback an actor that died in its constructor carries."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return cause_line(cause)
    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if x.strip()]
    found = next((x for x in reversed(lines) if EXCEPTION_LINE.match(x)), None)
    return found or (f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__)


def failed_node(err: BaseException) -> str | None:
    """The node a Ray error names (``ip=...``), if it names one."""
    found = re.search(r"\bip=([0-9a-fA-F.:]+)", str(err))
    return found.group(1) if found else None


def setup_failure(err: BaseException, where: str, model: str) -> str:
    """One line for a worker that could not start: ``where`` (e.g. "a trainer on 10.0.0.5"), what it could
    not load, the cause and the fix."""
    cause = cause_line(err)
    text = cause.lower()
    if any(k in text for k in ("this machine has none", "no cuda gpus", "nvidia driver", "driver version is insufficient",
                               "cuda is not available")):
        fix = ("torch on that node sees no GPU: give the trainers GPUs (trainer.gpus_per_client) on nodes whose NVIDIA "
               "driver runs torch's CUDA build (CUDA 13 builds: R580 or newer; nvidia-smi shows the driver), or use an "
               "image built for the node's CUDA")
    elif "bitsandbytes" in text:
        fix = ("install bitsandbytes on every GPU node: pip install 'bitsandbytes>=0.46.1' (the gpu extra brings it: "
               "pip install -e '.[gpu]')")
    elif "no module named" in text or "importerror" in text or "modulenotfounderror" in text:
        fix = "install the missing package on every node (pip install -e '.[gpu]' on GPU nodes, '.[cpu]' on CPU ones)"
    elif any(k in text for k in ("gated", "401", "403", "access to model", "authenticat", "unauthorized")):
        fix = ("the model is gated: accept its licence on huggingface.co and set HF_TOKEN (or run `huggingface-cli "
               "login`) where you start the run; fedsafe passes it to every worker")
    elif any(k in text for k in ("couldn't connect", "could not connect", "connection", "name or service not known",
                                 "offline mode")):
        fix = ("the node cannot reach the hub: put the model in the hub cache of every node (HF_HOME) and set "
               "HF_HUB_OFFLINE=1, or give model.name as a local folder present on every node")
    elif any(k in text for k in ("not a valid model identifier", "repository not found", "404", "does not appear to have",
                                 "no file named")):
        fix = "check model.name: a hub id, or a local folder with the model's weights present on every node"
    elif "out of memory" in text or "outofmemory" in text:
        fix = ("the model does not fit this GPU: see the plan's memory estimates (fedsafe run --dry-run --nodes ...); "
               "set train.gradient_checkpointing=true, lower train.batch_size or train.max_length, or use larger GPUs")
    else:
        fix = "the worker's log has the traceback (ray logs, or the Ray dashboard)"
    return f"{where} could not load {model}: {cause}; {fix}"


def local_resources(cfg: ClusterConfig, generation_cpus: float = 0.0) -> dict[str, float]:
    """What a local Ray would be given on this machine (used by --dry-run too). The generation pool's
    CPUs come on top of the cores: generation and training take turns in the round loop (trainers idle
    while the pool answers), so on one machine they share the cores instead of splitting them."""
    import torch

    cores = float(cfg.num_cpus or os.cpu_count() or 1)
    gpus = torch.cuda.device_count()
    memory = {"gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30} if gpus else {}
    return {"CPU": cores + generation_cpus, "GPU": float(gpus), **memory}


def model_shapes(cfg) -> dict:
    """The shapes (``fedsafe.cluster.memory.ModelShape``) of the run's models whose config.json is on this
    machine (a local folder, or the hub cache); the memory estimate takes the others from its table."""
    from fedsafe.cluster.memory import shape_from_config
    from fedsafe.cluster.plan import generation_models
    from fedsafe.models.loading import cached_config

    shapes = {}
    for name in dict.fromkeys([cfg.model.name, *generation_models(cfg)]):
        config = cached_config(name)
        shape = shape_from_config(config) if config else None
        if shape is not None:
            shapes[name] = shape
    return shapes


def target_address(cfg: ClusterConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def connect(cfg: ClusterConfig, generation_cpus: float = 0.0) -> list[dict[str, float]]:
    """Start or join Ray; returns the resources of each alive node."""
    import ray

    if not ray.is_initialized():
        address = target_address(cfg)
        common = dict(logging_level=logging.WARNING, runtime_env={"env_vars": worker_env()})
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


WAIT_REPORT_S = 30.0  # how often a run waiting for the cluster to grow says so


def plan_on_cluster(cfg, federations: int, shapes: dict, resources: list[dict[str, float]], say=print,
                    poll_s: float = 5.0):
    """``make_plan`` on the alive nodes. Joined to a cluster (``cluster.address``) that is short of CPUs or
    GPUs for it, the run asks the autoscaler for every bundle its plan needs
    (``ray.autoscaler.sdk.request_resources``) and waits for nodes to join, saying so every
    ``WAIT_REPORT_S`` seconds, up to ``cluster.round_timeout_s``; then it stops with the plan's own line."""
    import time

    from fedsafe.cluster.plan import ResourceShortage, make_plan, wanted_bundles

    try:
        return make_plan(cfg, resources, federations, shapes)
    except ResourceShortage:
        if not target_address(cfg.cluster):
            raise
    from ray.autoscaler.sdk import request_resources

    bundles = wanted_bundles(cfg, federations)
    request_resources(bundles=bundles)
    started = last = time.monotonic()
    gpus = sum(b.get("GPU", 0) for b in bundles)
    say(f"waiting for the cluster to grow: the plan needs {len(bundles)} bundles ({gpus:g} GPUs); asked the "
        f"autoscaler for them (up to cluster.round_timeout_s={cfg.cluster.round_timeout_s:g}s)")
    while True:
        time.sleep(poll_s)
        nodes = alive_nodes()
        try:
            plan = make_plan(cfg, nodes, federations, shapes)
        except ResourceShortage:
            if time.monotonic() - started > cfg.cluster.round_timeout_s:
                raise
            if time.monotonic() - last >= WAIT_REPORT_S:
                last = time.monotonic()
                have = sum(n["GPU"] for n in nodes)
                say(f"still waiting: {len(nodes)} node(s), {have:g} of {gpus:g} GPUs "
                    f"({time.monotonic() - started:.0f}s)")
            continue
        request_resources(bundles=[])  # the plan holds them now: the autoscaler may scale down the rest later
        return plan
