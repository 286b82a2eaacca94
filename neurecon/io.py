"""Atomic writes: a result file is either the old one or the complete new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename over.
    The file gets ``mode``, else read-write for whom the umask allows."""
    path = Path(path)
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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    def _w(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")

    return atomic_write(path, _w)
