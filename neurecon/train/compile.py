"""``trainer.compile``: ``torch.compile`` of the field (inductor: C++ on CPU, Triton on CUDA)."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def compile_field(field: nn.Module) -> bool:
    """Compile ``field`` in place (``nn.Module.compile``: parameter names and checkpoints stay
    as they are) and return True; or say in one line why not and return False.

    An SDF field with ``gradient=analytic`` differentiates its own spatial gradient (the eikonal
    term), a double backward that compiled graphs do not support; finite differences compile.
    Shapes are marked dynamic: the ray batch changes size every step."""
    if getattr(field, "gradient", None) == "analytic":
        log.warning(
            "trainer.compile: field.gradient=analytic needs a double backward, which "
            "torch.compile cannot compile; training uncompiled (field.gradient=finite_difference "
            "compiles)"
        )
        return False
    field.compile(dynamic=True)
    return True
