"""Geometry utilities: marching cubes in world coordinates."""

from neurecon.geometry.mesh import extract_mesh, sample_grid

__all__ = ["extract_mesh", "sample_grid"]
