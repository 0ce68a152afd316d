"""The GPU install resolves: pip's own resolution of `.[gpu,dev,trackers]` for Linux x86_64 on Python 3.10 and
3.11 (scripts/gpu_resolve.py, `pip install --dry-run --report`, nothing installed) brings bitsandbytes,
deepspeed and peft, and keeps torch and transformers within vLLM's pins and the project's. Needs PyPI, as
CI has; about two minutes, both resolutions side by side."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_resolve  # noqa: E402


@pytest.mark.integration
@pytest.mark.registry
def test_the_gpu_install_resolves_to_a_set_that_works_together():
    with ThreadPoolExecutor(2) as pool:
        found = dict(zip(("3.10", "3.11"), pool.map(gpu_resolve.resolve, ["3.10", "3.11"])))
    for python, result in found.items():
        versions = result["versions"]
        assert gpu_resolve.problems(result) == [], python
        assert {"bitsandbytes", "deepspeed", "peft", "vllm", "torch"} <= set(versions)
        assert gpu_resolve.Version(versions["vllm"]) < gpu_resolve.Version("0.34")  # 0.34.0 cannot install
        assert gpu_resolve.Version(versions["bitsandbytes"]) >= gpu_resolve.Version("0.46.1")
        assert gpu_resolve.cuda_of(versions) is not None


def test_problems_name_what_is_missing_or_outside_a_pin():
    result = {"python": "3.11", "versions": {"vllm": "0.33.0", "torch": "2.13.0", "transformers": "5.19.0",
                                             "peft": "0.21.2", "deepspeed": "0.19.8", "ray": "2.60.0"},
              "requires": {"vllm": ["torch==2.14.0", "transformers>=4.56"]}}
    found = gpu_resolve.problems(result)
    assert "bitsandbytes is not in the set" in found
    assert any(p.startswith("torch 2.13.0 is outside vllm's torch==2.14.0") for p in found)
    assert not any(p.startswith("transformers") for p in found)
