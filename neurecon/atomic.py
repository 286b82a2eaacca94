"""Atomic, durable writes that stay inside the run folder they are meant for.

A result file is either the old one or the complete new one, never half, also across a power
cut (temporary file, fsync, rename, fsync of the folder). While a run folder is being written
(:func:`writes_inside`: training, ``evaluate.py --recompute``, export), a write whose path lies
in that folder must also *resolve* inside it: a ``test/`` or ``export/`` planted as a symlink
in someone's run folder does not redirect our files elsewhere.
"""

from __future__ import annotations

import contextvars
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neurecon.errors import NeuReconError

# The run folders being written in this context (innermost last). A context variable, not an
# argument threaded through every writer, so that no writer can forget the check.
_roots: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("roots", default=())


class OutsideRunFolderError(NeuReconError):
    """A write into a run folder would land outside it (through a link)."""


@contextmanager
def writes_inside(root: str | Path) -> Iterator[None]:
    """Within this block, every :func:`atomic_write` into ``root`` must resolve inside it."""
    token = _roots.set((*_roots.get(), Path(os.path.abspath(root))))
    try:
        yield
    finally:
        _roots.reset(token)


def check_inside(path: str | Path) -> None:
    """Raise :class:`OutsideRunFolderError` when ``path`` lies in a run folder being written
    (lexically) but resolves outside it. Paths elsewhere (a kernel cache) are not affected."""
    lexical = Path(os.path.abspath(path))
    for root in _roots.get():
        if lexical != root and root not in lexical.parents:
            continue
        real_root = root.resolve()
        real = lexical.parent.resolve() / lexical.name
        if real != real_root and real_root not in real.parents:
            raise OutsideRunFolderError(
                f"refusing to write {path}: it resolves to {real}, outside the run folder "
                f"{root} (a link inside it?)"
            )


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (before renaming a whole new folder into
    place, as :mod:`neurecon.data.pack` does)."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over, then
    fsync the folder. The file gets ``mode``, else read-write for whom the umask allows.
    Refused (:func:`check_inside`) before anything is created when it would leave its run
    folder."""
    path = Path(path)
    check_inside(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes 0600; results are for sharing
        os.chmod(tmp_path, 0o666 & ~umask() if mode is None else mode)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    def _w(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")

    return atomic_write(path, _w)
