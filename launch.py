"""Run a fedsafe experiment.

    python launch.py --config configs/smoke.yaml                  # embedded local Ray, tiny model
    python launch.py --config configs/smoke.yaml federation.num_rounds=5 aggregation.rule=fedavg
    python launch.py --config configs/smoke.yaml --dry-run        # resolved config and plan, starts nothing
    python launch.py --config configs/paper_gpu.yaml --dry-run --nodes 4x96:8   # plan for 4 nodes of 96 CPUs, 8 GPUs
    python launch.py --resume runs/smoke-20261122-101500          # continue from the last complete round
    RAY_ADDRESS=auto python launch.py --config ...                # join a running cluster (or cluster.address=auto)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsafe.config import ConfigError, from_yaml_text, load_config, to_yaml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (defaults: fedsafe/config.py)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last complete round")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and plan, start nothing")
    p.add_argument("--nodes", metavar="SPEC", help="with --dry-run: plan for these nodes instead of this machine, "
                   "COUNTxCPUS:GPUS separated by commas, e.g. 1x16:0,4x96:8")
    p.add_argument("--seeds", type=int, metavar="N", help="run every arm with N seeds: seed, seed+1, ... "
                   "(replaces the config's seeds)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of configuration errors")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    args = p.parse_args(argv)
    if args.resume and args.config:
        p.error("--resume reads the run's own config.yaml; pass either --config or --resume, not both")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            saved = run_dir / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"{saved} does not exist; --resume needs a run folder made by launch.py")
            cfg = from_yaml_text(saved.read_text(), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError(f"--seeds must be >= 1 (the number of seeds to run), got {args.seeds}")
            cfg = from_yaml_text(to_yaml(cfg), [f"seeds={list(range(cfg.seed, cfg.seed + args.seeds))}"])
        from fedsafe.cluster import runtime
        from fedsafe.cluster.plan import generation_reserve, make_plan

        if args.dry_run:
            address = runtime.target_address(cfg.cluster)
            print(to_yaml(cfg))
            if args.nodes:
                print(f"plan for {args.nodes}:\n" + make_plan(cfg, parse_nodes(args.nodes)).describe())
            elif address:
                print(f"plan: resources are read from the cluster at {address} when the run starts "
                      "(--nodes plans for a cluster you describe)")
            else:
                local = runtime.local_resources(cfg.cluster, generation_reserve(cfg)[0])
                print("plan (local Ray):\n" + make_plan(cfg, local).describe())
            from fedsafe.matrix import describe_arms

            print(describe_arms(cfg))
            return 0
        from fedsafe.matrix import run_experiment
        from fedsafe.preflight import check_inputs
        from fedsafe.run_dir import create_run_dir

        check_inputs(cfg)
        run_dir = Path(args.resume) if args.resume else create_run_dir(cfg)
        print(f"run folder: {run_dir}")
        results = run_experiment(cfg, run_dir)
    except ConfigError as err:
        if args.debug:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message
        return 2
    print(results["table"])
    print(f"wall time {results['wall_s']:.1f} s; results in {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
