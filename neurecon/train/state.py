"""Everything a training run is, at one step: the only thing checkpoints and guard snapshots
touch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurecon.train.checkpoint import (
    load_checkpoint,
    prune_checkpoints,
    restoring,
    save_checkpoint,
)

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Field, renderer, optimizer, schedule, loss scaler, RNGs, step and clock of a run.

    ``elapsed0`` is the training time of earlier sessions (a resumed run); :attr:`elapsed`
    adds this session's, so time budgets and timings count across resumes.
    ``rays`` is the dynamic batch's current ray count; ``guard`` the NaN guard, whose counters
    are saved with the state.
    """

    field: nn.Module
    renderer: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None = None
    guard: Any = None
    step: int = 0
    rays: int = 0
    elapsed0: float = 0.0
    t0: float = field(default_factory=time.time)

    @property
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions included."""
        return self.elapsed0 + time.time() - self.t0

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Everything to resume from; ``step`` overrides the step recorded (a guard snapshot
        taken before this step's update is the previous step's state)."""
        state = {
            "step": self.step if step is None else step,
            "field": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "rays": self.generator.get_state()},
            "guard": {"skipped": self.guard.skipped, "rollbacks": self.guard.rollbacks},
            "elapsed_s": self.elapsed,
            "batch_rays": self.rays,
            "renderer": self.renderer.state_dict(),  # e.g. the occupancy grid; may be empty
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any], rng: bool = True) -> None:
        """Restore from a checkpoint (``rng``: also the random streams) or a guard snapshot."""
        self.field.load_state_dict(state["field"])
        if state.get("renderer"):  # empty without a grid; absent from older checkpoints
            self.renderer.load_state_dict(state["renderer"])
        self.rays = int(state.get("batch_rays", self.rays))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if rng:
            torch.set_rng_state(state["rng"]["torch"].cpu())
            try:
                self.generator.set_state(state["rng"]["rays"].cpu())
            except (RuntimeError, ValueError):  # saved by a generator of another device
                log.warning(
                    "the checkpoint's ray generator is for another device than %s: rays are "
                    "drawn afresh (the run is not bit-identical to an uninterrupted one)",
                    self.generator.device,
                )
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([t.cpu() for t in state["rng"]["cuda"]])
        self.step = int(state["step"])

    def save(self, folder: str | Path, keep: int) -> Path:
        """``folder/step_XXXXXXX.ckpt`` (atomic); keeps the newest ``keep``."""
        path = save_checkpoint(Path(folder) / f"step_{self.step:07d}.ckpt", self.state_dict())
        prune_checkpoints(Path(folder), max(1, keep))
        return path

    def restore(self, path: str | Path, device: torch.device) -> None:
        """Continue from a checkpoint file (weights-only loading), clock and guard included."""
        state = load_checkpoint(path, device)
        with restoring(path):
            self.load_state_dict(state)
            self.elapsed0, self.t0 = float(state.get("elapsed_s", 0.0)), time.time()
            self.guard.skipped = int(state["guard"]["skipped"])
            self.guard.rollbacks = int(state["guard"]["rollbacks"])
