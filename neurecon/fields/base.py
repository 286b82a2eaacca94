"""The field interface, shared field outputs and options.

To add a field: a class in ``neurecon/fields/`` that implements :class:`Field`, and a file in
``conf/field/`` whose ``_target_`` names it. Renderers ask only for ``kind`` and the outputs
below; the trainer only for ``stats()``; the optimizer only for ``param_groups()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

BACKGROUND_MODES = ("auto", "none", "nerfpp")


@runtime_checkable
class Field(Protocol):
    """What every field offers (``neus`` and ``nerf`` implement it).

    ``kind``: ``"sdf"`` (forward → :class:`SDFOutput`; ``sdf``/``inv_s`` for NeuS rendering)
    or ``"density"`` (forward → :class:`DensityOutput`).
    ``forward(x (N, 3), d (N, 3))``: per-sample outputs.
    ``geometry(x (N, 3)) → (N,)``: signed, negative inside; the mesh is its zero level set.
    ``param_groups()``: parameters by optimizer group (``network``, ``encoder``, ``variance``).
    ``stats()``: model-specific figures to log (NeuS: ``inv_s``).
    """

    kind: str

    def forward(self, x: Tensor, d: Tensor, create_graph: bool = True): ...

    def geometry(self, x: Tensor) -> Tensor: ...

    def param_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def stats(self) -> dict[str, float]: ...


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group: ``variance`` (NeuS ``inv_s``), ``encoder``, ``network``."""
    groups: dict[str, list[nn.Parameter]] = {"variance": [], "encoder": [], "network": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "variance":
            groups["variance"].append(p)
        elif name.startswith("encoder."):
            groups["encoder"].append(p)
        else:
            groups["network"].append(p)
    return groups


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
