"""Run a fedsafe experiment: ``python launch.py ARGS`` is ``fedsafe run ARGS`` (``fedsafe.cli``).

    python launch.py --config configs/smoke.yaml                  # embedded local Ray, tiny model
    python launch.py --config configs/smoke.yaml federation.num_rounds=5 aggregation.rule=fedavg
    python launch.py --config configs/smoke.yaml --dry-run        # resolved config and plan, starts nothing
    python launch.py --resume runs/smoke-20261122-101500          # continue from the last complete round
    python launch.py --help                                       # every option, with examples
"""

from __future__ import annotations

import sys

from fedsafe.cli import main as cli_main
from fedsafe.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, command=run_command, prog="python launch.py")


if __name__ == "__main__":
    sys.exit(main())
