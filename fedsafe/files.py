"""Writing inside a run folder: whole files only, never through a link. ``write_whole`` writes a temporary
file beside the target, flushes it to disk and renames it over the target, so a full disk, a kill or a power
cut leaves the old file as it was; a symbolic link where fedsafe would write (the file, or a folder between
it and the run folder) is refused with one line, so a shared run folder cannot point a write elsewhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedsafe.errors import ConfigError


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; fedsafe writes a run folder only through its own files and "
                          "folders: remove the link (or copy what it points to in its place)")


def refuse_links(path: Path, root: Path | None = None) -> None:
    """Raise ``ConfigError`` if ``path``, or a folder between ``root`` (default: its parent) and it, is a link."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    for part in [path, *path.parents]:
        _refuse_link(part)
        if part == root or part == part.parent:
            return


def refuse_links_under(folder: Path) -> None:
    """Raise ``ConfigError`` naming the first symbolic link in ``folder`` (or ``folder`` itself being one):
    fedsafe makes none in a run folder, so one there was put by someone else and may point a write elsewhere.
    The walk visits every entry once (it does not follow links), so each is checked alone."""
    folder = Path(folder)
    _refuse_link(folder)
    for parent, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            _refuse_link(Path(parent) / name)


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (the old file stays until the new one is complete); a
    link at ``path`` or its folder is refused (``refuse_links``)."""
    path = Path(path)
    refuse_links(path)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
