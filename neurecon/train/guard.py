"""NaN guard: skip bad steps, roll back to the last good state, give up with a clear status."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError, NeuReconError

log = logging.getLogger(__name__)


class TrainingDiverged(NeuReconError):
    """The guard ran out of rollbacks: the run is recorded as ``diverged``."""


@dataclass
class GuardEvent:
    step: int
    cause: str  # loss | grad | param
    action: str  # skip | rollback | stop

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "cause": self.cause, "action": self.action}


@dataclass
class _Snapshot:
    step: int
    state: dict[str, Any]
    lr_scale: float  # lr multiplier already in ``state`` (rollbacks before the snapshot)


@dataclass
class GuardSettings:
    """``trainer.guard``: a typed config node (:mod:`neurecon.schema`), so Hydra itself rejects
    an unknown key or a wrong type."""

    enabled: bool = True
    max_bad_steps: int = 5
    snapshot_every: int = 100
    lr_factor: float = 0.5
    max_rollbacks: int = 3


@dataclass
class NaNGuard(GuardSettings):
    """Watches every step for non-finite loss, gradients or key parameters.

    A bad step is skipped. After ``max_bad_steps`` bad steps in a row the model, optimizer and
    schedule are restored from the last in-memory snapshot (taken every ``snapshot_every`` good
    steps) and every learning rate is multiplied by ``lr_factor``. After ``max_rollbacks``
    rollbacks the run stops with :class:`TrainingDiverged`.
    """

    events: list[GuardEvent] = field(default_factory=list)
    skipped: int = 0
    rollbacks: int = 0
    _bad_in_row: int = 0
    _snap: _Snapshot | None = None

    def __post_init__(self) -> None:
        if self.max_bad_steps < 1 or self.snapshot_every < 1 or self.max_rollbacks < 0:
            raise ConfigError(
                "trainer.guard: need max_bad_steps >= 1, snapshot_every >= 1, max_rollbacks >= 0"
            )
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"trainer.guard.lr_factor must be in (0, 1), got {self.lr_factor}")

    # ---------------------------------------------------------------- checks (cheap)
    @staticmethod
    def grads_bad(model: nn.Module) -> Tensor:
        """() bool on the device: a gradient of ``model`` is non-finite. One reduction per
        tensor, no read-back: a NaN or an inf anywhere makes the sum non-finite (inf - inf is
        NaN). No abs(): a copy of a 2^19-entry hash table's gradient every step."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.bool, device=_device(model))
        return ~torch.isfinite(torch.stack([g.sum() for g in grads]).sum())

    @staticmethod
    def key_params_bad(model: nn.Module) -> Tensor:
        """() bool on the device: a parameter that blows up first (NeuS ``inv_s = exp(10 v)``)
        is non-finite."""
        inv_s = getattr(model, "inv_s", None)
        if inv_s is None:
            return torch.zeros((), dtype=torch.bool, device=_device(model))
        return ~torch.isfinite(inv_s().detach())

    def step_flags(self, loss: Tensor, model: nn.Module) -> list[bool]:
        """[loss, gradients, key parameters] non-finite, read back together: the training
        step's one host synchronisation. The parameters are as the previous update left them
        (this step's update is checked by the next step, or by :meth:`key_params_finite` at
        the end of training and before a checkpoint)."""
        flags = torch.stack(
            [
                ~torch.isfinite(loss.detach()).all(),
                self.grads_bad(model),
                self.key_params_bad(model),
            ]
        )
        return flags.tolist()

    @classmethod
    def key_params_finite(cls, model: nn.Module) -> bool:
        """The key parameters now (a host sync: for the end of training and checkpoints)."""
        return not bool(cls.key_params_bad(model))

    # ---------------------------------------------------------------- state
    @property
    def lr_scale(self) -> float:
        """Cumulative lr multiplier: ``lr_factor ** rollbacks``."""
        return self.lr_factor**self.rollbacks

    def snapshot(self, step: int, state: dict[str, Any]) -> None:
        self._snap = _Snapshot(step, copy.deepcopy(state), self.lr_scale)

    def good_step(self, step: int, state_fn) -> None:
        """Record a good step; snapshot every ``snapshot_every`` steps (``state_fn()`` → state)."""
        self._bad_in_row = 0
        if self.enabled and (self._snap is None or step - self._snap.step >= self.snapshot_every):
            self.snapshot(step, state_fn())

    def bad_step(self, step: int, cause: str) -> _Snapshot | None:
        """Record a bad step. Returns the snapshot to roll back to, or None to just skip."""
        if not self.enabled:
            self.skipped += 1
            return None
        self._bad_in_row += 1
        self.skipped += 1
        if self._bad_in_row < self.max_bad_steps and cause != "param":
            # A non-finite *parameter* cannot be skipped past: roll back at once.
            self._log(GuardEvent(step, cause, "skip"))
            return None
        if self.rollbacks >= self.max_rollbacks or self._snap is None:
            self._log(GuardEvent(step, cause, "stop"))
            raise TrainingDiverged(
                f"training diverged at step {step}: non-finite {cause} after "
                f"{self.rollbacks} rollback(s) with lr x{self.lr_factor} each "
                f"(trainer.guard.max_rollbacks={self.max_rollbacks}); lower optimizer.lr or "
                "check field.variance_init"
            )
        self.rollbacks += 1
        self._bad_in_row = 0
        self._log(GuardEvent(step, cause, "rollback"))
        return self._snap

    def _log(self, ev: GuardEvent) -> None:
        self.events.append(ev)
        if ev.action == "skip":
            log.warning("step %d: non-finite %s, step skipped", ev.step, ev.cause)
        elif ev.action == "rollback":
            log.warning(
                "step %d: non-finite %s for %d steps: rolled back to step %d, lr x%g",
                ev.step,
                ev.cause,
                self.max_bad_steps,
                self._snap.step if self._snap else -1,
                self.lr_factor,
            )
        else:
            log.error("step %d: non-finite %s, no rollbacks left: stopping", ev.step, ev.cause)

    def counters(self) -> dict[str, int]:
        return {
            "guard/skipped_steps": self.skipped,
            "guard/rollbacks": self.rollbacks,
            "guard/events": len(self.events),
        }


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.zeros(())).device


def scale_lr(opt: torch.optim.Optimizer, sched: Any, factor: float) -> None:
    """Multiply every group's lr, including the schedule's base lrs, by ``factor``."""
    for g in opt.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    if hasattr(sched, "base_lrs"):
        sched.base_lrs = [lr * factor for lr in sched.base_lrs]
