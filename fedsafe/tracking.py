"""Experiment trackers: every round's scalars and, at the end, the result table and the report's plots, sent
to the trackers ``output.trackers`` names (TensorBoard, Weights & Biases, MLflow).

One tracker run per run folder. Each federated run is a *series* (its training arm's name and seed) whose
scalars are keyed ``<series>/<scalar>`` and stepped by its round, so federated runs side by side or one after
the other share a tracker run. A resumed run continues the same W&B and MLflow runs (their ids are kept in
``trackers.json`` in the run folder, with the rounds each series has logged, so no round is sent twice).

    tensorboard  <run>/tensorboard/            tensorboard --logdir <run>/tensorboard
    wandb        <run>/wandb/ (offline mode)    wandb sync <run>/wandb/offline-run-*
    mlflow       <run>/mlflow.db + <run>/mlruns/ (no tracking_uri)
                                                mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db

Each tracker's package is imported only when it is asked for; ``missing_packages`` names the ones that are
not installed so a run can refuse them before it starts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fedsafe.config import OutputConfig
from fedsafe.files import write_whole
from fedsafe.metrics.registry import METRICS

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> module it imports
STATE_FILE = "trackers.json"


def round_scalars(record: dict) -> dict[str, float]:
    """The scalars of one round's record: its wall seconds, the clients' mean training loss, and where the
    round was evaluated each metric that names a tracker key (``Metric.scalar``). Pure."""
    scalars = {"round/seconds": float(record.get("seconds", 0.0))}
    if metrics := record.get("client_metrics"):
        scalars["train/loss"] = sum(m["loss"] for m in metrics) / len(metrics)
    if "safety" in (evaluation := record.get("evaluation", {})):
        for metric in METRICS.values():
            if metric.scalar and (value := metric.value(evaluation)) is not None:
                scalars[metric.scalar] = float(value)
    return scalars


def series_name(arm: str, seed: int) -> str:
    """A tracker key prefix for an arm's federated run: the arm's name with only the characters every
    tracker accepts in a key (MLflow's are the fewest). Pure."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arm).strip("_") + f"/seed{seed}"


def missing_packages(trackers: list[str]) -> list[str]:
    """The packages of ``trackers`` that are not installed."""
    return [PACKAGES[t] for t in trackers if importlib.util.find_spec(PACKAGES[t]) is None]


@dataclass
class TrackerRun:
    """What a tracker is given: the run folder, the run's name and config, the output settings, and the ids
    a tracker kept from an earlier start of the same run (it adds its own to ``state``)."""

    run_dir: Path
    name: str
    config: dict
    output: OutputConfig
    state: dict = field(default_factory=dict)


class Tracker(Protocol):
    def log_scalars(self, series: str, scalars: dict[str, float], step: int) -> None: ...

    def log_results(self, table, markdown: str, plots: dict[str, Path]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run: TrackerRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def log_scalars(self, series: str, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"{series}/{key}", value, step)
        self.writer.flush()

    def log_results(self, table, markdown: str, plots: dict[str, Path]) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_text("results", markdown)
        for name, path in plots.items():
            self.writer.add_image(f"plots/{name}", np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per run folder; each series' scalars are stepped by its own ``<series>/round`` metric (W&B's
    global step only grows, and federated runs restart their rounds at 0)."""

    def __init__(self, run: TrackerRun) -> None:
        import wandb

        self.wandb = wandb
        settings = run.output.wandb
        run.state.setdefault("wandb_id", uuid.uuid4().hex[:12])
        self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                              dir=str(run.run_dir), name=run.name, id=run.state["wandb_id"], resume="allow",
                              config=run.config, reinit="create_new")
        self.series: set[str] = set()

    def log_scalars(self, series: str, scalars: dict[str, float], step: int) -> None:
        if series not in self.series:
            self.run.define_metric(f"{series}/round")
            self.run.define_metric(f"{series}/*", step_metric=f"{series}/round")
            self.series.add(series)
        self.run.log({f"{series}/round": step, **{f"{series}/{k}": v for k, v in scalars.items()}})

    def log_results(self, table, markdown: str, plots: dict[str, Path]) -> None:
        self.run.log({"results": self.wandb.Table(dataframe=table.reset_index()),
                      **{f"plots/{name}": self.wandb.Image(str(path)) for name, path in plots.items()}})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run per run folder, through a client of its own (no global active run, so several
    fedsafe runs in one process do not mix). Without ``tracking_uri``: a local store in the run folder."""

    def __init__(self, run: TrackerRun) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        settings = run.output.mlflow
        uri = settings.tracking_uri or f"sqlite:///{(run.run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            settings.experiment, artifact_location=None if settings.tracking_uri else
            (run.run_dir / "mlruns").resolve().as_uri())
        if "mlflow_run_id" not in run.state:
            run.state["mlflow_run_id"] = self.client.create_run(experiment_id, run_name=run.name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_params(run.config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run.state["mlflow_run_id"], params=params[start:start + 100])
        self.run_id = run.state["mlflow_run_id"]

    def log_scalars(self, series: str, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{series}/{k}", v, now, step) for k, v in scalars.items()])

    def log_results(self, table, markdown: str, plots: dict[str, Path]) -> None:
        self.client.log_table(self.run_id, data=table.reset_index(), artifact_file="results.json")
        self.client.log_text(self.run_id, markdown, "results.md")
        for path in plots.values():
            self.client.log_artifact(self.run_id, str(path), "plots")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flat_params(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as dotted keys (MLflow's params are flat). Pure."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value
    return out


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers of one run folder, safe to call from the federations' threads. ``log_round`` sends a round
    once per series, however often it is called (a resumed run, or rounds read back from a federated run
    that another run trained)."""

    def __init__(self, names: list[str], run_dir: Path, name: str, config: dict, output: OutputConfig) -> None:
        self.path = Path(run_dir) / STATE_FILE
        state = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.logged: dict[str, list[int]] = state.pop("logged", {})
        self.run = TrackerRun(Path(run_dir), name, config, output, state)
        self.lock = threading.Lock()
        self.trackers: list[Tracker] = []
        try:
            for tracker in names:
                self.trackers.append(TRACKERS[tracker](self.run))
        except BaseException:
            self.close()
            raise
        if self.trackers:
            self._save()

    def _save(self) -> None:
        write_whole(self.path, json.dumps({**self.run.state, "logged": self.logged}, indent=1))

    def log_round(self, series: str, record: dict) -> None:
        if not self.trackers or "round" not in record:
            return
        with self.lock:
            done = self.logged.setdefault(series, [])
            if record["round"] in done:
                return
            scalars = round_scalars(record)
            for tracker in self.trackers:
                tracker.log_scalars(series, scalars, record["round"])
            done.append(record["round"])
            self._save()

    def log_results(self, table, markdown: str, plots: dict[str, Path]) -> None:
        with self.lock:
            for tracker in self.trackers:
                tracker.log_results(table, markdown, plots)

    def close(self) -> None:
        with self.lock:
            while self.trackers:
                self.trackers.pop().close()
