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
    with pytest.raises(MeshExtractionError, match="every block is farther"):  # all skipped
        extract_mesh(lambda x: torch.full((x.shape[0],), 5.0), np.eye(4), 16, skip_margin=2.0)
    with pytest.raises(MeshExtractionError, match="non-finite"):
        extract_mesh(lambda x: torch.full((x.shape[0],), float("nan")), np.eye(4), resolution=16)


def test_mesh_picture_frames_an_off_centre_scaled_object(tmp_path):
    """The picture is framed on the mesh itself: a sphere far from the origin and far from
    unit size appears whole and centred in each of the three panels."""
    import imageio.v3 as iio
    import trimesh

    from neurecon.geometry.picture import mesh_picture

    mesh = trimesh.creation.icosphere(subdivisions=5, radius=37.0)
    mesh.apply_translation([500.0, -300.0, 120.0])
    path = mesh_picture(mesh, tmp_path / "mesh.png", size=128)
    img = iio.imread(path)
    assert img.shape == (128, 3 * 128, 3)
    for k in range(3):
        fg = (img[:, k * 128 : (k + 1) * 128] < 250).any(-1)  # not the white background
        rows, cols = np.nonzero(fg)
        assert 0.8 < fg.mean() / (np.pi / 4 * 0.94**2) < 1.2  # a disc of ~94 % of the width
        assert rows.min() > 0 and cols.min() > 0 and rows.max() < 127 and cols.max() < 127
        assert abs(rows.mean() - 63.5) < 3 and abs(cols.mean() - 63.5) < 3
        assert len(np.unique(img[rows, cols + k * 128, 0])) > 10  # shaded, not flat


def test_the_sphere_clip_leaves_no_cap_behind():
    """A field still negative at the unit sphere (a slab under the object, as an unmasked
    table, or space no camera constrains) is clipped there; the clip's own faces are dropped,
    the field's surfaces (the object, the slab's top) are kept."""
    import torch

    def field(x):
        ball = x.norm(dim=-1) - 0.4
        slab = x[:, 2] + 0.85  # negative below z = -0.85, out to the sphere and beyond
        return torch.minimum(ball, slab)

    to_world = np.diag([3.0, 3.0, 3.0, 1.0])
    to_world[:3, 3] = [10.0, -4.0, 2.0]
    mesh = extract_mesh(field, to_world, resolution=96, block=40)
    v = (mesh.vertices - to_world[:3, 3]) / 3.0
    r = np.linalg.norm(v, axis=1)
    spacing = 2.0 / 95
    on_sphere = np.abs(r - 1.0) < 0.1 * spacing
    assert not on_sphere[mesh.faces].all(axis=1).any()  # no face of the cap survives
    assert (np.abs(v[:, 2] + 0.85) < 1e-3).sum() > 100  # the slab's top is still there
    assert (np.abs(r - 0.4) < 0.02).sum() > 1000  # and the object
    assert v[:, 2].min() > -0.85 - 2 * spacing  # nothing below the slab's rim: no cap
