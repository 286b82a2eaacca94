"""Renderers: pure functions of (field, rays)."""

from neurecon.render.common import RenderOutput
from neurecon.render.nerf import NeRFRenderer
from neurecon.render.neus import NeuSRenderer

__all__ = ["NeRFRenderer", "NeuSRenderer", "RenderOutput"]
