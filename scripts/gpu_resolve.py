"""What a fresh CUDA node gets from `pip install -e ".[gpu,dev,trackers]"`: pip's own resolution for Linux
x86_64 and a Python version, without installing anything (`pip install --dry-run --report`), and whether the
set works together (bitsandbytes there; torch and transformers within vLLM's pins and the project's;
deepspeed and peft there). Needs PyPI; tests/test_install.py runs it, docs/gpu.md lists its output.

    .venv/bin/python scripts/gpu_resolve.py              # Python 3.10 and 3.11
    .venv/bin/python scripts/gpu_resolve.py 3.12

pip resolves for another platform only from wheels; deepspeed ships no wheel (its sdist is built on the
node), so its own requirements (PyPI's metadata of the newest release the project allows) stand in for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("gpu", "dev", "trackers")
SDIST_ONLY = ("deepspeed",)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "linux_x86_64"]
SHOWN = ("vllm", "torch", "transformers", "peft", "deepspeed", "bitsandbytes", "ray", "flashinfer-python",
         "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "accelerate", "datasets")


def project_requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for e in EXTRAS for r in meta["optional-dependencies"][e]]
    return [Requirement(r) for r in reqs]


def pypi_release(name: str, spec: SpecifierSet) -> tuple[str, list[str]]:
    """The newest release of ``name`` and its requirements (PyPI's JSON API), which pip would take where
    ``spec`` allows it."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
        info = json.load(r)["info"]
    if Version(info["version"]) not in spec:
        raise RuntimeError(f"{name}'s newest release {info['version']} is outside the project's {spec}")
    return info["version"], [q for q in info["requires_dist"] or [] if "extra ==" not in q]


def resolve(python: str) -> dict:
    """pip's resolution for ``python`` (e.g. "3.11"): {"python", "versions": name -> version, "requires":
    name -> requirements, "sdist": name -> version of the sdist-only packages}."""
    reqs, sdist, extra = [], {}, []
    for r in project_requirements():
        if canonicalize_name(r.name) in SDIST_ONLY:
            version, requires = pypi_release(r.name, r.specifier)
            sdist[canonicalize_name(r.name)] = (version, requires)
            extra += requires
        else:
            reqs.append(str(r))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--target",
               str(Path(tmp) / "never"), "--report", str(report), "--python-version", python, "--implementation",
               "cp", "--only-binary=:all:", *[a for p in PLATFORMS for a in ("--platform", p)], *reqs, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            lines = [x for x in out.stderr.splitlines() if x.strip() and not x.startswith("WARNING")]
            raise RuntimeError(f"pip could not resolve the GPU install for Python {python}: " + " | ".join(lines[-3:]))
        installed = json.loads(report.read_text())["install"]
    versions = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installed}
    requires = {canonicalize_name(i["metadata"]["name"]): i["metadata"].get("requires_dist") or [] for i in installed}
    for name, (version, requires_dist) in sdist.items():
        versions[name], requires[name] = version, requires_dist
    return {"python": python, "versions": versions, "requires": requires}


def problems(found: dict) -> list[str]:
    """What is wrong with a resolved set: a package missing, or one whose version another's requirement (or
    the project's) does not allow."""
    versions, out = found["versions"], []
    for name in ("bitsandbytes", "torch", "transformers", "peft", "deepspeed", "vllm", "ray"):
        if name not in versions:
            out.append(f"{name} is not in the set")
    wants = [(req, "fedsafe") for req in project_requirements()]
    for owner in ("vllm", "deepspeed", "peft", "bitsandbytes"):
        wants += [(Requirement(r), owner) for r in found["requires"].get(owner, []) if "extra ==" not in r]
    for req, owner in wants:
        name = canonicalize_name(req.name)
        if name in versions and (req.marker is None or req.marker.evaluate({"python_version": found["python"],
                                                                             "sys_platform": "linux",
                                                                             "platform_machine": "x86_64",
                                                                             "extra": ""})):
            if req.specifier and Version(versions[name]) not in req.specifier:
                out.append(f"{name} {versions[name]} is outside {owner}'s {req}")
    return out


def cuda_of(versions: dict[str, str]) -> str | None:
    """The CUDA major version the resolved torch is built for, from its runtime package's version."""
    for name in ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12"):
        if name in versions:
            return versions[name].split(".")[0]
    return None


def main(pythons: list[str]) -> int:
    with ThreadPoolExecutor(len(pythons)) as pool:
        results = list(pool.map(resolve, pythons))
    status = 0
    for found in results:
        shown = ", ".join(f"{n} {found['versions'][n]}" for n in SHOWN if n in found["versions"])
        cuda = cuda_of(found["versions"])
        print(f"Python {found['python']}: {shown}; torch built for CUDA {cuda or '?'}")
        for p in problems(found):
            print(f"  problem: {p}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["3.10", "3.11"]))
