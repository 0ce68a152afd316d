"""Checkpoints: a PEFT adapter folder plus round and server state; pruning; interrupted writes ignored."""

from __future__ import annotations

import pytest
import torch

from fedsafe.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fedsafe.training.lora import AdapterSpec


def test_checkpoint_round_trip_and_pruning(tmp_path):
    spec = AdapterSpec(names=("a.lora_A.weight", "a.lora_B.weight"), shapes=((2, 3), (4, 2)))
    for r in range(4):
        save_checkpoint(tmp_path, r, torch.arange(14, dtype=torch.float32) + r, spec, {"r": 2}, keep=2)
    (tmp_path / "checkpoints" / "round_0009.tmp").mkdir()  # an interrupted write is ignored
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "round_0003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round_0002", "round_0003", "round_0009.tmp"]
    ckpt = load_checkpoint(latest)
    assert ckpt.round_idx == 3
    assert torch.equal(ckpt.vector_for(spec), torch.arange(14, dtype=torch.float32) + 3)
    other = AdapterSpec(names=spec.names, shapes=((3, 2), (4, 2)))
    with pytest.raises(ValueError, match="names or shapes"):
        ckpt.vector_for(other)
