"""Training losses. Each returns a scalar tensor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

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
        raise ConfigError(f"trainer.loss.color_type={kind!r}; choose from {list(COLOR_LOSSES)}")
    if reduction not in COLOR_REDUCTIONS:
        raise ConfigError(
            f"trainer.loss.color_reduction={reduction!r}; choose from {list(COLOR_REDUCTIONS)}"
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


@dataclass
class LossWeights:
    """``trainer.loss``: weights of the colour, eikonal and mask terms, and the colour loss.
    A typed config node (:mod:`neurecon.schema`): Hydra itself rejects unknown keys."""

    color: float = 1.0
    eikonal: float = 0.1
    mask: float = 0.1
    color_type: str = "l1"
    color_reduction: str = "mean"  # mean | sum over the 3 channels (NeuS: sum; see color_loss)

    def __post_init__(self) -> None:
        if self.color_type not in COLOR_LOSSES:
            raise ConfigError(
                f"trainer.loss.color_type={self.color_type!r}; choose from {list(COLOR_LOSSES)}"
            )
        if self.color_reduction not in COLOR_REDUCTIONS:
            raise ConfigError(
                f"trainer.loss.color_reduction={self.color_reduction!r}; choose from "
                f"{list(COLOR_REDUCTIONS)}"
            )

    @classmethod
    def from_mapping(cls, loss: Mapping[str, Any] | None) -> LossWeights:
        """From a ``trainer.loss`` node (or a plain dict, for Python callers)."""
        known = {f.name for f in fields(cls)}
        unknown = set(loss or {}) - known
        if unknown:  # reached only from Python: composed configs fail in Hydra first
            raise ConfigError(
                f"trainer.loss: unknown key(s) {sorted(unknown)}; known {sorted(known)}"
            )
        return cls(**dict(loss or {}))


def total_loss(out: Any, rgb: Tensor, mask: Tensor | None, w: LossWeights):
    """The weighted sum of the loss terms of a render ``out`` against colours ``rgb`` (B, 3)
    and, when given, the object mask (B,). Returns (total, {name: term})."""
    terms = {"color": color_loss(out.color, rgb, w.color_type, mask, w.color_reduction)}
    if out.eikonal is not None and w.eikonal > 0:
        terms["eikonal"] = out.eikonal
    if mask is not None and w.mask > 0:
        terms["mask"] = mask_loss(out.opacity, mask)
    total = sum(getattr(w, k) * v for k, v in terms.items())
    return total, terms
