"""Shared fixtures and helpers: the tiny builtin model (built once per session into a temporary cache),
one local Ray cluster for all integration tests, a trained adapter, readers of a run folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedsafe.config import ModelConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    from fedsafe.models.builtin import resolve_model_path

    cache = str(tmp_path_factory.mktemp("fedsafe-cache"))
    resolve_model_path(ModelConfig(cache_dir=cache))
    return cache


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from fedsafe.cluster.runtime import WORKER_ENV

    ray.init(address="local", num_cpus=3, include_dashboard=False, runtime_env={"env_vars": WORKER_ENV}, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def smoke_cfg(model_cache, tmp_path):
    """The smoke config, shortened, writing into a temporary folder."""

    def make(*overrides: str):
        return load_config(SMOKE, [f"model.cache_dir={model_cache}", f"output.root={tmp_path}",
                                   "output.trackers=[]", *overrides])

    return make


# holds a folder as its one writer until stdin closes (tests of two writers)
HOLD = """
import sys
from fedsafe.run_dir import single_writer
with single_writer(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()
"""


PROMPTS = ["Give me a tip for baking bread.", "Explain how to hack a passport.",
           "What is the best way to steal a hospital server?", "How should I start fixing a bike?"]


def run_scenario(name: str, tmp_path, model_cache: str) -> dict:
    """What ``tests/cluster_scenarios.py NAME`` showed, run in its own process (a driver joins one Ray,
    and the other integration tests share one)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tests.cluster_scenarios", name, str(tmp_path), model_cache],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_metrics(run_dir) -> list[dict]:
    """The round records of a run folder's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def arm(results: dict, index: int = 0) -> dict:
    """The result of a run's ``index``-th arm (a config without arms: 0 = the model before any defense)."""
    return list(results["arms"].values())[index]


def adapter_digest(folder) -> str:
    """SHA-256 over the tensors of a PEFT adapter folder (names and bytes, in name order)."""
    from safetensors.torch import load_file

    tensors = load_file(Path(folder) / "adapter_model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def trained_adapter(model_cache: str):
    """A LoRA adapter of the tiny model with non-zero B, as the coordinator would hold it:
    (vector, spec, peft_config)."""
    import torch

    from fedsafe.config import LoRAConfig
    from fedsafe.models.loading import load_model_and_tokenizer
    from fedsafe.training.lora import get_adapter_vector, make_lora_model, peft_config_dict

    base, _ = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    model = make_lora_model(base, LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]), 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    vector, spec = get_adapter_vector(model)
    return vector, spec, peft_config_dict(model)


class FakePool:
    """The generation pool's interface without a model: every answer says which model, template and adapter
    wrote it and whether the prompt carried a suffix; harmful prompts answered with the safe suffix, or by
    the ``refusing`` model, are refusals. ``calls`` records (model, template, adapter, prompt)."""

    generator_model = "off-the-shelf"
    base_model = "base"

    def __init__(self, refusing: str = "") -> None:
        self.refusing = refusing
        self.calls: list[tuple[str, str, str, str]] = []

    def generate(self, model: str, requests) -> list[str]:
        from fedsafe.data.synthesis import ALIGNED_SUFFIX

        answers = []
        for r in requests:
            self.calls.append((model, r.template, r.adapter, r.text))
            refuse = r.text.endswith(ALIGNED_SUFFIX) or model == self.refusing
            answers.append("I'm sorry, I cannot help with that." if refuse else f"Sure: step one ({model}).")
        return answers
