"""Running as a SLURM job (``hydra/launcher=submitit_slurm``, or any ``sbatch``).

Three things change when ``SLURM_JOB_ID`` is set:

- **Time limit.** The job adds a ``callbacks.deadline`` node
  (:class:`~neurecon.train.callbacks.DeadlineCallback`): with ``trainer.max_time`` unset,
  training stops a margin before the job's end (:func:`deadline_margin`), so the trial
  validates, meshes and writes its metrics with status ``time_limit`` instead of being killed.
  submitit's warning signal (``USR2``, ``hydra.launcher.signal_delay_s`` before the end) moves
  the deadline to now.
- **Requeue.** A job that SLURM requeued (``SLURM_RESTART_COUNT`` > 0: preemption,
  ``scontrol requeue``, a node failure) continues from the run folder's newest checkpoint: its
  ``trainer.resume=never`` becomes ``auto``. The run-folder lock keeps one writer.
- **Threads.** PyTorch uses the job's CPUs (``SLURM_CPUS_PER_TASK``), not every core of a
  node it shares with other jobs.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The signal submitit asks SLURM to send before the time limit (``--signal=USR2@delay``).
WARNING_SIGNAL = signal.SIGUSR2

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+(?::\d+){0,2})$")


def parse_slurm_duration(text: str) -> float | None:
    """Seconds in a SLURM duration as ``squeue -o %L`` prints it: ``[D-]H:MM:SS`` or ``M:SS``
    (also ``D-HH[:MM]``); ``None`` for ``UNLIMITED``, ``NOT_SET``, ``INVALID`` and the like."""
    m = _DURATION.match(text.strip())
    if not m:
        return None
    parts = [int(p) for p in m.group(2).split(":")]
    if m.group(1) is not None:  # after "D-" the fields are hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return float(int(m.group(1) or 0) * 86400 + secs)


def deadline_margin(time_left_s: float) -> float:
    """Seconds kept back from a job's remaining time for the process to end (squeue's rounding
    to whole seconds, writing logs, Python exiting): 2 % of it, at least 10 s. The evaluation's
    own time is reserved by the trainer, timed on the field
    (:class:`~neurecon.eval.budget.EvalReserve`)."""
    return max(10.0, 0.02 * time_left_s)


@dataclass(frozen=True)
class SlurmJob:
    """What a run needs to know of the SLURM job it runs in."""

    job_id: str
    restart_count: int = 0
    cpus_per_task: int | None = None
    time_left_s: float | None = None  # None: no limit, or squeue could not tell

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlurmJob | None:
        """The current job, or None outside SLURM. Asks ``squeue`` for the time left."""
        env = os.environ if env is None else env
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
        cpus = env.get("SLURM_CPUS_PER_TASK")
        return cls(
            job_id=job_id,
            restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
            cpus_per_task=int(cpus) if cpus and cpus.isdigit() else None,
            time_left_s=_squeue_time_left(job_id),
        )

    def deadline_node(self, trainer_cfg: Mapping[str, Any], now: float) -> dict[str, Any]:
        """The ``callbacks.deadline`` node this job adds: a margin before its end when
        ``trainer.max_time`` is unset and the limit is known, else never (the warning signal
        can still move it to now)."""
        at = math.inf
        if trainer_cfg.get("max_time") is None and self.time_left_s is not None:
            margin = deadline_margin(self.time_left_s)
            at = now + max(self.time_left_s - margin, 1.0)
            log.info(
                "SLURM job %s: %.0f s left; the run ends %.0f s before the job, training "
                "early enough to evaluate (trainer.max_time is unset)",
                self.job_id,
                self.time_left_s,
                margin,
            )
        return {"_target_": "neurecon.train.callbacks.DeadlineCallback", "at": at}

    def trainer_overrides(self, trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """``Trainer`` arguments this job changes (``resume``), logged."""
        out: dict[str, Any] = {}
        if self.restart_count > 0 and trainer_cfg.get("resume", "never") == "never":
            out["resume"] = "auto"
            log.info(
                "SLURM job %s was requeued (restart %d): resuming from the newest checkpoint",
                self.job_id,
                self.restart_count,
            )
        return out


def _squeue_time_left(job_id: str) -> float | None:
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        res = subprocess.run(
            [exe, "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = res.stdout.strip() if res.returncode == 0 else ""
    left = parse_slurm_duration(text)
    if left is None and text not in ("UNLIMITED", "INFINITE", "NOT_SET"):  # no limit: say nothing
        log.warning("SLURM job %s: could not read its time left from squeue (%r)", job_id, text)
    return left


@contextmanager
def deadline_on_signal(signum: int = WARNING_SIGNAL) -> Iterator[Callable[[Any], None]]:
    """Catch ``signum`` for the duration; yields ``attach(deadline)``. The signal sets the
    attached :class:`~neurecon.train.callbacks.DeadlineCallback`'s ``at`` to now (the loop then
    stops at the end of its step and the run finishes cleanly); one caught before ``attach``
    applies when the callback is attached. The previous handler returns afterwards. A no-op
    off the main thread."""
    box: dict[str, Any] = {"deadline": None, "at": None}

    def attach(deadline: Any) -> None:
        box["deadline"] = deadline
        if box["at"] is not None:
            deadline.at = box["at"]

    def handler(signum: int, frame: Any) -> None:
        box["at"] = time.time()
        log.warning("%s received: the job's time is nearly up", signal.Signals(signum).name)
        if box["deadline"] is not None:
            box["deadline"].at = box["at"]

    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        yield attach
        return
    try:
        yield attach
    finally:
        signal.signal(signum, previous)
