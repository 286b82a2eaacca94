"""Datasets: every loader produces a :class:`~neurecon.data.scene.Scene`."""

from neurecon.data.neus import NeuSScene
from neurecon.data.scene import RayBatch, Scene
from neurecon.data.synthetic import SyntheticScene
from neurecon.errors import DatasetError

__all__ = ["DatasetError", "NeuSScene", "RayBatch", "Scene", "SyntheticScene"]
