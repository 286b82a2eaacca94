"""Geometry utilities: marching cubes in world coordinates."""

from neurecon.geometry.mesh import extract_mesh, merge_block_vertices, sample_grid

__all__ = ["extract_mesh", "merge_block_vertices", "sample_grid"]
