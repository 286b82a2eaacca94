import inspect
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import compose_cfg
from hydra.utils import instantiate

from neurecon.data import DatasetError, NeuSScene, SyntheticScene
from neurecon.data.cameras import compose_projection, look_at
from neurecon.data.synthetic import SHAPES, TEXTURES
from neurecon.metrics import point_mesh_distance

SCALE = np.array([[2.0, 0, 0, 5.0], [0, 2.0, 0, -1.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
K_TRUE = np.array([[40.0, 0, 15.5], [0, 42.0, 11.5], [0, 0, 1]])


def _poses(n: int) -> list[np.ndarray]:
    """World-frame camera poses around the scale_mat sphere."""
    centre = SCALE[:3, 3]
    return [
        look_at(centre + 6 * np.array([np.cos(a), np.sin(a), 0.4]), centre)
        for a in np.linspace(0, 2 * np.pi, n, endpoint=False)
    ]


def write_neus_scene(root: Path, n: int = 4, h: int = 24, w: int = 32) -> list[np.ndarray]:
    """A tiny scene in the NeuS/DTU release layout: image/000000.png, mask/000.png (RGB masks)."""
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    poses = _poses(n)
    cams = {}
    rng = np.random.default_rng(0)
    for i, c2w in enumerate(poses):
        cams[f"world_mat_{i}"] = compose_projection(K_TRUE, c2w)
        cams[f"scale_mat_{i}"] = SCALE
        iio.imwrite(
            root / "image" / f"{i:06d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        )
        m = np.zeros((h, w, 3), np.uint8)
        m[4:20, 8:24] = 255
        iio.imwrite(root / "mask" / f"{i:03d}.png", m)
    np.savez(root / "cameras_sphere.npz", **cams)
    return poses


def test_neus_format_round_trip(tmp_path):
    poses = write_neus_scene(tmp_path)
    s = NeuSScene(str(tmp_path), test_every=0)
    assert s.images.shape == (4, 24, 32, 3) and s.images.dtype == torch.uint8
    assert s.mask(0).shape == (24, 32) and s.mask(0)[10, 10] and not s.mask(0)[0, 0]
    assert np.allclose(s.to_world, SCALE)
    for i, c2w in enumerate(poses):
        assert np.allclose(s.K[i].numpy(), K_TRUE, atol=1e-4)
        # Normalised pose: same rotation, centre mapped by the inverse scale_mat.
        assert np.allclose(s.c2w[i, :3, :3].numpy(), c2w[:3, :3], atol=1e-5)
        expected = (c2w[:3, 3] - SCALE[:3, 3]) / 2.0
        assert np.allclose(s.c2w[i, :3, 3].numpy(), expected, atol=1e-5)


def test_neus_downscale_keeps_uint8_and_rescales_intrinsics(tmp_path):
    write_neus_scene(tmp_path)
    s = NeuSScene(str(tmp_path), downscale=2)
    assert s.images.shape[1:3] == (12, 16) and s.images.dtype == torch.uint8
    assert np.isclose(s.K[0, 0, 0].item(), 20.0) and np.isclose(s.K[0, 0, 2].item(), 7.5)


def _corrupt(kind: str, root: Path) -> None:
    if kind == "missing_root":
        import shutil

        shutil.rmtree(root)
    elif kind == "missing_cameras":
        (root / "cameras_sphere.npz").unlink()
    elif kind == "count_mismatch":
        iio.imwrite(root / "image" / "000099.png", np.zeros((24, 32, 3), np.uint8))
    elif kind == "undecodable":
        (root / "image" / "000001.png").write_bytes(b"not a png")
    elif kind == "mixed_sizes":
        iio.imwrite(root / "image" / "000002.png", np.zeros((10, 10, 3), np.uint8))
    elif kind == "mask_size":
        iio.imwrite(root / "mask" / "001.png", np.zeros((10, 10), np.uint8))
    elif kind == "mask_count":
        (root / "mask" / "003.png").unlink()
    elif kind in ("singular", "nonfinite"):
        cams = dict(np.load(root / "cameras_sphere.npz"))
        cams["world_mat_2"] = np.zeros((4, 4)) if kind == "singular" else np.full((4, 4), np.nan)
        np.savez(root / "cameras_sphere.npz", **cams)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_root", r"folder .*scene does not exist"),
        ("missing_cameras", r"camera file .*cameras_sphere.npz is missing"),
        ("count_mismatch", r"5 images .* no world_mat_4"),
        ("undecodable", r"000001.png: cannot decode image"),
        # Images may differ in size; a mask that does not match its image may not.
        ("mixed_sizes", r"mask/002.png: mask size \(24, 32\) != image size \(10, 10\)"),
        ("mask_size", r"001.png: mask size"),
        ("mask_count", r"3 masks for 4 images"),
        ("singular", r"view 2: the 3x3 part of the projection matrix is singular"),
        ("nonfinite", r"view 2: matrix has non-finite values"),
    ],
)
def test_bad_neus_input_names_the_problem(tmp_path, kind, message):
    root = tmp_path / "scene"
    write_neus_scene(root)
    _corrupt(kind, root)
    with pytest.raises(DatasetError, match=message):
        NeuSScene(str(root))


def test_dtu_scan65_loads_normalised(dtu_scan65):
    s = NeuSScene(str(dtu_scan65), downscale=8)
    assert s.images.shape == (49, 150, 200, 3) and s.masks.shape == (49 * 150 * 200,)
    assert 0.05 < (s.masks > 0).float().mean() < 0.8
    centres = s.c2w[:, :3, 3].norm(dim=-1)
    assert (centres > 1.0).all()  # every camera outside the unit sphere
    # Every camera looks towards the sphere: the optical axis passes within the unit sphere.
    fwd = s.c2w[:, :3, 2]
    closest = (s.c2w[:, :3, 3] - (s.c2w[:, :3, 3] * fwd).sum(-1, keepdim=True) * fwd).norm(dim=-1)
    assert (closest < 1.0).all()
    assert 100 < s.to_world[0, 0] < 1000  # mm: the object sphere's radius


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_synthetic_scene_geometry_is_exact_and_placed_in_world(shape):
    s = SyntheticScene(shape=shape, num_views=6, resolution=24, num_gt_points=2000)
    # GT points lie on the analytic surface (after mapping back to the normalised frame).
    inv = np.linalg.inv(s.to_world)
    pts_n = s.gt_points @ inv[:3, :3].T + inv[:3, 3]
    assert np.abs(s.sdf(torch.tensor(pts_n, dtype=torch.float32)).numpy()).max() < 1e-4
    assert np.all(np.linalg.norm(pts_n, axis=1) < 1.0)
    # So does the ground-truth mesh's every vertex (world frame too), and the points lie on it.
    verts_n = s.gt_mesh.vertices @ inv[:3, :3].T + inv[:3, 3]
    assert np.abs(s.sdf(torch.tensor(verts_n, dtype=torch.float32)).numpy()).max() < 1e-4
    # (its flat triangles cut the sharp rims a little: < 0.05 % of the radius on average)
    d = point_mesh_distance(s.gt_points, s.gt_mesh)
    radius = np.linalg.norm(s.gt_points - s.gt_points.mean(0), axis=1).max()
    assert d.mean() < 5e-4 * radius and d.max() < 1e-2 * radius
    # Off-centre, non-unit scale: the world points are far from the origin.
    assert np.linalg.norm(s.gt_points.mean(0)) > 1.0 and not np.isclose(s.to_world[0, 0], 1.0)
    assert 0.05 < (s.masks > 0).float().mean() < 0.9 and len(s.test_ids) >= 1


def test_views_traced_together_are_each_view_traced_alone(monkeypatch):
    """The scene sphere-traces its views in batches of rays: every view, of either size and in
    every batch, is the one its own rays give (a batch mixes views of different sizes)."""
    import neurecon.data.synthetic as synthetic
    from neurecon.data.cameras import pixel_rays

    monkeypatch.setattr(synthetic, "RENDER_CHUNK_RAYS", 3000)  # 2-3 views a batch
    s = SyntheticScene(shape="mug", num_views=7, image_sizes=[[24, 40], [40, 24], [32, 32]])
    for i in range(7):
        H, W = (int(n) for n in s.size(i))
        v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        K, c2w = (torch.as_tensor(a, dtype=torch.float32) for a in (s.K[i], s.c2w[i]))
        rgb, hit = s.render_rays(*pixel_rays(K, c2w, u.reshape(-1).float(), v.reshape(-1).float()))
        alone = (rgb.reshape(H, W, 3).numpy() * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(s.image_u8(i), alone, err_msg=f"view {i}")
        np.testing.assert_array_equal(s.mask(i), hit.reshape(H, W).numpy(), err_msg=f"view {i}")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_ground_truth_s_narrow_band_grid_gives_the_full_grid_s_mesh(shape):
    """The ground truth's marching cubes reads the SDF in full only near the surface (the field
    mesher's skipping, margin 2): the same signs everywhere and the same mesh, vertex for
    vertex, as the SDF evaluated at every point (cells cut short at the grid's end included:
    16 does not divide 100)."""
    import mcubes

    from neurecon.geometry.mesh import sample_near_surface

    sdf, res = SHAPES[shape](), 100
    g = torch.linspace(-1, 1, res)
    full = sdf(torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1)).numpy()
    band = sample_near_surface(sdf, g.numpy(), (slice(None),) * 3, 2.0 / (res - 1), 2.0,
                               chunk=4096, device="cpu")  # fmt: skip
    assert np.array_equal(np.sign(band), np.sign(full))
    assert (band != full).mean() > 0.4  # 47-54 % of this grid is not evaluated (more at 160)
    for a, b in zip(mcubes.marching_cubes(-full, 0.0), mcubes.marching_cubes(-band, 0.0),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_grayscale_rgba_and_16bit_images_are_converted(tmp_path):
    write_neus_scene(tmp_path)
    img = tmp_path / "image"
    iio.imwrite(img / "000000.png", np.full((24, 32), 100, np.uint8))  # grayscale
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    iio.imwrite(img / "000001.png", rgba)
    (img / "000002.png").unlink()  # 16-bit RGB (TIFF: Pillow writes no 16-bit RGB PNG)
    iio.imwrite(img / "000002.tif", np.full((24, 32, 3), 65535, np.uint16))
    s = NeuSScene(str(tmp_path))
    assert s.images.dtype == torch.uint8 and s.images.shape == (4, 24, 32, 3)
    assert (s.images[0] == 100).all() and (s.images[1, ..., 0] == 200).all()
    assert (s.images[2] == 255).all()


def test_dtu_full_resolution_loads_as_uint8(dtu_scan65):
    s = NeuSScene(str(dtu_scan65))
    assert s.images.dtype == torch.uint8 and s.images.shape == (49, 1200, 1600, 3)
    assert s.images.numel() * s.images.element_size() == 49 * 1200 * 1600 * 3  # ~282 MB


def test_the_mug_has_a_handle_a_cavity_and_grooves():
    """The second built-in shape is not a blob: one hole (the handle: genus 1), an open cavity
    (the cup's inside is empty space reaching the top) and grooves cut into the wall."""
    from neurecon.data.synthetic import sdf_mug
    from neurecon.geometry import extract_mesh

    f = sdf_mug()
    mesh = extract_mesh(f, np.eye(4), resolution=128)
    assert mesh.is_watertight and mesh.euler_number == 0  # genus 1
    axis = torch.tensor([[0.0, 0.0, z] for z in np.linspace(-0.3, 0.5, 9)])
    assert (f(axis) > 0).all()  # the cavity: empty along the axis, out through the top
    wall = torch.tensor([[0.33, 0.0, -0.05 + z] for z in (-0.12, 0.1, 0.0)])  # z0 = -0.05
    d = f(wall)
    assert d[0] > 0 and d[1] > 0 and d[2] < 0  # grooves at two heights, wall between them


def test_the_synthetic_config_lists_every_scene_argument():
    """Every argument of the built-in scene can be set on the command line without a ``+``."""
    cfg = compose_cfg(["dataset.texture=noise", "dataset.orbit_elevation_deg=30"])
    keys = set(cfg.dataset) - {"_target_"}
    assert keys == set(inspect.signature(SyntheticScene).parameters)
    scene = instantiate(cfg.dataset, resolution=8, num_views=4)
    assert scene.albedo is TEXTURES["noise"]
    centres = np.asarray(scene.c2w[:, :3, 3], dtype=np.float64)  # normalised frame: about 0
    elevation = np.degrees(np.arcsin(centres[:, 2] / np.linalg.norm(centres, axis=1)))
    np.testing.assert_allclose(elevation, 30.0, atol=1e-3)


def test_downscaled_intrinsics_use_the_exact_size_ratio_for_odd_sizes(tmp_path):
    """A 33x25 photo downscaled by 2 is 16x12: resized by 16/33 and 12/25, not by 1/2. A blob
    at a known full-size pixel must land where the loaded intrinsics project it (before, K
    was scaled by 1/2 and missed by about half a pixel at the far edge)."""
    from neurecon.data.neus import NeuSScene

    h, w, (u0, v0) = 25, 33, (28.0, 20.0)
    (tmp_path / "image").mkdir()
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    blob = np.exp(-((uu - u0) ** 2 + (vv - v0) ** 2) / (2 * 1.5**2))
    img = np.repeat((blob * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    cams = {}
    for i, c2w in enumerate(_poses(2)):
        cams[f"world_mat_{i}"] = compose_projection(K_TRUE, c2w)
        cams[f"scale_mat_{i}"] = SCALE
        iio.imwrite(tmp_path / "image" / f"{i:06d}.png", img)
    np.savez(tmp_path / "cameras_sphere.npz", **cams)
    scene = NeuSScene(str(tmp_path), downscale=2, use_mask=False)
    small = scene.image(0).astype(np.float64).mean(-1)  # (12, 16)
    assert small.shape == (12, 16)
    weight = np.clip(small - small.max() * 0.2, 0, None)
    ys, xs = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
    found = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
    # the blob's ray in the camera frame, projected with the loaded intrinsics
    K_full, K = K_TRUE, scene.K[0].double().numpy()
    ray = np.array([(u0 - K_full[0, 2]) / K_full[0, 0], (v0 - K_full[1, 2]) / K_full[1, 1], 1.0])
    want = (K @ ray)[:2]
    assert np.abs(found - want).max() < 0.15, (found, want)
    naive = (np.array([u0, v0]) + 0.5) / 2 - 0.5  # what 1/factor gives
    assert np.abs(found - naive).max() > 0.3  # so this size tells the two apart
