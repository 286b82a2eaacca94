"""Geometry utilities: marching cubes in world coordinates."""

from neurecon.geometry.mesh import evaluate_grid, extract_mesh

__all__ = ["evaluate_grid", "extract_mesh"]
