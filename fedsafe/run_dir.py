"""A run's folder: resolved config, per-round metrics (JSON lines), results and report.

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.yaml  config.sha256  metrics.jsonl  results.json  report.md  report.html  checkpoints/  evaluation/
        tensorboard/  wandb/  mlflow.db  mlruns/  trackers.json   # the trackers of output.trackers
        README.md    # says that generated text here is research material that stays out of commits
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from fedsafe.config import ConfigError, ExperimentConfig, from_yaml_text, to_dict, to_yaml
from fedsafe.files import write_whole
from fedsafe.records import RoundRecord

RUN_README = """# fedsafe run folder
Written by fedsafe. What it holds:
- `config.yaml` (the resolved config; API keys are never in it, only the names of their environment
  variables) and `config.sha256` (its digest, which `--resume` checks; `config_changes.jsonl` records what a
  resume changed), `metrics.jsonl` (one record per round), `results.json`, `report.md` and `report.html`
  (rewritten after every round while the run goes), the trackers' files (`tensorboard/`, `wandb/`, `mlflow.db`);
- `checkpoints/` and adapter folders: safetensors + JSON (load with peft.PeftModel.from_pretrained);
- `evaluation/`: model answers to harmful prompts, and generated attack and defense data may sit beside it
  (and in `<output.root>/cache/`).

Those answers and generated data are harmful text kept as research material: keep them inside this
git-ignored folder, share them only as research data, and never commit them.
"""


CONFIG_FILE, DIGEST_FILE, CHANGES_FILE = "config.yaml", "config.sha256", "config_changes.jsonl"
WRITER_LOCK, WRITER_FILE = ".writer.lock", ".writer.json"
# what a resume may change: where and how it runs, how many checkpoints it keeps, and more rounds; anything
# else would make the folder's rounds disagree with its config
RESUME_SAFE = ("cluster.", "output.keep_checkpoints", "output.trackers", "output.wandb", "output.mlflow",
               "generation.replicas", "generation.cpus_per_replica", "federation.num_rounds")


@contextmanager
def timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    """Adds the block's wall time to ``seconds[part]`` (the phases a run records, for its report)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start


def create_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output.root) / f"{cfg.output.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = Path(cfg.output.root) / f"{cfg.output.name}-{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    write_config(run_dir, cfg)
    (run_dir / "README.md").write_text(RUN_README)
    return run_dir


def write_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """``config.yaml`` and its digest (``config.sha256``), which ``resume_config`` checks."""
    text = to_yaml(cfg)
    write_whole(Path(run_dir) / CONFIG_FILE, text)
    write_whole(Path(run_dir) / DIGEST_FILE, _sha256(text) + "\n")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _flat(value, key: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for name, sub in value.items() for k, v in _flat(sub, f"{key}.{name}" if key else name).items()}
    return {key: value}


def resume_config(run_dir: Path, overrides: list[str] = ()) -> ExperimentConfig:
    """The config a run folder resumes with: its ``config.yaml``, once its digest matches the one written at
    start, with ``overrides`` where each is safe (``RESUME_SAFE``; rounds only added). A change is written
    back with its digest and recorded in ``config_changes.jsonl``."""
    run_dir = Path(run_dir)
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{saved} does not exist; --resume needs a run folder made by fedsafe run")
    text = saved.read_text()
    digest = run_dir / DIGEST_FILE
    if not text.strip():
        raise ConfigError(f"{saved} is empty; restore the config the run started with (a run folder's "
                          "config.yaml is written once, at start)")
    if not digest.is_file():
        raise ConfigError(f"{run_dir} has no {DIGEST_FILE}, so its config.yaml cannot be checked against the "
                          "one the run started with; start a new run (or write its sha256 there if you are sure)")
    if digest.read_text().strip() != _sha256(text):
        raise ConfigError(f"{saved} was changed after the run started (its sha256 differs from {DIGEST_FILE}); "
                          "restore it, and give safe changes on the command line, e.g. --resume "
                          f"{run_dir} federation.num_rounds=10")
    cfg = from_yaml_text(text)
    if not overrides:
        return cfg
    changed = from_yaml_text(text, list(overrides))
    before, after = _flat(to_dict(cfg)), _flat(to_dict(changed))
    diff = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    unsafe = [k for k in diff if not k.startswith(RESUME_SAFE)]
    if unsafe:
        raise ConfigError(f"--resume cannot change {', '.join(unsafe)}: the rounds already run used the saved "
                          f"values; a resume may change only {', '.join(RESUME_SAFE)} (start a new run instead)")
    if changed.federation.num_rounds < cfg.federation.num_rounds:
        raise ConfigError(f"--resume may add rounds, not remove them: federation.num_rounds "
                          f"{cfg.federation.num_rounds} -> {changed.federation.num_rounds}")
    if changed.federation.num_rounds > cfg.federation.num_rounds and (run_dir / "results.json").is_file():
        raise ConfigError(f"{run_dir} is finished (it holds results.json): its arms were evaluated after round "
                          f"{cfg.federation.num_rounds}, so more rounds need a new run (fedsafe run --config "
                          f"{saved} federation.num_rounds={changed.federation.num_rounds})")
    if diff:
        write_config(run_dir, changed)
        with (run_dir / CHANGES_FILE).open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": diff}) + "\n")
    return changed


@contextmanager
def single_writer(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s writer lock while the block runs: an OS file lock (it goes with its process, so a
    killed run leaves nothing to clean up), re-entrant within this process. A second process is refused
    with a ``ConfigError`` naming the holder's PID."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / WRITER_LOCK, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _read_json(folder / WRITER_FILE)
        raise ConfigError(f"{folder} is being written by another fedsafe process (PID {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to end or stop "
                          "it, then run again") from None
    if lock.lock_counter == 1:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_whole(folder / WRITER_FILE, json.dumps(owner))
    try:
        yield
    finally:
        if lock.lock_counter == 1:
            (folder / WRITER_FILE).unlink(missing_ok=True)
        lock.release()


def holds_results(run_dir: Path) -> bool:
    """Whether a run folder holds anything beyond what ``create_run_dir``, the writer lock and
    ``record_invocation`` put there."""
    made = {CONFIG_FILE, DIGEST_FILE, "README.md", WRITER_LOCK, WRITER_FILE, INVOCATIONS_FILE}
    return any(p.is_file() and p.name not in made for p in Path(run_dir).rglob("*"))


INVOCATIONS_FILE = "invocations.jsonl"


def code_version() -> dict:
    """The git commit of the fedsafe code that runs, and whether its tracked files differ from it (None where
    it is not a git checkout, e.g. an installed wheel)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "fedsafe")
    return {"commit": commit, "dirty": None if commit is None or dirty is None else bool(dirty)}


def record_invocation(run_dir: Path) -> list[dict]:
    """Append this invocation (time, command line, code version) to the run folder's invocations.jsonl and
    return every one so far: a run continued with --resume has several."""
    import shlex
    import sys

    path = Path(run_dir) / INVOCATIONS_FILE
    line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            **code_version()}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


LOST_RECORD = ("the run stopped after this round was checkpointed and before its record was written; the "
               "round's training and aggregation records are lost")


def parsed_lines(path: Path, lines: list[str]) -> list[tuple[str, dict]]:
    """(line, record) of each JSON object line; a line that does not parse (a write the process did not
    finish, usually the last) is dropped with a message."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            tqdm.write(f"{path}: line {number} is not a whole JSON record (a write cut short); it is dropped")
            continue
        out.append((line, record))
    return out


class MetricsLog:
    """Appends one JSON line per round. On resume at ``start_round`` it drops the lines of rounds that did
    not complete, and a round that was checkpointed but never logged (the driver died in between) gets a
    line saying so (``recovered``), so the log has one line per round."""

    def __init__(self, run_dir: Path, start_round: int) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = {record.get("round", -1): line for line, record in parsed_lines(self.path, lines)}
        kept = {r: line for r, line in kept.items() if r < start_round}
        for r in range(start_round):
            kept.setdefault(r, json.dumps({"round": r, "recovered": LOST_RECORD}))
        if lines or kept:
            self.path.write_text("".join(kept[r] + "\n" for r in sorted(kept)))

    def log(self, record: dict) -> None:
        line = json.dumps(RoundRecord.from_dict(record, f"round record of {self.path}").to_dict())
        with self.path.open("a") as f:
            f.write(line + "\n")


def read_rounds(run_dir: Path) -> list[dict]:
    """The round records of ``run_dir/metrics.jsonl`` (none when it does not exist)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_responses(run_dir: Path, name: str, prompts: list[str], answers: list[str],
                    verdicts: dict[str, list] | None = None) -> Path:
    """``evaluation/<name>.jsonl``: one line per prompt with its answer and each judge's verdict on it."""
    path = Path(run_dir) / "evaluation" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    verdicts = verdicts or {}
    lines = [json.dumps({"prompt": p, "response": a, **{k: v[i] for k, v in verdicts.items()}}) + "\n"
             for i, (p, a) in enumerate(zip(prompts, answers))]
    path.write_text("".join(lines))
    return path


def read_responses(run_dir: Path, name: str) -> list[dict]:
    """The lines ``write_responses`` wrote (empty if there is no such file)."""
    path = Path(run_dir) / "evaluation" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
