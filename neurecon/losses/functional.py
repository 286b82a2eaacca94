"""The loss maths as pure functions; each returns a scalar tensor. The terms that weigh them
are in :mod:`neurecon.losses.terms`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neurecon.errors import ConfigError

COLOR_LOSSES = ("l1", "huber", "mse")
# How the per-channel error becomes one number: "mean" over rays and channels (instant-nsr-pl,
# nerfacc, NeRF), or "sum" over the 3 channels, then mean over rays (NeuS's exp_runner:
# l1_loss(color_error, 0, reduction="sum") / mask_sum), which weighs colour 3x against the
# eikonal and mask terms.
COLOR_REDUCTIONS = ("mean", "sum")


def color_loss(
    pred: Tensor,
    target: Tensor,
    kind: str = "l1",
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Photometric loss over rays (B, 3); with ``mask`` (B,), only foreground rays count.
    ``reduction`` (:data:`COLOR_REDUCTIONS`): mean over channels, or their sum (NeuS)."""
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=0.1)
    elif kind == "mse":
        err = (pred - target) ** 2
    else:
        raise ConfigError(f"loss.color.kind={kind!r}; choose from {list(COLOR_LOSSES)}")
    if reduction not in COLOR_REDUCTIONS:
        raise ConfigError(
            f"loss.color.reduction={reduction!r}; choose from {list(COLOR_REDUCTIONS)}"
        )
    n_channels = 1 if reduction == "sum" else err.shape[-1]
    if mask is None:
        return err.sum(-1).mean() if reduction == "sum" else err.mean()
    return (err * mask[:, None]).sum() / (n_channels * mask.sum()).clamp_min(1.0)


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy between accumulated opacity (B,) and the object mask (B,).

    Written out (as ATen computes it) rather than ``F.binary_cross_entropy``, which checks its
    input's range: a NaN opacity raises there on a CPU and is a device-side assert on CUDA,
    where it must be a NaN loss for the NaN guard."""
    o = opacity.clamp(1e-3, 1 - 1e-3)
    return (
        (mask - 1) * torch.log1p(-o).clamp_min(-100) - mask * torch.log(o).clamp_min(-100)
    ).mean()
