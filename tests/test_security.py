"""Security habits that a change could quietly break: nothing is unpickled, remote code stays off unless
asked, checkpoints refuse what is not safetensors, the run folder says what it holds, and the dashboard
(with Ray's job server) listens on 127.0.0.1 only."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys

import pytest

from fedsafe.checkpoint import ADAPTER_FILE, load_checkpoint, save_checkpoint
from fedsafe.config import ExperimentConfig
from fedsafe.training.lora import AdapterSpec
from tests.conftest import ROOT

UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("torch", "load"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("joblib", "load"), ("dill", "load"), ("dill", "loads")}


def package_sources() -> list:
    return sorted((ROOT / "fedsafe").rglob("*.py")) + [ROOT / "launch.py"]


def calls(path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def test_the_package_never_unpickles_and_never_turns_remote_code_on():
    found = []
    for path in package_sources():
        for call in calls(path):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in UNPICKLERS:
                found.append(f"{path.name}:{call.lineno} {f.value.id}.{f.attr}")
            if isinstance(f, ast.Attribute) and f.attr == "load" and any(
                    k.arg == "allow_pickle" and getattr(k.value, "value", False) is True for k in call.keywords):
                found.append(f"{path.name}:{call.lineno} load(allow_pickle=True)")
            for k in call.keywords:
                if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True:
                    found.append(f"{path.name}:{call.lineno} trust_remote_code=True")
    assert not found
    assert ExperimentConfig().model.trust_remote_code is False


class WritesAMarker:
    """A pickle that, when loaded, writes a file: what a hostile 'checkpoint' would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_dressed_as_a_checkpoint_is_refused_not_run(tmp_path):
    spec = AdapterSpec(names=("m.lora_A.weight",), shapes=((2, 2),))
    import torch

    folder = save_checkpoint(tmp_path, 0, torch.zeros(4), spec, {"r": 2}, keep=2)
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".safetensors", ".safetensors"]
    marker = tmp_path / "pwned"
    (folder / ADAPTER_FILE).write_bytes(pickle.dumps(WritesAMarker(str(marker))))
    with pytest.raises(Exception):
        load_checkpoint(folder)
    assert not marker.exists()


def test_the_run_folder_says_what_it_holds_and_is_ignored_by_git(tmp_path):
    from fedsafe.config import load_config
    from fedsafe.run_dir import create_run_dir

    run_dir = create_run_dir(load_config(overrides=[f"output.root={tmp_path}"]))
    readme = (run_dir / "README.md").read_text()
    assert "harmful" in readme and "never commit" in readme
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()


LISTENERS = """
import json, psutil, ray
from fedsafe.cluster import runtime
from fedsafe.config import ClusterConfig

runtime.connect(ClusterConfig(num_cpus=1, dashboard=True))
port = int(ray._private.worker._global_node.webui_url.rsplit(":", 1)[1])
me = psutil.Process()
pids = {p.pid for p in [me, *me.children(recursive=True)]}
print(json.dumps({"port": port, "listening": [[c.laddr.ip, c.laddr.port] for c in psutil.net_connections("inet")
                                               if c.status == "LISTEN" and c.pid in pids]}))
ray.shutdown()
"""


@pytest.mark.integration
def test_the_dashboard_and_job_server_listen_on_loopback_only():
    out = subprocess.run([sys.executable, "-c", LISTENERS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    on_port = [ip for ip, port in seen["listening"] if port == seen["port"]]
    assert on_port == ["127.0.0.1"]


# --- a run folder is written only through its own regular files, whole --------------------------------------

def test_a_full_disk_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import errno
    import os

    from fedsafe.files import write_whole

    target = tmp_path / "results.json"
    write_whole(target, '{"old": true}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_whole(target, '{"new": true}' * 1000)
    assert target.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("link", ["report.md", "plots", "plots/safety_by_arm.png", ".writer.json", "results.json",
                                  "arms/fedavg-0/evaluation"])
def test_fedsafe_report_refuses_a_link_in_the_run_folder_and_writes_nothing_through_it(tmp_path, capsys, link):
    import shutil

    from fedsafe.cli import main
    from tests.test_cli import finished_run

    run = finished_run(tmp_path / "run", {"fedavg": [[1, 0, 1]], "median": [[1, 1, 1]]})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    (run / "plots").mkdir()
    source = run / link
    if source.is_dir():
        shutil.rmtree(source)
    source.unlink(missing_ok=True)
    source.symlink_to(outside / "victim" if "." in source.name else outside)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()}
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{source} is a symbolic link" in err and "Traceback" not in err, err
    assert (outside / "victim").read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()} == before


def test_adapter_folders_of_replicas_that_are_gone_are_removed(tmp_path, monkeypatch):
    """A replica killed without closing leaves its adapters in the temp folder; the next one on the machine
    removes them, and never a living replica's."""
    import os
    import tempfile

    import psutil

    from fedsafe.actors.generator import ADAPTERS_PREFIX, remove_orphan_adapters

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = max(psutil.pids()) + 100_000
    gone, alive, other = (tmp_path / f"{ADAPTERS_PREFIX}{dead}-x1", tmp_path / f"{ADAPTERS_PREFIX}{os.getpid()}-x2",
                          tmp_path / "unrelated-123-x")
    for folder in (gone, alive, other):
        (folder / "k").mkdir(parents=True)
    remove_orphan_adapters()
    assert not gone.exists() and alive.exists() and other.exists()
