"""Shared field outputs and options."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

BACKGROUND_MODES = ("auto", "none", "nerfpp")


@dataclass
class SDFOutput:
    """Per-sample outputs. Shapes: sdf (N,), gradient (N, 3), color (N, 3)."""

    sdf: Tensor
    gradient: Tensor
    color: Tensor


@dataclass
class DensityOutput:
    """Per-sample outputs. Shapes: density (N,), color (N, 3)."""

    density: Tensor
    color: Tensor
