"""Loss terms: the training objective is a mapping of named terms, each a ``_target_`` node
under ``loss:`` (``conf/loss/default.yaml``), each with a weight and an optional warm-up.

A new term is one class here (or in your own package) and one YAML node:
``+loss.smooth._target_=my_pkg.SmoothNormals +loss.smooth.weight=0.01``; ``~loss.mask`` drops
one. A term reads what it needs from the render output (:class:`~neurecon.render.RenderOutput`,
its ``extras`` included) and the batch; it returns None where it does not apply (no eikonal
value from a density field, no mask on an unmasked run). A field or renderer can add terms of
its own by defining ``loss_terms() -> dict[str, LossTerm]`` (as instant-nsr-pl sums a model's
``regularizations``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from neurecon.errors import ConfigError
from neurecon.losses.functional import COLOR_LOSSES, COLOR_REDUCTIONS, color_loss, mask_loss


@dataclass
class LossTerm:
    """A weighted term: ``weight × value``. ``warmup_steps`` > 0 ramps the weight linearly from
    0 over the first steps (instant-nsr-pl's scheduled ``lambda_*``).

    Subclasses implement :meth:`value`: out is the render of the batch's B rays, ``rgb`` (B, 3)
    its target colours, ``mask`` (B,) in {0, 1} when training uses masks, else None.
    """

    weight: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"{type(self).__name__}.warmup_steps must be >= 0")

    def weight_at(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.weight * step / self.warmup_steps
        return self.weight

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        raise NotImplementedError


@dataclass
class ColorLoss(LossTerm):
    """The photometric term (:func:`~neurecon.losses.functional.color_loss`); with masks, over
    the foreground rays only. ``kind``: l1 | huber | mse; ``reduction``: mean over the 3
    channels, or their sum (NeuS)."""

    kind: str = "l1"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in COLOR_LOSSES:
            raise ConfigError(f"loss.color.kind={self.kind!r}; choose from {list(COLOR_LOSSES)}")
        if self.reduction not in COLOR_REDUCTIONS:
            raise ConfigError(
                f"loss.color.reduction={self.reduction!r}; choose from {list(COLOR_REDUCTIONS)}"
            )

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor:
        return color_loss(out.color, rgb, self.kind, mask, self.reduction)


@dataclass
class EikonalLoss(LossTerm):
    """``(|∇f| − 1)²`` averaged by the renderer over its samples and random points (SDF fields;
    None for a density field)."""

    weight: float = 0.1

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return out.eikonal


@dataclass
class MaskLoss(LossTerm):
    """Binary cross-entropy of the accumulated opacity against the object mask (masked runs)."""

    weight: float = 0.1

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return None if mask is None else mask_loss(out.opacity, mask)


@dataclass
class FreeSpaceLoss(LossTerm):
    """Space the masks' visual hull carved out of the occupancy grid is empty: the mean of
    ``relu(−f)`` over the renderer's random points that lie there (``extras["free_space"]``;
    None when nothing is carved). Without it an SDF may stay negative outside the hull, where no
    sample lands, and a ray entering the hull already "inside" renders opaque there: the hull's
    boundary becomes a surface and the mesh a shell of it (measured on DTU scan37)."""

    weight: float = 1.0

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return getattr(out, "extras", {}).get("free_space")


def default_terms() -> dict[str, LossTerm]:
    """The terms of ``conf/loss/default.yaml``, for Python callers that give none."""
    return {"color": ColorLoss(), "eikonal": EikonalLoss(), "mask": MaskLoss(weight=0.5),
            "free_space": FreeSpaceLoss()}  # fmt: skip


def total_loss(
    terms: Mapping[str, LossTerm], out: Any, rgb: Tensor, mask: Tensor | None, step: int = 0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum of the terms that apply (weight > 0, a value), in their order.
    Returns (total, {name: unweighted value})."""
    values: dict[str, Tensor] = {}
    total: Any = 0
    for name, term in terms.items():
        w = term.weight_at(step)
        if w <= 0 and term.warmup_steps == 0:
            continue
        v = term.value(out, rgb, mask)
        if v is not None:
            values[name] = v
            total = total + w * v
    if not values:  # nothing applies: a zero without gradient (the step learns nothing)
        total = rgb.new_zeros(())
    return total, values
