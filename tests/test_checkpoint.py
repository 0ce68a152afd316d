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


def test_metrics_log_on_resume_drops_unfinished_rounds_and_marks_a_checkpointed_round_it_never_logged(tmp_path):
    import json

    from fedsafe.run_dir import MetricsLog

    log = MetricsLog(tmp_path, 0)
    for r in (0, 2, 3):  # round 1 was checkpointed, then the driver died before logging it; 3 is unfinished
        log.log({"round": r, "seconds": float(r)})
    MetricsLog(tmp_path, 3)  # resume at round 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["seconds"] == 0.0 and rows[2]["seconds"] == 2.0 and "before its record" in rows[1]["recovered"]
    MetricsLog(tmp_path / "fresh", 0)
    assert not (tmp_path / "fresh" / "metrics.jsonl").exists()
