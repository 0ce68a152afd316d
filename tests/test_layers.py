"""The package's shape: import-linter's layer contracts (pyproject.toml) hold, no import cycle exists, and
every pointer into the method document lands on one of its headings; nothing refers to files outside
the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# files a person who clones fedsafe does not have (spelled in pieces so that this file names none of them)
OUTSIDE = ["PAPER" + ".md", "STYLE" + " habit", "STYLE" + ".md", "../" + "shared"]
SOURCES = ["fedsafe", "launch.py", "configs", "tests", "docs", "README.md", "benchmarks", "scripts", "deploy"]


def source_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = ROOT / name
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_import_cycle_counting_every_import():
    """TYPE_CHECKING imports and imports inside functions count: a circle through either is still a circle."""
    import grimp

    graph = grimp.build_graph("fedsafe", exclude_type_checking_imports=False)
    cycles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if graph.chain_exists(importer=b, imported=a)})
    assert cycles == []


# what loading a config may import besides the components' config modules: the errors, the shared low-level
# types, the YAML reader and the packages (each package's __init__ loads its components lazily)
PLAIN_DATA = {"fedsafe.config", "fedsafe.errors", "fedsafe.specs", "fedsafe.yamlfile", "fedsafe.aggregation",
              "fedsafe.attack", "fedsafe.data", "fedsafe.defense", "fedsafe.metrics", "fedsafe.training"}


def test_loading_a_config_imports_no_torch():
    """Configs are data: loading one (all of configs/) imports neither torch nor any component; the components
    are built and probed by the preflight."""
    code = ("import sys; from pathlib import Path; from fedsafe.config import load_config\n"
            "[load_config(p) for p in sorted(Path('configs').glob('*.yaml'))]\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('fedsafe.', 'ray', 'vllm'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = ast.literal_eval(out.stdout.split("\n")[0])
    assert "torch" not in loaded
    assert [m for m in loaded if not m.endswith(".config") and m not in PLAIN_DATA] == []
    assert {"fedsafe.attack.config", "fedsafe.defense.config", "fedsafe.aggregation.config"} <= set(loaded)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())))
    return anchors


def test_method_references_resolve_and_nothing_points_outside_the_repository():
    anchors = heading_anchors((ROOT / "docs" / "method.md").read_text())
    assert {"threat-model", "maliciousgen-and-defensegen", "defense-levels", "metrics"} <= anchors
    cited, outside = set(), []
    for path in source_files():
        text = path.read_text(errors="ignore")
        cited |= {(path.name, a) for a in re.findall(r"docs/method\.md#([\w-]+)", text)}
        cited |= {(path.name, a) for a in re.findall(r"\]\(#([\w-]+)\)", text) if path.name == "method.md"}
        outside += [f"{path.relative_to(ROOT)}: {name}" for name in OUTSIDE if name in text]
    assert len(cited) > 20
    assert sorted(a for a in cited if a[1] not in anchors) == []
    assert outside == []
