"""fedsafe from Python (a notebook, a script): run an experiment, or open a finished run folder, and get its
results with the table as a pandas DataFrame. The ``fedsafe`` command (``fedsafe.cli``) runs through here.

    import fedsafe

    res = fedsafe.run("configs/smoke.yaml", overrides={"federation.num_rounds": 2})
    res.table                      # one row per arm: means, 95% intervals, paired tests (a DataFrame)
    res.claims                     # the paper's four claims with verdicts, per safety judge
    res.run_dir, res.report        # the run folder and its report.html
    fedsafe.load("runs/smoke-20261201-101500").table

In a session joined to a Ray cluster (``ray.init(address=...)`` first, or ``cluster.address=auto``) the run
uses that cluster and leaves it up; a Ray the run started itself is stopped when it ends.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fedsafe.config import ConfigError, ExperimentConfig, from_yaml_text, load_config, to_yaml

ConfigLike = str | Path | Mapping | ExperimentConfig
Overrides = Mapping[str, object] | Sequence[str] | None


def override_list(overrides: Overrides) -> list[str]:
    """Dotted overrides as the command line takes them: ``["a.b=1"]`` as it is, ``{"a.b": 1}`` as
    ``["a.b=1"]`` (values written as JSON, which YAML reads back unchanged). Pure."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings or a dict, got the string {overrides!r}")
    return list(overrides)


def resolve_config(config: ConfigLike | None, overrides: Overrides = None) -> ExperimentConfig:
    """The config from a YAML file's path, a nested dict (as the YAML would hold), or a config object, with
    ``overrides`` applied; None: the defaults."""
    items = override_list(overrides)
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, items)
    if isinstance(config, ExperimentConfig):
        return from_yaml_text(to_yaml(config), items)
    if isinstance(config, Mapping):
        return from_yaml_text(yaml.safe_dump(dict(config)), items)
    raise ConfigError(f"config must be a YAML path, a dict or an ExperimentConfig, got {type(config).__name__}")


@dataclass
class Results:
    """A run's results (``results.json``) with its folder. ``table``: one row per arm (``results_frame``)."""

    run_dir: Path
    data: dict = field(repr=False)

    @property
    def table(self):
        from fedsafe.analysis import results_frame

        return results_frame(self.data)

    @property
    def claims(self) -> dict[str, list[dict]]:
        return self.data.get("analysis", {}).get("claims", {})

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    def _repr_html_(self) -> str:  # a notebook shows the table
        return f"<p>fedsafe run {self.run_dir}</p>" + self.table._repr_html_()


def load(run_dir: str | Path) -> Results:
    """The results of a finished run folder."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no results.json: not a finished fedsafe run folder "
                          "(a run still going has report.html; `fedsafe report` rebuilds one that stopped)")
    return Results(Path(run_dir), json.loads(path.read_text()))


def ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def shutdown_ray(ray_was_up: bool) -> None:
    """Stop the Ray this call started (its local Ray's processes with it), unless it was up before."""
    if not ray_was_up and ray_initialized():
        sys.modules["ray"].shutdown()


def discard_if_empty(run_dirs: list[Path]) -> None:
    """A run folder that holds nothing but what ``create_run_dir`` wrote is removed."""
    from fedsafe.run_dir import holds_results

    for run_dir in run_dirs:
        if run_dir.is_dir() and not holds_results(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)


def execute(cfg: ExperimentConfig, started: list[Path], resume: Path | None = None) -> dict:
    """Check the inputs, then run ``cfg`` in a new run folder (or continue ``resume``'s); the folder is
    appended to ``started`` as soon as there is one. A builtin model not built yet is built after the other
    checks, and the checks that read it run then. Returns the results (with ``table``, the Markdown table)."""
    from fedsafe.matrix import run_experiment
    from fedsafe.models.builtin import resolve_model_path
    from fedsafe.preflight import check_inputs, model_config_file
    from fedsafe.run_dir import create_run_dir, single_writer

    check_inputs(cfg)
    if model_config_file("model.name", cfg.model.name, cfg.model.cache_dir) is None:
        resolve_model_path(cfg.model)
        check_inputs(cfg)
    if resume is not None:
        started.append(resume)
        return run_experiment(cfg, resume)
    run_dir = create_run_dir(cfg)
    started.append(run_dir)
    print(f"run folder: {run_dir}")
    with single_writer(run_dir):
        return run_experiment(cfg, run_dir)


def run(config: ConfigLike | None = None, overrides: Overrides = None) -> Results:
    """Run an experiment: ``config`` a YAML path, a dict or an ``ExperimentConfig`` (None: the defaults),
    ``overrides`` dotted keys (``{"federation.num_rounds": 2}`` or ``["federation.num_rounds=2"]``). Bad input
    raises ``ConfigError`` before anything starts; a run that fails leaves no empty run folder."""
    cfg = resolve_config(config, overrides)
    ray_was_up = ray_initialized()
    started: list[Path] = []
    try:
        results = execute(cfg, started)
    except BaseException:
        discard_if_empty(started)
        raise
    finally:
        shutdown_ray(ray_was_up)
    results.pop("table", None)
    return Results(started[0], results)
