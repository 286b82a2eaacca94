"""Export from run folders: block-wise meshes, vertex colours, cleaning, maps and videos."""

from __future__ import annotations

import json
import os

import imageio
import numpy as np
import pytest
import torch
import trimesh
from conftest import TINY, compose_cfg, trained_run_folder
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from neurecon.build import build
from neurecon.data.synthetic import sdf_torus_box
from neurecon.export import main as export_main
from neurecon.geometry import extract_mesh
from neurecon.geometry.clean import keep_largest, seen_faces

# Off-centre, non-unit scale and a rotation: exported meshes must land in world coordinates.
TO_WORLD = np.array(
    [[0.0, -2.5, 0.0, 3.0], [2.5, 0.0, 0.0, -1.0], [0.0, 0.0, 2.5, 0.5], [0.0, 0.0, 0.0, 1.0]]
)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_blockwise_extraction_equals_dense_at_256():
    sdf = sdf_torus_box()
    dense = extract_mesh(sdf, TO_WORLD, resolution=256, block=256)
    for block, margin in ((64, 2.0), (37, None)):  # 37: blocks that do not tile evenly
        tiled = extract_mesh(sdf, TO_WORLD, resolution=256, block=block, skip_margin=margin)
        assert len(tiled.vertices) == len(dense.vertices)  # no duplicates at block seams
        assert len(tiled.faces) == len(dense.faces)
        scale = 2.5 * 2 / 255  # one voxel in world units
        d, _ = cKDTree(dense.vertices).query(tiled.vertices)
        assert d.max() < 1e-6 * scale
        # Same faces, as sets of vertex positions: the stitched surface is the dense one.
        fd = _sorted_rows(
            np.sort(np.round(dense.vertices[dense.faces] / scale, 4), 1).reshape(-1, 9)
        )
        ft = _sorted_rows(
            np.sort(np.round(tiled.vertices[tiled.faces] / scale, 4), 1).reshape(-1, 9)
        )
        assert np.array_equal(fd, ft)
        assert tiled.is_watertight == dense.is_watertight  # closed: no cracks either


def test_blocks_far_from_an_sdf_surface_are_skipped_unevaluated():
    calls = []

    def sphere(x):
        calls.append(len(x))
        return x.norm(dim=-1) - 0.3

    extract_mesh(sphere, np.eye(4), resolution=128, block=17, skip_margin=2.0)
    skipped = sum(calls)
    calls.clear()
    extract_mesh(sphere, np.eye(4), resolution=128, block=17, skip_margin=None)
    assert skipped < 0.5 * sum(calls)


def test_keep_largest_removes_an_injected_floater():
    body = extract_mesh(sdf_torus_box(), TO_WORLD, resolution=64)
    floater = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    floater.apply_translation(TO_WORLD[:3, 3] + [0.0, 0.0, 2.2])
    both = trimesh.util.concatenate([body, floater])
    kept = keep_largest(both)
    assert len(kept.faces) == len(body.faces)
    assert np.linalg.norm(kept.vertices - floater.centroid, axis=1).min() > 0.5
    # With a size fraction, a component at least that large stays.
    assert len(keep_largest(both, min_fraction=1e-4).faces) == len(both.faces)


def test_faces_no_training_camera_sees_are_culled():
    run = build(compose_cfg([*TINY, "dataset.num_views=4"]))
    s = run.scene
    mesh = extract_mesh(s.sdf, s.to_world, resolution=32)
    far = trimesh.creation.icosphere(radius=0.05)
    far.apply_translation(s.to_world_points(np.array([[0.0, 0.0, -40.0]]))[0])  # behind all
    both = trimesh.util.concatenate([mesh, far])
    seen = seen_faces(both, s.world_projections(), s.sizes.numpy())
    assert seen[: len(mesh.faces)].all() and not seen[len(mesh.faces) :].any()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder of the built-in scene, trained enough to have colours and a surface."""
    root = tmp_path_factory.mktemp("trained")
    r = trained_run_folder(root, [*TINY, "trainer.max_steps=300", "eval.mesh_resolution=32"])
    return root, r.scene


def test_export_cli_colours_maps_and_video(trained, capsys):
    root, scene = trained
    before = (root / "mesh.ply").read_bytes()
    rc = export_main(
        [str(root), "--resolution", "96", "--block", "40", "--keep-largest", "--maps",
         "--video", "--frames", "5", "--video-size", "48", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    out = root / "export"
    summary = json.loads((out / "export.json").read_text())
    umask = os.umask(0)
    os.umask(umask)
    for f in ("export.json", "mesh_96.ply", "turntable.mp4"):  # readable like any new file
        assert (out / f).stat().st_mode & 0o777 == 0o666 & ~umask
    assert summary["mesh"] == "mesh_96.ply" and summary["step"] == 300
    assert (root / "mesh.ply").read_bytes() == before  # the run's own mesh is untouched

    # Vertex colours against the scene's exact surface colour at the nearest surface point.
    mesh = trimesh.load(out / "mesh_96.ply", process=False)
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    scale = float(np.cbrt(np.linalg.det(scene.to_world[:3, :3])))  # normalised → world
    x = (mesh.vertices - scene.to_world[:3, 3]) @ scene.to_world[:3, :3] / scale**2
    from neurecon.data.synthetic import project_to_surface

    xs = project_to_surface(scene.sdf, torch.tensor(x, dtype=torch.float32))
    truth = scene.surface_color(xs).numpy()
    mae = np.abs(rgb - truth).mean()
    baseline = np.abs(truth.mean(0) - truth).mean()  # the best constant colour
    assert mae < 0.06 and mae < 0.5 * baseline, (mae, baseline)
    assert rgb.std(0).mean() > 0.05  # not constant

    # Depth maps: world-unit ray distances that agree with ray-casting the exported mesh.
    v = int(scene.test_ids[0])
    depth = np.load(out / "depth" / f"view_{v:03d}.npy")
    H, W = scene.size(v)
    from neurecon.data.cameras import pixel_rays

    u, vv = np.meshgrid(np.arange(W), np.arange(H))
    o, d = pixel_rays(scene.K[v], scene.c2w[v], torch.tensor(u.ravel()).float(),
                      torch.tensor(vv.ravel()).float())  # fmt: skip
    o_w = scene.to_world_points(o.double().numpy())
    d_w = d.double().numpy() @ scene.to_world[:3, :3].T
    d_w /= np.linalg.norm(d_w, axis=1, keepdims=True)
    locs, ray_idx, _ = mesh.ray.intersects_location(o_w, d_w, multiple_hits=False)
    cast = np.full(H * W, np.nan)
    cast[ray_idx] = np.linalg.norm(locs - o_w[ray_idx], axis=1)
    # Covered: the pixel and its 8 neighbours have a surface in both (silhouette pixels blend
    # the object with what lies behind it, in the render and in a pixel-centre ray-cast).
    covered = np.isfinite(cast.reshape(H, W)) & np.isfinite(depth)
    both = binary_erosion(covered, np.ones((3, 3), bool)).ravel()
    assert both.sum() > 50
    err = np.abs(cast[both] - depth.ravel()[both])
    tol = 0.01 * scale  # 1 % of the unit sphere's radius, in world units
    assert np.median(err) < tol and np.mean(err < tol) > 0.9, (np.median(err), err.max(), tol)
    normal = imageio.v3.imread(out / "normal" / f"view_{v:03d}.png")
    assert normal.shape == (H, W, 3) and normal.std() > 10

    frames = list(imageio.get_reader(out / "turntable.mp4", "ffmpeg").iter_data())
    assert len(frames) == 5 and frames[0].shape == (32, 3 * 32, 3)  # photos: 32x32
    assert "mesh_96.ply" in capsys.readouterr().out


def test_export_needs_a_trained_run_folder(tmp_path, capsys):
    assert export_main([str(tmp_path)]) == 2
    assert "not a trained run folder" in capsys.readouterr().err


def test_export_from_a_run_with_another_encoder(tmp_path):
    """A hash-grid NeuS run (not the default encoder) exports as GLB, culled by its masks."""
    trained_run_folder(
        tmp_path,
        [
            *TINY,
            "encoder=hashgrid",
            "encoder.n_levels=4",
            "encoder.log2_table_size=12",
            "encoder.max_resolution=64",
            "trainer.max_steps=3",
            "eval.mesh_resolution=0",
        ],
    )
    args = [str(tmp_path), "--resolution", "48", "--format", "glb", "--cull-masks"]
    assert export_main([*args, "--no-progress"]) == 0
    glb = trimesh.load(tmp_path / "export" / "mesh_48.glb", force="mesh")
    assert len(glb.faces) > 100 and glb.visual.kind == "vertex"
