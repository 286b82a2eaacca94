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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from neurecon.errors import NeuReconError

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunFolderLocked(NeuReconError):
    """Another live process writes into this run folder."""


_held: dict[Path, list[Any]] = {}  # folder → [open lock file, depth] (re-entrancy)


def _record(f) -> dict[str, Any]:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?"}


def acquire(folder: str | Path) -> None:
    """Take the folder's lock or raise :class:`RunFolderLocked` naming the holder."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_NAME, "a+")  # noqa: SIM115  (held open for the run's lifetime)
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
    acquire(folder)
    try:
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
        except RunFolderLocked as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if self.folder is not None:
            release(self.folder)
