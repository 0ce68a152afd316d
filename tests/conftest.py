"""Shared fixtures: the tiny builtin model (built once per session into a temporary cache) and one local
Ray cluster for all integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsafe.config import ModelConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    from fedsafe.models.loading import resolve_model_path

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
                                   "output.tensorboard=false", *overrides])

    return make
