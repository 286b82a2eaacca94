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


def test_mesh_picture_covers_large_triangles_without_holes():
    """Triangles many pixels wide (a coarse sphere, drawn large) are drawn whole: inside the
    silhouette no pixel is white (the background) and none shows the far side, which would be
    shaded darker than its front neighbours."""
    import trimesh

    from neurecon.geometry.picture import render_mesh_view

    mesh = trimesh.creation.icosphere(subdivisions=1, radius=2.0)  # 80 faces
    img = render_mesh_view(mesh, 30.0, 20.0, size=256).astype(float)
    yy, xx = np.mgrid[:256, :256] - 127.5
    disc = np.hypot(yy, xx) < 0.85 * 0.47 * 256 * np.cos(np.pi / 5)  # inside the polyhedron
    assert (img[disc] < 250).any(-1).all()
    lum = img.mean(-1)
    # A hole showing the far side is a pixel much darker than the median of its 3×3 block.
    from scipy.ndimage import median_filter

    assert (lum - median_filter(lum, size=3))[disc].min() > -40


def test_pictures_of_a_capture_are_upright_and_seen_from_its_cameras():
    """A real scan's world frame has no up: ``frame_from_cameras`` takes the cameras' mean up
    and the side they stand on, in any frame (here a rotated one)."""
    from scipy.spatial.transform import Rotation

    from neurecon.data.cameras import look_at
    from neurecon.geometry.picture import frame_from_cameras

    R = Rotation.from_euler("xyz", [40, -70, 15], degrees=True).as_matrix()
    centre = np.array([3.0, -2.0, 5.0])
    az = np.radians(np.linspace(-60, 60, 9))  # an arc in front (+x), 30° above
    eyes = np.stack([np.cos(az), np.sin(az), np.full_like(az, 0.6)], 1) * 4.0
    c2w = np.stack([look_at(e, np.zeros(3)) for e in eyes])[:, :3]  # z up, OpenCV axes
    c2w[:, :, :3] = R @ c2w[:, :, :3]
    c2w[:, :, 3] = c2w[:, :, 3] @ R.T + centre
    up, front = frame_from_cameras(c2w, centre)
    # Upright and from the cameras' side (their mean up leans with their pitch, here ~30°).
    assert up @ R @ [0, 0, 1] > np.cos(np.radians(35)) and abs(up @ front) < 1e-9
    assert front @ R @ [1, 0, 0] > np.cos(np.radians(35))
    ring = [look_at(4 * np.array([np.cos(a), np.sin(a), 0.0]), np.zeros(3)) for a in az * 3]
    up, front = frame_from_cameras(np.stack(ring)[:, :3])  # all round: any front across up
    assert np.allclose(up, [0, 0, 1]) and abs(up @ front) < 1e-9
    assert np.isclose(np.linalg.norm(front), 1.0)


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
