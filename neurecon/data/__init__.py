"""Datasets: every loader produces a :class:`~neurecon.data.scene.Scene`."""

from neurecon.data.colmap import ColmapScene
from neurecon.data.neus import NeuSScene
from neurecon.data.posed import BlenderScene, LLFFScene, NerfstudioScene, NGPScene
from neurecon.data.scene import RayBatch, Scene
from neurecon.data.synthetic import SyntheticScene
from neurecon.errors import DatasetError

__all__ = [
    "BlenderScene",
    "ColmapScene",
    "DatasetError",
    "LLFFScene",
    "NGPScene",
    "NerfstudioScene",
    "NeuSScene",
    "RayBatch",
    "Scene",
    "SyntheticScene",
]
