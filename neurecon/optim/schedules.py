"""Learning-rate schedules: the ``optimizer.schedule`` node.

The node is a ``_partial_`` class that takes the optimizer and is a torch scheduler, stepped
once per training step (lightning-hydra-template's ``scheduler`` node). The built-in ones
(:class:`WarmupCosine`, :class:`WarmupExp`, :class:`WarmupConstant`) are a linear warm-up
followed by a decay to ``final_ratio`` of the base rate at
``max_steps``, which the optimizer factory passes (``trainer.max_steps``) unless the node sets
it. Any ``torch.optim.lr_scheduler`` class works the same way:
``optimizer.schedule._target_=torch.optim.lr_scheduler.StepLR ~optimizer.schedule.warmup_steps
~optimizer.schedule.final_ratio +optimizer.schedule.step_size=5000``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from neurecon.errors import ConfigError


def warmup(step: int, warmup_steps: int) -> float | None:
    """The linear warm-up's multiplier at ``step`` ((step + 1) / warmup_steps), or None after
    it."""
    return (step + 1) / warmup_steps if warmup_steps > 0 and step < warmup_steps else None


def progress(step: int, max_steps: int, warmup_steps: int) -> float:
    """Where ``step`` is between the end of the warm-up (0) and ``max_steps`` (1)."""
    return min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))


def cosine_factor(step: int, max_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr: warm-up, then half a cosine from 1 to ``final_ratio``."""
    w = warmup(step, warmup_steps)
    if w is not None:
        return w
    t = progress(step, max_steps, warmup_steps)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def exp_factor(step: int, max_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr: warm-up, then an exponential decay to ``final_ratio``."""
    w = warmup(step, warmup_steps)
    return w if w is not None else final_ratio ** progress(step, max_steps, warmup_steps)


def constant_factor(step: int, max_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr: warm-up, then 1."""
    w = warmup(step, warmup_steps)
    return 1.0 if w is None else w


class _WarmupDecay(LambdaLR):
    """A LambdaLR whose multiplier is ``factor(step, max_steps, warmup_steps, final_ratio)``."""

    factor = staticmethod(cosine_factor)

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_steps: int,
        warmup_steps: int = 0,
        final_ratio: float = 0.05,
    ) -> None:
        if not 0 < final_ratio <= 1 or warmup_steps < 0 or max_steps < 1:
            raise ConfigError(
                "optimizer.schedule: need 0 < final_ratio <= 1, warmup_steps >= 0 and "
                f"max_steps >= 1, got {final_ratio}, {warmup_steps}, {max_steps}"
            )
        fn = partial(self.factor, max_steps=max_steps, warmup_steps=warmup_steps,
                     final_ratio=final_ratio)  # fmt: skip
        super().__init__(optimizer, fn)


class WarmupCosine(_WarmupDecay):
    """Linear warm-up over ``warmup_steps``, then half a cosine to ``final_ratio`` of the base
    lr at ``max_steps`` (NeuS)."""

    factor = staticmethod(cosine_factor)


class WarmupExp(_WarmupDecay):
    """Linear warm-up over ``warmup_steps``, then an exponential decay to ``final_ratio`` at
    ``max_steps`` (instant-nsr-pl, nerfacc)."""

    factor = staticmethod(exp_factor)


class WarmupConstant(_WarmupDecay):
    """Linear warm-up over ``warmup_steps``, then the base lr (``final_ratio`` unused)."""

    factor = staticmethod(constant_factor)
