"""Optimizers with parameter groups (the schedule is :mod:`neurecon.optim.schedules`)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neurecon.errors import ConfigError
from neurecon.optim.schedules import WarmupCosine


def _positive(val: object) -> bool:
    return isinstance(val, int | float) and math.isfinite(val) and val > 0


class OptimizerFactory:
    """Builds the optimizer and its schedule for a field.

    Args:
        optimizer_class: the torch optimizer, a ``_target_`` node with ``_partial_: true``
            (``torch.optim.Adam`` by default); called as ``cls(groups, betas=, eps=,
            weight_decay=)``. No string switch: ``_target_`` is the only registry.
        lr: base learning rate.  lr_variance: NeuS variance (``inv_s``) lr; null → ``lr``;
            ``auto`` → ``lr_variance_auto``'s first value when the run uses masks, else its
            second (resolved by :meth:`resolve`, which :func:`neurecon.build.build` calls).
        lr_variance_auto: (with masks, without): a masked run can sharpen ``inv_s`` fast (the
            mask pins the silhouette); without masks a fast rise freezes the first blob, the
            table and wall included, into the surface (DTU scan65: a shell at 1e-2, the skull
            at 1e-3, NeuS's own lr).
        lr_encoder: lr of the encoder's parameters (hash tables like a higher lr); null → ``lr``.
        schedule: the lr schedule, a ``_target_`` node with ``_partial_: true`` called with the
            optimizer (:mod:`neurecon.optim.schedules`, or any ``torch.optim.lr_scheduler``
            class); None: :class:`~neurecon.optim.schedules.WarmupCosine` without warm-up.
    """

    def __init__(
        self,
        optimizer_class: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float = 5e-4,
        lr_variance: float | str | None = None,
        lr_encoder: float | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
        lr_variance_auto: Sequence[float] = (1e-2, 1e-3),
    ) -> None:
        for key, val in (("optimizer_class", optimizer_class), ("schedule", schedule)):
            if val is not None and not callable(val):
                raise ConfigError(f"optimizer.{key} must be a _target_ node (_partial_: true)")
        try:
            masked_lr, unmasked_lr = lr_variance_auto
        except (TypeError, ValueError):
            raise ConfigError(
                "optimizer.lr_variance_auto must be [with masks, without], "
                f"got {lr_variance_auto!r}"
            ) from None
        lrs = {
            "lr": lr,
            "lr_variance": None if lr_variance == "auto" else lr_variance,
            "lr_encoder": lr_encoder,
            "lr_variance_auto[0]": masked_lr,
            "lr_variance_auto[1]": unmasked_lr,
        }
        for key, val in lrs.items():
            optional = key in ("lr_variance", "lr_encoder")
            if not (val is None and optional) and not _positive(val):
                raise ConfigError(f"optimizer.{key} must be a finite number > 0, got {val!r}")
        self.lr_variance_auto = (float(masked_lr), float(unmasked_lr))
        self.optimizer_class, self.lr = optimizer_class or torch.optim.Adam, lr
        self.lr_variance, self.lr_encoder = lr_variance, lr_encoder
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.schedule = schedule

    def resolve(self, masked: bool) -> None:
        """Settle ``lr_variance=auto`` for a run that trains with masks or without."""
        if self.lr_variance == "auto":
            self.lr_variance = self.lr_variance_auto[0 if masked else 1]

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The field's named parameter groups (``Field.param_groups``) with their lrs."""
        if self.lr_variance == "auto":
            raise ConfigError("optimizer.lr_variance=auto: call resolve(masked) first")
        groups = model.param_groups()
        lrs = {
            "variance": self.lr_variance or self.lr,
            "encoder": self.lr_encoder or self.lr,
            "network": self.lr,
        }
        return [{"name": k, "params": v, "lr": lrs[k]} for k, v in groups.items() if v]

    def build(self, model: nn.Module, max_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer over the field's groups and its schedule (stepped once per training
        step; ``max_steps``, the trainer's, for a schedule that takes it)."""
        cls, kw = self.optimizer_class, {}
        if getattr(cls, "func", cls) in (torch.optim.Adam, torch.optim.AdamW) and "fused" not in (
            getattr(cls, "keywords", None) or {}
        ):
            # One pass per tensor instead of ~10 elementwise ones: on a CPU the for-loop Adam
            # over a 2^19-entry hash table was 15 % of a training step. A `fused` set in the
            # config wins.
            kw["fused"] = True
        opt = cls(
            self.param_groups(model),
            betas=self.betas, eps=self.eps, weight_decay=self.weight_decay, **kw,
        )  # fmt: skip
        if self.schedule is None:
            return opt, WarmupCosine(opt, max_steps)
        # A schedule that asks for max_steps (the built-in ones) gets the trainer's, unless its
        # node names one; a torch scheduler gets the optimizer alone.
        takes = "max_steps" in inspect.signature(self.schedule).parameters
        bound = "max_steps" in (getattr(self.schedule, "keywords", None) or {})
        return opt, self.schedule(
            opt, max_steps=max_steps
        ) if takes and not bound else self.schedule(opt)
