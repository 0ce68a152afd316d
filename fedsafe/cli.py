"""The ``fedsafe`` command: ``run`` an experiment, rebuild a run folder's ``report``, ``compare`` finished runs,
print the judges' ``calibrate``-ion table. ``python launch.py`` is ``fedsafe run``.

Every failure ends with one line on stderr (``error: ...``) and exit status 2; ``fedsafe run --debug`` shows
the traceback instead. Ctrl-C or SIGTERM stops a run at its last completed round and says how to continue.
"""

from __future__ import annotations

import math
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from fedsafe import __version__
from fedsafe.config import ConfigError, from_yaml_text, load_config, to_yaml
from fedsafe.records import RunResults

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  fedsafe run --config configs/smoke.yaml               # a smoke run on an embedded local Ray
  fedsafe run --config configs/smoke.yaml --dry-run     # the resolved config and plan; starts nothing
  fedsafe report runs/smoke-20261201-101500             # rebuild that run's report.md and report.html
  fedsafe compare runs/a-20261201-101500 runs/b-20261202-091000
  fedsafe calibrate                                     # the safety judges against human labels
Each command's --help shows more.""")
@click.version_option(__version__, prog_name="fedsafe")
def cli() -> None:
    """Federated instruction tuning of LLMs under safety attacks and defenses, on Ray."""


# --- fedsafe run ---------------------------------------------------------------------------------------------

@dataclass
class RunArgs:
    config: str | None
    resume: str | None
    dry_run: bool
    nodes: str | None
    rehearse: bool
    seeds: int | None
    debug: bool
    overrides: list[str]


MAX_NODES = 10_000  # nodes --nodes may describe


def parse_nodes(spec: str) -> list[dict[str, float]]:
    """``"1x16:0,4x96:8:80G"`` -> one node of 16 CPUs and four of 96 CPUs with 8 GPUs of 80 GiB each (the
    GPU memory is optional; with it the plan checks its memory estimates)."""
    nodes = []
    for part in spec.split(","):
        count, _, sizes = part.strip().rpartition("x")
        cpus, _, rest = sizes.partition(":")
        gpus, _, mem = rest.partition(":")
        try:
            node = {"CPU": float(cpus), "GPU": float(gpus or 0)}
            if mem:
                node["gpu_memory_gib"] = float(mem.upper().removesuffix("GIB").removesuffix("GB").removesuffix("G"))
            values = [int(count or 1), *node.values()]
            if not all(math.isfinite(v) and v >= 0 for v in values) or not 1 <= int(count or 1) <= MAX_NODES \
                    or node["CPU"] < 1:
                raise ValueError
            nodes += [node] * int(count or 1)
        except ValueError:
            raise ConfigError(f"--nodes {spec!r}: {part!r} is not COUNTxCPUS:GPUS[:GPU_MEMORY] with 1 to "
                              f"{MAX_NODES} nodes of at least one CPU (e.g. 4x96:8 or 4x96:8:80G)") from None
    return nodes


SIGNALS: list[str] = []  # SIGTERMs received; a KeyboardInterrupt without one is Ctrl-C (SIGINT)


def raise_interrupted(signum, frame) -> None:
    """SIGTERM, handled like Ctrl-C: the run stops where it is and says how to continue (libraries that
    catch a KeyboardInterrupt may raise a new one, so the signal's name is kept here)."""
    SIGNALS.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(SIGNALS[-1])


def one_line(err: BaseException) -> str:
    """An error in one line: a ConfigError's message as it is, any other prefixed with its type."""
    text = " ".join(str(err).split())
    if isinstance(err, ConfigError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


OOM_TITLE = "killed due to the node running low on memory"


def memory_kill(err: BaseException) -> str | None:
    """Ray's memory-monitor kill behind ``err`` (itself, or its cause) in one line: what was killed, on which
    node, how full its memory was, and what to change; None for any other failure."""
    seen = err
    while seen is not None and not (type(seen).__name__ == "OutOfMemoryError" or OOM_TITLE in str(seen)):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    text = " ".join(str(seen).split())
    what = re.search(r"name=([^,)]+)", text)
    node = re.search(r"\(IP: ([^,)]+)", text)
    usage = re.search(r"was running was ([\d.]+GB / [\d.]+GB)", text)
    return (f"Ray's memory monitor killed {what.group(1) if what else 'a worker'}"
            f"{' on ' + node.group(1) if node else ''}: the machine's memory ran short"
            f"{' (' + usage.group(1) + ' in use)' if usage else ''}; free memory (another process may hold it) or "
            "lower cluster.num_trainers, generation.replicas or train.batch_size")


def load_run_config(args: RunArgs):
    """The run's config: the file and overrides, or a run folder's own config (checked) for --resume."""
    from fedsafe.run_dir import resume_config

    if args.nodes is not None and not args.dry_run:
        raise ConfigError("--nodes plans for a cluster you describe and runs nothing; use it with --dry-run (a run "
                          "reads the resources of the cluster it joins)")
    if args.resume:
        cfg = resume_config(Path(args.resume), args.overrides) if not args.dry_run else \
            from_yaml_text((Path(args.resume) / "config.yaml").read_text(), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.seeds is not None:
        if args.resume:
            raise ConfigError("--seeds changes which runs a folder holds; --resume continues the seeds it has")
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1 (the number of seeds to run), got {args.seeds}")
        cfg = from_yaml_text(to_yaml(cfg), [f"seeds={list(range(cfg.seed, cfg.seed + args.seeds))}"])
    if args.rehearse:
        cfg = rehearse(cfg)
    return cfg


def rehearse(cfg):
    """The rehearsal's config (``fedsafe.rehearsal``), its replacements printed, the hub stand-ins written."""
    from fedsafe.data.standins import write_mirror
    from fedsafe.rehearsal import rehearsal_config

    mirror = Path(cfg.output.root) / "rehearsal-hub"
    cfg, changes, hub_sets = rehearsal_config(cfg, mirror)
    print(f"rehearsal: {len(changes)} replacement(s)\n" + "\n".join(f"  {line}" for line in changes))
    for file in write_mirror(mirror, hub_sets):
        print(f"rehearsal: local copy of hub rows in {file}")
    return cfg


def dry_run(cfg, nodes_spec: str | None) -> None:
    """Print the resolved config, the plan (for ``nodes_spec``'s nodes, the cluster to join, or this machine)
    and the arms; starts nothing."""
    from fedsafe.cluster import runtime
    from fedsafe.cluster.plan import generation_reserve, make_plan
    from fedsafe.matrix import describe_arms, planned_federations, planning_arms
    from fedsafe.preflight import check_inputs

    nodes = parse_nodes(nodes_spec) if nodes_spec is not None else None
    notes = check_inputs(cfg, plan_only=True, nodes=nodes)
    address = runtime.target_address(cfg.cluster)
    arms = planning_arms(cfg)
    federations = planned_federations(cfg, arms)
    if nodes is not None:  # planned before anything is printed: a plan that does not fit is one line
        plan = f"plan for {nodes_spec}:\n" + make_plan(cfg, nodes, federations, runtime.model_shapes(cfg)).describe()
    elif address:
        plan = (f"plan: resources are read from the cluster at {address} when the run starts "
                "(--nodes plans for a cluster you describe)")
    else:
        local = runtime.local_resources(cfg.cluster, generation_reserve(cfg)[0])
        plan = "plan (local Ray):\n" + make_plan(cfg, local, federations, runtime.model_shapes(cfg)).describe()
    for note in notes:  # after the plan: a plan that does not fit is the one line
        print("note: " + note, file=sys.stderr)
    print(to_yaml(cfg))
    print(plan)
    print(describe_arms(cfg, arms))


def execute_run(args: RunArgs, prog: str) -> int:
    """``fedsafe run`` (``prog``: how the user called it, for the hints it prints): exit status 0, 2 for bad
    input or a failed run, 128 + the signal's number when stopped."""
    from fedsafe.api import RunLifecycle

    previous = {}
    if threading.current_thread() is threading.main_thread():  # Ctrl-C and SIGTERM stop the run with one line,
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupted),  # also where a shell
                    signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}  # ignored SIGINT
    life = None
    try:
        if args.resume and not args.dry_run and not (Path(args.resume) / "config.yaml").is_file():
            raise ConfigError(f"{args.resume} holds no config.yaml; --resume needs a run folder made by {prog}")
        cfg = load_run_config(args)
        if args.dry_run:
            dry_run(cfg, args.nodes)
            return 0
        with RunLifecycle(cfg, Path(args.resume) if args.resume else None) as life:
            results = life.execute()
    except KeyboardInterrupt:
        name = SIGNALS.pop() if SIGNALS else "SIGINT"
        kept = life is not None and life.run_dir is not None and life.run_dir.is_dir()
        where = f" in {life.run_dir}, at the last completed round; continue with: {prog} --resume {life.run_dir}" \
            if kept else " before the run started"
        print(f"\nstopped by {name}{where}", file=sys.stderr)
        return 128 + signal.Signals[name].value
    except Exception as err:  # every failure ends with one line; --debug shows the traceback
        if args.debug:
            raise
        if (oom := memory_kill(err)) is not None:
            kept = life is not None and life.run_dir is not None and life.run_dir.is_dir()
            print(f"error: {oom}" + (f"; continue with: {prog} --resume {life.run_dir}" if kept else ""),
                  file=sys.stderr)
            return 2
        hint = "" if isinstance(err, ConfigError) else f" ({prog} ... --debug shows the traceback)"
        print("error: " + one_line(err) + hint, file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(results["table"])
    print(f"wall time {results['wall_s']:.1f} s; results in {life.run_dir / 'results.json'}")
    from fedsafe.stats import MIN_SEEDS

    seeds = len(results.get("seeds") or [0])
    if seeds < MIN_SEEDS and args.config:
        print(f"{seeds} seed{'s' * (seeds != 1)}: the claims' verdicts need {MIN_SEEDS} seeds (the run is the unit of "
              f"inference); run them with: {prog} --config {args.config} --seeds {MIN_SEEDS} (arm-seeds already "
              "finished are taken from the cache)")
    return 0


@cli.command("run", context_settings=CONTEXT, short_help="Run an experiment: every arm and seed of a config.", epilog="""\b
Examples:
  fedsafe run --config configs/smoke.yaml                  # embedded local Ray, tiny model
  fedsafe run --config configs/smoke.yaml federation.num_rounds=5 aggregation.rule=median
  fedsafe run --config configs/smoke.yaml output.trackers=[tensorboard,wandb,mlflow] output.wandb.mode=offline
  fedsafe run --config configs/smoke.yaml --dry-run        # resolved config and plan, starts nothing
  fedsafe run --config configs/paper_gpu.yaml --dry-run --nodes 4x96:8:80G   # 4 nodes of 96 CPUs, 8 GPUs of 80 GiB
  fedsafe run --config configs/paper_gpu.yaml --rehearse   # the whole GPU pipeline on this CPU, in minutes
  fedsafe run --resume runs/smoke-20261122-101500          # continue from the last complete round
  RAY_ADDRESS=auto fedsafe run --config ...                # join a running cluster (or cluster.address=auto)
While it runs, RUN_DIR/report.html shows the rounds so far and reloads itself.""")
@click.option("--config", metavar="YAML", help="YAML config file (defaults: fedsafe/config.py)")
@click.option("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last complete round")
@click.option("--dry-run", is_flag=True, help="print the resolved config and plan, start nothing")
@click.option("--nodes", metavar="SPEC", help="with --dry-run: plan for these nodes instead of this machine, "
              "COUNTxCPUS:GPUS[:GPU_MEMORY] separated by commas, e.g. 1x16:0,4x96:8:80G (with the GPUs' memory "
              "the plan checks its memory estimates)")
@click.option("--rehearse", is_flag=True, help="run the config's whole pipeline on this CPU in minutes: small "
              "models of the same families, local copies of hub data, a few rounds and prompts (prints every "
              "replacement)")
@click.option("--seeds", type=int, metavar="N", help="run every arm with N seeds: seed, seed+1, ... (replaces the "
              "config's seeds)")
@click.option("--debug", is_flag=True, help="show tracebacks of errors")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.pass_context
def run_command(ctx: click.Context, config, resume, dry_run, nodes, rehearse, seeds, debug, overrides) -> int:
    """Run an experiment (every arm and seed of its matrix); KEY=VALUE overrides the config's dotted keys."""
    if resume and config:
        raise click.UsageError("--resume reads the run's own config.yaml; pass either --config or --resume, not both")
    if rehearse and resume:
        raise click.UsageError("--resume continues a rehearsal with its own config.yaml; leave out --rehearse")
    args = RunArgs(config, resume, dry_run, nodes, rehearse, seeds, debug, list(overrides))
    return execute_run(args, ctx.command_path)


# --- fedsafe report, compare, calibrate ---------------------------------------------------------------------

class BadInput(click.ClickException):
    exit_code = 2


@contextmanager
def bad_input() -> Iterator[None]:
    """Any failure reading a user's run folders is bad input: one line and exit status 2."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever failed, the user gets one line
        raise BadInput(one_line(err)) from None


def run_folder(path: str) -> Path:
    """A run folder made by ``fedsafe run``, or a ConfigError saying what the path is not."""
    folder = Path(path)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a fedsafe run folder (it holds no config.yaml; `fedsafe run` prints the "
                          "folder it makes, under output.root, runs/ by default)")
    return folder


def finished_results(path: str) -> dict:
    from fedsafe.api import load

    return load(run_folder(path)).data


@cli.command("report", context_settings=CONTEXT, short_help="Rebuild a run folder's report.md and report.html.", epilog="""\b
Examples:
  fedsafe report runs/smoke-20261201-101500    # rewrites report.md, report.html and plots/
  fedsafe report runs/quickstart-20261204-101500 --print provenance,table,paired,claims   # sections as Markdown
  python -m http.server -d runs/smoke-20261201-101500   # then open http://localhost:8000/report.html""")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--print", "print_sections", metavar="SECTIONS",
              help="after rebuilding, print only these sections of the report as Markdown, comma-separated: "
                   "provenance, table, paired, same-model, power, judges, claims, notes, calibration, detection, "
                   "behaviour, lora")
def report_command(run_dir: str, print_sections: str | None) -> None:
    """Rebuild a run folder's report from its files: a finished run's analysis (results.json and the
    per-prompt verdicts it points to), report.md and report.html; for a run that stopped before the end,
    report.html with its rounds so far and the arms it finished."""
    from fedsafe.files import refuse_links_under
    from fedsafe.run_dir import single_writer

    with bad_input():
        folder = run_folder(run_dir)
        names = [n.strip() for n in print_sections.split(",") if n.strip()] if print_sections else None
        if names:
            from fedsafe.report import SECTIONS

            if unknown := [n for n in names if n not in SECTIONS]:
                raise ConfigError(f"--print: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        refuse_links_under(folder)
        with single_writer(folder):  # not while a run writes it (its report.html updates itself)
            write_report_of(folder, names)


def write_report_of(folder: Path, names: list[str] | None = None) -> None:
    from fedsafe.matrix import write_stopped_report
    from fedsafe.report import rebuild, sections

    if (folder / "results.json").is_file():
        table = rebuild(folder)
        if names:
            click.echo(sections(RunResults.load(folder / "results.json").to_dict(), names))
            return
        click.echo(table)
        click.echo(f"report: {folder / 'report.md'}, {folder / 'report.html'}")
    else:
        page = write_stopped_report(from_yaml_text((folder / "config.yaml").read_text()), folder)
        click.echo(f"{folder} has no results.json (the run stopped before its end; `fedsafe run --resume {folder}` "
                   f"continues it): report of its progress in {page}")


@cli.command("compare", context_settings=CONTEXT, short_help="One table of several runs' arms, with paired tests.", epilog="""\b
Examples:
  fedsafe compare runs/paper-20261201-101500 runs/paper-20261203-080000
  fedsafe compare runs/fedavg-* --markdown compare.md""")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--markdown", "out", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="also write the table to FILE")
def compare_command(run_dirs: tuple[str, ...], out: str | None) -> None:
    """One table of the finished runs' arms: each metric's mean over seeds with its 95% interval, and each arm
    of a later run against the first run's arm of the same name by a paired test (exact McNemar over the
    seeds and prompts both share, Holm-corrected per metric)."""
    from fedsafe.analysis import compare_runs
    from fedsafe.report import compare_table

    runs = {}
    with bad_input():
        for path in run_dirs:
            label = Path(path).name if Path(path).name not in runs else path
            if label in runs:
                raise ConfigError(f"{path} is given twice")
            runs[label] = finished_results(path)
        folders = [Path(p).resolve() for p in run_dirs]
        if len(set(folders)) < len(folders):
            raise ConfigError(f"one run folder is given twice ({', '.join(run_dirs)}): a run compared with itself")
        if out:
            target = Path(out).resolve()
            if any(target.is_relative_to(f) for f in folders):
                raise ConfigError(f"--markdown {out} lies inside a run folder being compared; write the table "
                                  "elsewhere (a command never writes over its own inputs)")
            if not target.parent.is_dir():
                raise ConfigError(f"--markdown {out}: the folder {target.parent} does not exist; make it first")
        table = compare_table(compare_runs(runs), next(iter(runs)))
    lines = [f"- {label}: {Path(p)} ({r['name']}, model {r['model']}, {r['rounds']} rounds, seeds {r.get('seeds')})"
             for (label, r), p in zip(runs.items(), run_dirs)]
    text = "Runs:\n" + "\n".join(lines) + "\n\n" + table + "\n"
    click.echo(text, nl=False)
    if out:
        Path(out).write_text(text)


@cli.command("calibrate", context_settings=CONTEXT, short_help="The safety judges against human labels.",
             epilog="""\b
Examples:
  fedsafe calibrate                          # the classifier at the quickstart's answer length (32 tokens)
  fedsafe calibrate --answer-tokens 1024     # at the paper configs' length
  fedsafe calibrate > calibration.md         # keep it beside a paper draft""")
@click.option("--answer-tokens", type=click.IntRange(min=0), default=32, show_default=True,
              help="the evaluation's answer length (evaluation.max_new_tokens): the classifier is fitted and "
                   "cross-validated on the labelled responses cut to it (0: whole responses)")
def calibrate_command(answer_tokens: int) -> None:
    """The safety judges against human labels: accuracy, Cohen's kappa and confusion of the Rule judge (each
    keyword list of evaluation.rule_keywords: fixed, paper, cased) on the labelled refusal and objective sets,
    and the classifier (5-fold cross-validated at the answer length, and on openings written for the check);
    offline, seconds. Every run's report has the same table at its own answer length."""
    from fedsafe.evaluation.evaluate import calibration
    from fedsafe.report import calibration_table

    click.echo(calibration_table({"calibration": calibration("fixed", answer_tokens)}))


# --- entry points --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None, command: click.Command = cli, prog: str = "fedsafe") -> int:
    """Run ``command`` (the ``fedsafe`` group, or one of its commands for launch.py) on ``argv``; returns its
    exit status. A usage error or bad input is one line on stderr and status 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        status = command.main(args, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help())
        return 0
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else prog
        print(f"error: {' '.join(err.format_message().split())} (see {where} --help)", file=sys.stderr)
        return 2
    except click.ClickException as err:
        print(f"error: {' '.join(err.format_message().split())}", file=sys.stderr)
        return err.exit_code
    except click.exceptions.Abort:
        print("\nstopped", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


def entry() -> None:
    """The console script ``fedsafe``."""
    sys.exit(main())
