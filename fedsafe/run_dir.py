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


class MetricsLog:
    """Appends one JSON line per event; on resume drops the lines of rounds that did not complete."""

    def __init__(self, run_dir: Path, start_round: int, tensorboard: bool) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("round", -1) < start_round]
            self.path.write_text("".join(line + "\n" for line in kept))
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


def write_responses(run_dir: Path, name: str, prompts: list[str], answers: list[str]) -> Path:
    path = Path(run_dir) / "evaluation" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in zip(prompts, answers)))
    return path


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


METRIC_COLUMNS = ("Rule safety (%)", "LLM-judge safe (%)", "RM score", "over-refusal (%)", "response loss",
                  "helpfulness (1-10)")


def metric_cells(ev: dict) -> str:
    """One model's ``METRIC_COLUMNS`` as Markdown cells; "-" where a metric is off."""
    s, help_ = ev["safety"], ev.get("helpfulness", {})
    return (f"{s['rule']:.2f} | {_fmt(s.get('llm_judge', {}).get('safe'))} | {_fmt(s.get('reward', {}).get('mean'))} | "
            f"{_fmt(ev.get('over_refusal', {}).get('rate'))} | {_fmt(help_.get('response_loss'), 3)} | "
            f"{_fmt(help_.get('judge', {}).get('mean'))}")


def report_table(results: dict) -> str:
    """Markdown table, one row per evaluated model (``results["models"]``)."""
    rows = [f"| model | {' | '.join(METRIC_COLUMNS)} | prompts |", "|---" * (len(METRIC_COLUMNS) + 2) + "|"]
    rows += [f"| {name} | {metric_cells(ev)} | {ev['safety']['num_prompts']} |" for name, ev in results["models"].items()]
    return "\n".join(rows)


def judges_note(results: dict) -> str:
    """Who judged what, from the last evaluated model's record."""
    ev = list(results["models"].values())[-1]
    s, lines = ev["safety"], [f"- Rule: {ev['safety']['judge']}, percent of answers with a refusal keyword "
                               "(PAPER.md §6); higher is safer."]
    if "llm_judge" in s:
        j = s["llm_judge"]
        lines.append(f"- LLM judge: {j['format']} prompt format, judged by `{j['model']}`; share judged exactly "
                     f"'safe' (counts {j['counts']}). A judge far smaller than MD-Judge-7B (such as a 135M model) "
                     "is weak: read this column as a sanity check, not as the paper's figure.")
    if "reward" in s:
        lines.append(f"- RM: mean score of `{s['reward']['model']}` on (prompt, answer).")
    if "over_refusal" in ev:
        lines.append(f"- Over-refusal: percent of {ev['over_refusal']['num_prompts']} held-out benign prompts "
                     "answered with a refusal keyword; lower is better.")
    help_ = ev.get("helpfulness", {})
    if "response_loss" in help_:
        lines.append("- Response loss: mean loss per token of held-out benign reference answers (offline "
                     "helpfulness proxy); lower is better.")
    if "judge" in help_:
        lines.append(f"- Helpfulness: 1-10 MT-Bench single-answer grades by `{help_['judge']['model']}` "
                     f"({help_['judge']['graded']} of {help_['judge']['asked']} parsed).")
    return "\n".join(lines)


def write_results(run_dir: Path, results: dict) -> str:
    """Write results.json and report.md; returns the report's table."""
    (Path(run_dir) / "results.json").write_text(json.dumps(results, indent=2))
    table = report_table(results)
    report = (
        f"# fedsafe report: {results['name']}\n\n"
        f"{results['num_clients']} clients ({results['num_malicious']} malicious), "
        f"{results['clients_per_round']} per round, {results['rounds']} rounds, rule `{results['aggregation']}`, "
        f"defense `{results['defense']}`, model `{results['model']}`. Wall time {results['wall_s']:.1f} s.\n\n"
        f"{table}\n\n{judges_note(results)}\n"
    )
    (Path(run_dir) / "report.md").write_text(report)
    return table
