"""Per-round checkpoints: a PEFT adapter folder plus the server's round and RNG state.

    runs/<name>/checkpoints/round_0003/
        adapter_model.safetensors   # the global LoRA adapter (load with peft.PeftModel.from_pretrained)
        adapter_config.json
        server_state.safetensors    # torch RNG state, server-optimizer state, per-client histories
        state.json                  # {"round": 3, "python_rng": [...], ...}; written last

A checkpoint folder is written under a temporary name and renamed, so a folder that exists is complete.
Nothing here is loaded with pickle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedsafe.training.lora import AdapterSpec, named_to_vector, vector_to_named

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class Checkpoint:
    round_idx: int
    tensors: dict[str, torch.Tensor]  # PEFT adapter state, keys in file order (sorted)
    server_state: dict[str, torch.Tensor]  # "torch_rng" plus the coordinator's own entries
    python_rng: tuple
    folder: Path | None = None

    def vector_for(self, spec: AdapterSpec) -> torch.Tensor:
        """The adapter as a flat vector in ``spec``'s order; raises if names or shapes differ."""
        shapes = {n: tuple(t.shape) for n, t in self.tensors.items()}
        if shapes != dict(zip(spec.names, spec.shapes)):
            raise ValueError("the checkpoint's adapter tensors differ from the model's (names or shapes); "
                             "resume with the run's own config")
        return named_to_vector({n: self.tensors[n] for n in spec.names})[0]


def checkpoint_dir(run_dir: Path, round_idx: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_idx:04d}"


def save_checkpoint(run_dir: Path, round_idx: int, vector: torch.Tensor, spec: AdapterSpec, peft_config: dict,
                    keep: int, server_state: dict[str, torch.Tensor] | None = None) -> Path:
    target = checkpoint_dir(run_dir, round_idx)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter(staging, vector, spec, peft_config)
    state = {k: v.contiguous().cpu() for k, v in (server_state or {}).items()}
    save_file({**state, "torch_rng": torch.get_rng_state()}, staging / "server_state.safetensors")
    version, state, gauss = random.getstate()
    (staging / "state.json").write_text(json.dumps({"round": round_idx, "python_rng": [version, list(state), gauss]}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    _prune(target.parent, keep)
    return target


def save_adapter(folder: Path, vector: torch.Tensor, spec: AdapterSpec, peft_config: dict) -> Path:
    """Write a PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vector_to_named(vector, spec).items()}, folder / ADAPTER_FILE)
    (folder / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
    return folder


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob("round_*") if not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders that were renamed into place (oldest first)."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("round_*")
                  if not p.name.endswith(".tmp") and (p / "state.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = completed_checkpoints(run_dir)
    return done[-1] if done else None


def latest_sound_checkpoint(run_dir: Path, warn: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest checkpoint that loads. A damaged one (a truncated or edited file) is reported through
    ``warn`` and the previous one tried; None when none loads."""
    for folder in reversed(completed_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(folder)
        except Exception as err:  # noqa: BLE001 - safetensors, JSON and OS errors alike mean damaged
            warn(f"checkpoint {folder} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                 "falling back to the one before it")
            continue
        ckpt.folder = folder
        return ckpt
    return None


def load_checkpoint(folder: Path) -> Checkpoint:
    state = json.loads((folder / "state.json").read_text())
    version, internal, gauss = state["python_rng"]
    return Checkpoint(
        round_idx=int(state["round"]), tensors=load_file(folder / ADAPTER_FILE),
        server_state=load_file(folder / "server_state.safetensors"),
        python_rng=(version, tuple(internal), gauss), folder=Path(folder),
    )


def restore_rng(ckpt: Checkpoint) -> None:
    torch.set_rng_state(ckpt.server_state["torch_rng"])
    random.setstate(ckpt.python_rng)
