"""Optimizers with parameter groups, and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from neurecon.errors import ConfigError

_DECAYS = ("cosine", "exp", "none")


def lr_factor(
    step: int, max_steps: int, warmup_steps: int, decay: str, final_ratio: float
) -> float:
    """Multiplier of the base lr: linear warm-up, then cosine / exponential decay to
    ``final_ratio`` at ``max_steps`` (or constant for ``none``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if decay == "cosine":
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if decay == "exp":
        return final_ratio**progress
    return 1.0


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
        warmup_steps, decay (cosine | exp | none), final_ratio: the schedule.
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
        warmup_steps: int = 0,
        decay: str = "cosine",
        final_ratio: float = 0.05,
        lr_variance_auto: Sequence[float] = (1e-2, 1e-3),
    ) -> None:
        if optimizer_class is not None and not callable(optimizer_class):
            raise ConfigError("optimizer.optimizer_class must be a _target_ node (_partial_: true)")
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
        if decay not in _DECAYS:
            raise ConfigError(f"optimizer.decay={decay!r}; choose from {list(_DECAYS)}")
        if not 0 < final_ratio <= 1 or warmup_steps < 0:
            raise ConfigError("optimizer: need 0 < final_ratio <= 1 and warmup_steps >= 0")
        self.optimizer_class, self.lr = optimizer_class or torch.optim.Adam, lr
        self.lr_variance, self.lr_encoder = lr_variance, lr_encoder
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.warmup_steps, self.decay, self.final_ratio = warmup_steps, decay, final_ratio

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

    def build(
        self, model: nn.Module, max_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
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
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: lr_factor(s, max_steps, self.warmup_steps, self.decay, self.final_ratio),
        )
        return opt, sched
