"""Training losses. Each returns a scalar tensor."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from neurecon.errors import ConfigError

COLOR_LOSSES = ("l1", "huber", "mse")


def color_loss(
    pred: Tensor, target: Tensor, kind: str = "l1", mask: Tensor | None = None
) -> Tensor:
    """Photometric loss over rays (B, 3); with ``mask`` (B,), only foreground rays count."""
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=0.1)
    elif kind == "mse":
        err = (pred - target) ** 2
    else:
        raise ConfigError(f"trainer.loss.color_type={kind!r}; choose from {list(COLOR_LOSSES)}")
    if mask is None:
        return err.mean()
    return (err * mask[:, None]).sum() / (3 * mask.sum()).clamp_min(1.0)


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy between accumulated opacity (B,) and the object mask (B,)."""
    return F.binary_cross_entropy(opacity.clamp(1e-3, 1 - 1e-3), mask)
