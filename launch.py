"""Run a fedsafe experiment.

    python launch.py --config configs/smoke.yaml                  # embedded local Ray, tiny model
    python launch.py --config configs/smoke.yaml federation.num_rounds=5 aggregation.rule=fedavg
    python launch.py --config configs/smoke.yaml --dry-run        # resolved config and plan, starts nothing
    python launch.py --config configs/paper_gpu.yaml --dry-run --nodes 4x96:8   # plan for 4 nodes of 96 CPUs, 8 GPUs
    python launch.py --config configs/paper_gpu.yaml --rehearse   # the whole GPU pipeline on this CPU, in minutes
    python launch.py --resume runs/smoke-20261122-101500          # continue from the last complete round
    RAY_ADDRESS=auto python launch.py --config ...                # join a running cluster (or cluster.address=auto)
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from fedsafe.config import ConfigError, from_yaml_text, load_config, to_yaml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (defaults: fedsafe/config.py)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last complete round")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and plan, start nothing")
    p.add_argument("--nodes", metavar="SPEC", help="with --dry-run: plan for these nodes instead of this machine, "
                   "COUNTxCPUS:GPUS separated by commas, e.g. 1x16:0,4x96:8")
    p.add_argument("--rehearse", action="store_true", help="run the config's whole pipeline on this CPU in minutes: "
                   "small models of the same families, local copies of hub data, a few rounds and prompts "
                   "(prints every replacement)")
    p.add_argument("--seeds", type=int, metavar="N", help="run every arm with N seeds: seed, seed+1, ... "
                   "(replaces the config's seeds)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of configuration errors")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    args = p.parse_args(argv)
    if args.resume and args.config:
        p.error("--resume reads the run's own config.yaml; pass either --config or --resume, not both")
    if args.rehearse and args.resume:
        p.error("--resume continues a rehearsal with its own config.yaml; leave out --rehearse")
    return args


def parse_nodes(spec: str) -> list[dict[str, float]]:
    """``"1x16:0,4x96:8"`` -> one node of 16 CPUs and four of 96 CPUs with 8 GPUs each."""
    nodes = []
    for part in spec.split(","):
        count, _, sizes = part.strip().rpartition("x")
        cpus, _, gpus = sizes.partition(":")
        try:
            nodes += [{"CPU": float(cpus), "GPU": float(gpus or 0)}] * int(count or 1)
        except ValueError:
            raise ConfigError(f"--nodes {spec!r}: {part!r} is not COUNTxCPUS:GPUS (e.g. 4x96:8)") from None
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


def load(args: argparse.Namespace):
    """The run's config: the file and overrides, or a run folder's own config (checked) for --resume."""
    from fedsafe.run_dir import resume_config

    if args.nodes and not args.dry_run:
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


def dry_run(cfg, args: argparse.Namespace, nodes: list[dict[str, float]] | None) -> None:
    from fedsafe.cluster import runtime
    from fedsafe.cluster.plan import generation_reserve, make_plan
    from fedsafe.matrix import describe_arms, planned_federations, planning_arms

    address = runtime.target_address(cfg.cluster)
    arms = planning_arms(cfg)
    federations = planned_federations(cfg, arms)
    print(to_yaml(cfg))
    if nodes:
        print(f"plan for {args.nodes}:\n" + make_plan(cfg, nodes, federations).describe())
    elif address:
        print(f"plan: resources are read from the cluster at {address} when the run starts "
              "(--nodes plans for a cluster you describe)")
    else:
        local = runtime.local_resources(cfg.cluster, generation_reserve(cfg)[0])
        print("plan (local Ray):\n" + make_plan(cfg, local, federations).describe())
    print(describe_arms(cfg, arms))


def run(cfg, args: argparse.Namespace, started: list[Path]) -> dict:
    """Check the inputs, then run; the run folder (new, or --resume's) is appended to ``started``. A builtin
    model not built yet is built after the other checks, and the checks that read it run then."""
    from fedsafe.matrix import run_experiment
    from fedsafe.models.builtin import resolve_model_path
    from fedsafe.preflight import check_inputs, model_config_file
    from fedsafe.run_dir import create_run_dir, single_writer

    check_inputs(cfg)
    if model_config_file("model.name", cfg.model.name, cfg.model.cache_dir) is None:
        resolve_model_path(cfg.model)
        check_inputs(cfg)
    if args.resume:
        run_dir = Path(args.resume)
        started.append(run_dir)
        return run_experiment(cfg, run_dir)
    run_dir = create_run_dir(cfg)
    started.append(run_dir)
    print(f"run folder: {run_dir}")
    with single_writer(run_dir):
        return run_experiment(cfg, run_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started: list[Path] = []  # the run folder, once there is one
    ray_was_up = ray_initialized()  # a caller's Ray (tests, a notebook) is left running
    previous = {}
    if threading.current_thread() is threading.main_thread():  # Ctrl-C and SIGTERM stop the run with one line,
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupted),  # also where a shell
                    signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}  # ignored SIGINT
    try:
        if args.resume and not args.dry_run:
            from fedsafe.run_dir import single_writer

            if not (Path(args.resume) / "config.yaml").is_file():
                raise ConfigError(f"{args.resume} holds no config.yaml; --resume needs a run folder made by launch.py")
            with single_writer(Path(args.resume)):  # read and checked by its one writer
                cfg = load(args)
                results = run(cfg, args, started)
        else:
            cfg = load(args)
            if args.dry_run:
                from fedsafe.preflight import check_inputs

                nodes = parse_nodes(args.nodes) if args.nodes else None
                for note in check_inputs(cfg, plan_only=True, nodes=nodes):
                    print("note: " + note, file=sys.stderr)
                dry_run(cfg, args, nodes)
                return 0
            results = run(cfg, args, started)
    except KeyboardInterrupt:
        shutdown_ray(ray_was_up)  # first: Ray's log monitor prints workers' last lines until it stops
        name = SIGNALS.pop() if SIGNALS else "SIGINT"
        where = f"; continue with: python launch.py --resume {started[0]}" if started else ""
        print(f"\nstopped by {name}{' in ' + str(started[0]) if started else ' before the run started'}, at the last "
              f"completed round{where}", file=sys.stderr)
        return 128 + signal.Signals[name].value
    except Exception as err:  # every failure ends with one line; --debug shows the traceback
        if args.debug:
            raise
        shutdown_ray(ray_was_up)
        hint = "" if isinstance(err, ConfigError) else " (python launch.py ... --debug shows the traceback)"
        print("error: " + one_line(err) + hint, file=sys.stderr)
        if not args.resume:
            discard_if_empty(started)
        return 2
    finally:
        shutdown_ray(ray_was_up)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(results["table"])
    print(f"wall time {results['wall_s']:.1f} s; results in {started[0] / 'results.json'}")
    return 0


def ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def shutdown_ray(ray_was_up: bool) -> None:
    """Stop the Ray this call started (its local Ray's processes with it), unless it was up before."""
    if not ray_was_up and ray_initialized():
        sys.modules["ray"].shutdown()


def discard_if_empty(started: list[Path]) -> None:
    """A run folder this invocation made that holds nothing but what ``create_run_dir`` wrote is removed."""
    from fedsafe.run_dir import holds_results

    for run_dir in started:
        if run_dir.is_dir() and not holds_results(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
