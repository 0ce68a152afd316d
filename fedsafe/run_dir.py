"""A run's folder: resolved config, per-round metrics (JSON lines and TensorBoard), results and report.

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.yaml  metrics.jsonl  results.json  report.md  tensorboard/  checkpoints/  evaluation/
        README.md    # says that generated text here is research material that stays out of commits
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedsafe.config import ExperimentConfig, to_yaml

RUN_README = """# fedsafe run folder
Written by fedsafe. What it holds:
- `config.yaml` (the resolved config; API keys are never in it, only the names of their environment
  variables), `metrics.jsonl` (one record per round), `results.json`, `report.md`, `tensorboard/`;
- `checkpoints/` and adapter folders: safetensors + JSON (load with peft.PeftModel.from_pretrained);
- `evaluation/`: model answers to harmful prompts, and generated attack and defense data may sit beside it
  (and in `<output.root>/cache/`).

Those answers and generated data are harmful text kept as research material: keep them inside this
git-ignored folder, share them only as research data, and never commit them.
"""


def create_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output.root) / f"{cfg.output.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = Path(cfg.output.root) / f"{cfg.output.name}-{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "README.md").write_text(RUN_README)
    return run_dir


LOST_RECORD = ("the run stopped after this round was checkpointed and before its record was written; the "
               "round's training and aggregation records are lost")


class MetricsLog:
    """Appends one JSON line per round. On resume at ``start_round`` it drops the lines of rounds that did
    not complete, and a round that was checkpointed but never logged (the driver died in between) gets a
    line saying so (``recovered``), so the log has one line per round."""

    def __init__(self, run_dir: Path, start_round: int, tensorboard: bool) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = {json.loads(line).get("round", -1): line for line in lines if line.strip()}
        kept = {r: line for r, line in kept.items() if r < start_round}
        for r in range(start_round):
            kept.setdefault(r, json.dumps({"round": r, "recovered": LOST_RECORD}))
        if lines or kept:
            self.path.write_text("".join(kept[r] + "\n" for r in sorted(kept)))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict, scalars: dict[str, float] | None = None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and scalars:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, record.get("round", 0))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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
