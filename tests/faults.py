"""Fault injection for the robustness tests, as a training callback (no test-only keys in
``conf/``). Faults are indexed by loop *iteration*: iterations keep counting after a rollback,
so a fault fires once.

In Python: ``trainer.fit(..., callbacks=[FaultInjection(nan_loss_at=[10])])``. From the
command line, with this folder on PYTHONPATH:
``+callbacks.faults._target_=faults.FaultInjection``
``+callbacks.faults.nan_loss_from=15``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from neurecon.train.callbacks import Callback


class FaultInjection(Callback):
    """NaN loss at iterations ``nan_loss_at`` (or from ``nan_loss_from`` on), NaN gradient at
    ``nan_grad_at``, a NaN parameter after the optimizer step at ``nan_param_at`` (reported,
    as a callback that detects one does) or at ``silent_nan_param_at`` (NeuS's variance, not
    reported: as an update that blows it up)."""

    def __init__(
        self,
        nan_loss_at: Sequence[int] = (),
        nan_loss_from: int | None = None,
        nan_grad_at: Sequence[int] = (),
        nan_param_at: Sequence[int] = (),
        silent_nan_param_at: Sequence[int] = (),
    ) -> None:
        self.loss_at, self.loss_from = set(nan_loss_at), nan_loss_from
        self.grad_at, self.param_at = set(nan_grad_at), set(nan_param_at)
        self.silent_at = set(silent_nan_param_at)
        self.iteration = 0

    def on_loss(self, ctx, loss):
        self.iteration += 1  # once per loop iteration
        from_ = self.loss_from is not None and self.iteration >= int(self.loss_from)
        return loss * float("nan") if self.iteration in self.loss_at or from_ else loss

    def on_after_backward(self, ctx) -> None:
        if self.iteration in self.grad_at:
            next(p for p in ctx.state.field.parameters() if p.grad is not None).grad.fill_(math.nan)

    def on_after_optimizer_step(self, ctx) -> bool:
        if self.iteration in self.silent_at:
            with torch.no_grad():
                ctx.state.field.variance.fill_(math.nan)
        if self.iteration not in self.param_at:
            return False
        with torch.no_grad():
            next(iter(ctx.state.field.parameters())).fill_(math.nan)
        return True
