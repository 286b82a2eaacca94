"""One writer per run folder.

A live run holds an exclusive ``flock`` on ``RUN/.lock`` and records its PID and host in it.
A second process writing into the same folder (a sweep relaunched by hand, a SLURM requeue
while the old job lingers) finds the lock held and refuses, naming the holder. The kernel
drops a ``flock`` when its process dies, however it dies, so a lock file whose lock is free but
whose record is not empty was left by a killed run: it is taken over with a warning.

Within one process the lock is re-entrant (``train.py`` takes it before Hydra writes the run's
files, and ``Trainer.fit`` takes it again when called on its own).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from neurecon.atomic import writes_inside
from neurecon.errors import NeuReconError

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunFolderLocked(NeuReconError):
    """Another live process writes into this run folder."""


_held: dict[Path, list[Any]] = {}  # folder → [open lock file, depth] (re-entrancy)


_NOT_A_RECORD: dict[str, Any] = {"pid": "?", "host": "?"}


def _record(f) -> dict[str, Any]:
    """The holder's record; :data:`_NOT_A_RECORD` when the file holds anything else."""
    f.seek(0)
    try:
        rec = json.loads(f.read(4097) or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _NOT_A_RECORD
    return rec if isinstance(rec, dict) and set(rec) <= {"pid", "host", "since"} else _NOT_A_RECORD


def _open_lock(path: Path):
    """The lock file, opened without following links and only if it is a lock file: a plain
    file with one name and a lock record (or nothing) in it. A symlink, a hard link to someone's
    file, a folder or a FIFO planted as ``RUN/.lock`` is refused, never truncated."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO must not hang the open
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:  # ELOOP: a symlink; EISDIR, ENXIO, EACCES...
        raise NeuReconError(f"{path}: not a usable lock file ({e.strerror}); refusing") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise NeuReconError(
            f"{path}: not a regular lock file (a link, a device or a hard link); refusing"
        )
    return os.fdopen(fd, "r+")


def acquire(folder: str | Path) -> None:
    """Take the folder's lock or raise :class:`RunFolderLocked` naming the holder."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    f = _open_lock(folder / LOCK_NAME)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        rec = _record(f)
        f.close()
        raise RunFolderLocked(
            f"{folder} is in use by another run (pid {rec.get('pid')} on {rec.get('host')}, "
            f"since {rec.get('since', '?')}); wait for it to finish or stop it first"
        ) from None
    old = _record(f)
    if old is _NOT_A_RECORD:  # someone's own file, not a lock: never truncate it
        f.close()
        raise NeuReconError(
            f"{folder / LOCK_NAME}: holds something other than a lock record; refusing"
        )
    if old.get("pid") not in (None, os.getpid()):
        log.warning(
            "%s: taking over a stale lock left by pid %s on %s (that run was killed)",
            folder,
            old.get("pid"),
            old.get("host"),
        )
    f.seek(0)
    f.truncate()
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
    f.flush()
    _held[folder] = [f, 1]


def release(folder: str | Path) -> None:
    """Drop one hold; the last one empties the record (a clean exit) and unlocks."""
    folder = Path(folder).resolve()
    entry = _held.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    f = entry[0]
    del _held[folder]
    f.seek(0)
    f.truncate()
    f.flush()
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the folder's lock; writes into it must stay inside it meanwhile
    (:func:`neurecon.atomic.writes_inside`)."""
    acquire(folder)
    try:
        with writes_inside(folder):
            yield
    finally:
        release(folder)


class RunLockCallback(Callback):
    """Hydra callback (``hydra.callbacks.run_lock`` in ``conf/config.yaml``): a single run takes
    its folder's lock *before* Hydra writes ``.hydra/`` and ``train.log`` into it, so a refused
    second run leaves the live run's files as they were. Refusal: one line, exit code 2.

    (Sweep trials are locked by ``Trainer.fit``; a locked trial is recorded as failed.)
    """

    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        import sys

        self.folder = Path(str(config.hydra.run.dir))
        try:
            acquire(self.folder)
        except NeuReconError as e:  # locked, or a planted lock file
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if self.folder is not None:
            release(self.folder)
