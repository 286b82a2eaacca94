"""Renderers: pure functions of (field, rays)."""

from neurecon.render.common import RenderOutput
from neurecon.render.nerf import NeRFRenderer
from neurecon.render.neus import NeuSRenderer
from neurecon.render.occupancy import OccupancyGrid

__all__ = ["NeRFRenderer", "NeuSRenderer", "OccupancyGrid", "RenderOutput"]
