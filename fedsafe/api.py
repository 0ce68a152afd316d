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
from fedsafe.records import RunResults

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
    return Results(Path(run_dir), RunResults.load(path).to_dict())


def ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


class RunLifecycle:
    """One run from its checks to its shutdown, for the command line and the Python API alike::

        with RunLifecycle(cfg) as life:      # or RunLifecycle(cfg, resume=run_dir)
            results = life.execute()
        life.run_dir                          # set as soon as the folder exists, also when the run fails

    ``execute`` checks the inputs, makes the run folder (or takes ``resume``'s), holds its writer lock (the one
    place it is taken for the run folder) and runs every arm. On leaving: a Ray this run started is shut down
    (a caller's Ray, joined with ``ray.init`` before, stays up), and a new run folder that a failure left
    empty is removed; a stopped run's folder is kept when it holds results, so ``--resume`` can continue it."""

    def __init__(self, cfg: ExperimentConfig, resume: Path | None = None) -> None:
        self.cfg = cfg
        self.resume = Path(resume) if resume is not None else None
        self.run_dir: Path | None = self.resume
        self._ray_was_up = False

    def __enter__(self) -> RunLifecycle:
        self._ray_was_up = ray_initialized()
        return self

    def execute(self) -> dict:
        """Check the inputs, then run the config in a new run folder (or continue ``resume``'s); returns the
        results (with ``table``, the Markdown table)."""
        from fedsafe.files import refuse_links_under
        from fedsafe.matrix import run_experiment
        from fedsafe.run_dir import create_run_dir, single_writer

        if self.resume is not None:
            refuse_links_under(self.resume)  # before its writer record is written
            with single_writer(self.resume):  # read and checked by its one writer
                self._check()
                return run_experiment(self.cfg, self.resume)
        self._check()
        self.run_dir = create_run_dir(self.cfg)
        print(f"run folder: {self.run_dir}")
        with single_writer(self.run_dir):
            return run_experiment(self.cfg, self.run_dir)

    def _check(self) -> None:
        """The preflight; a builtin model not built yet is built after the other checks, and the checks that
        read it run then."""
        from fedsafe.models.builtin import resolve_model_path
        from fedsafe.preflight import check_inputs, model_config_file

        check_inputs(self.cfg)
        if model_config_file("model.name", self.cfg.model.name, self.cfg.model.cache_dir) is None:
            resolve_model_path(self.cfg.model)
            check_inputs(self.cfg)

    def shutdown(self) -> None:
        """Stop the Ray this run started (its local Ray's processes with it), unless it was up before."""
        if not self._ray_was_up and ray_initialized():
            sys.modules["ray"].shutdown()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.shutdown()  # first: Ray's log monitor prints workers' last lines until it stops
        if exc_type is not None and self.resume is None and self.run_dir is not None:
            discard_if_empty(self.run_dir)
        return False


def discard_if_empty(run_dir: Path) -> None:
    """A run folder that holds nothing but what ``create_run_dir`` wrote is removed."""
    from fedsafe.run_dir import holds_results

    if run_dir.is_dir() and not holds_results(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)


def run(config: ConfigLike | None = None, overrides: Overrides = None) -> Results:
    """Run an experiment: ``config`` a YAML path, a dict or an ``ExperimentConfig`` (None: the defaults),
    ``overrides`` dotted keys (``{"federation.num_rounds": 2}`` or ``["federation.num_rounds=2"]``). Bad input
    raises ``ConfigError`` before anything starts; a run that fails leaves no empty run folder."""
    with RunLifecycle(resolve_config(config, overrides)) as life:
        results = life.execute()
    results.pop("table", None)
    return Results(life.run_dir, results)
