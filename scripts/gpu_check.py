"""After a GPU set-up: which CUDA build of torch was installed, the NVIDIA driver it needs, the driver this
machine has, and whether torch sees the GPUs (called by scripts/setup.sh; exit 1 where it does not).

    .venv/bin/python scripts/gpu_check.py
"""

from __future__ import annotations

import subprocess
import sys

# the oldest driver branch each CUDA major release runs on (NVIDIA's CUDA toolkit release notes)
DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}


def needed_driver(cuda: str | None) -> int | None:
    """The oldest NVIDIA driver branch a torch build for CUDA ``cuda`` ("13.0") needs, if known."""
    if not cuda:
        return None
    return DRIVER_FOR_CUDA.get(int(cuda.split(".")[0]))


def installed_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def main() -> int:
    import torch

    need, have = needed_driver(torch.version.cuda), installed_driver()
    print(f"torch {torch.__version__} built for CUDA {torch.version.cuda}: needs NVIDIA driver R{need} or newer; "
          f"this machine has {have or 'no driver nvidia-smi can read'}")
    if not torch.cuda.is_available():
        print("torch sees no GPU here: install a driver of that branch, or a torch built for this machine's CUDA",
              file=sys.stderr)
        return 1
    print(f"torch sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
