import numpy as np
import pytest
import torch

from neurecon.errors import MeshExtractionError
from neurecon.geometry import extract_mesh

CENTRE = torch.tensor([0.2, -0.1, 0.05])


def test_marching_cubes_of_analytic_sdf_lands_in_world_frame():
    to_world = np.eye(4)
    to_world[:3, :3] *= 3.0
    to_world[:3, 3] = [10.0, -5.0, 2.0]
    mesh = extract_mesh(lambda x: (x - CENTRE).norm(dim=-1) - 0.4, to_world, resolution=64)
    centre_w = to_world[:3, :3] @ CENTRE.numpy() + to_world[:3, 3]
    r = np.linalg.norm(mesh.vertices - centre_w, axis=1)
    assert np.allclose(r, 1.2, atol=0.01)  # radius 0.4 scaled by 3
    assert mesh.is_watertight and mesh.volume > 0  # outward-facing triangles
    assert np.isclose(mesh.volume, 4 / 3 * np.pi * 1.2**3, rtol=0.02)


def test_no_surface_is_a_clear_error():
    with pytest.raises(MeshExtractionError, match="no surface"):
        extract_mesh(lambda x: torch.ones(x.shape[0]), np.eye(4), resolution=16)
    with pytest.raises(MeshExtractionError, match="non-finite"):
        extract_mesh(lambda x: torch.full((x.shape[0],), float("nan")), np.eye(4), resolution=16)
