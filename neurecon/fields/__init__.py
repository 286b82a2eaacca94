"""Neural fields: ``neus`` (SDF) and ``nerf`` (density)."""

from neurecon.fields.background import BackgroundField
from neurecon.fields.nerf import NeRFField
from neurecon.fields.neus import NeuSField

__all__ = ["BackgroundField", "NeRFField", "NeuSField"]
