"""The masks' visual hull: its dilation against scikit-image's, the ball test against the
pinhole's analytic answer, carving the occupancy grid (nothing the object touches is carved),
and the default cleaning of a masked run's mesh (floaters outside the hull go, the raw mesh
stays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from conftest import TINY, compose_cfg
from scipy.ndimage import binary_dilation
from skimage.morphology import disk
from torch import nn

from neurecon.data.synthetic import SyntheticScene
from neurecon.eval.mesh import mesh_metrics
from neurecon.eval.settings import EvalSettings
from neurecon.geometry.hull import VisualHull
from neurecon.render.occupancy import OccupancyGrid

PIXELS = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])  # (x, y, 1) → pixel (x, y)


def _blobs(rng: np.random.Generator, H: int = 40, W: int = 50) -> np.ndarray:
    m = np.zeros((H, W), bool)
    for _ in range(3):
        cy, cx, r = rng.integers(5, H - 5), rng.integers(5, W - 5), rng.integers(2, 7)
        yy, xx = np.mgrid[:H, :W]
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return m


@pytest.mark.parametrize("radius", [0, 1, 3, 7])
def test_the_dilation_is_scikit_image_s_disk_dilation(radius):
    rng = np.random.default_rng(radius)
    mask = _blobs(rng)
    H, W = mask.shape
    vv, uu = np.mgrid[-3 : H + 3, -3 : W + 3]  # also points outside the image: not judged
    jitter = rng.uniform(-0.4, 0.4, (2, *uu.shape))
    pts = np.stack([uu + jitter[0], vv + jitter[1], np.ones_like(uu, float)], -1).reshape(-1, 3)
    got = VisualHull(PIXELS[None], [mask]).outside(pts, dilate_px=radius)
    ref = binary_dilation(mask, structure=disk(radius)) if radius else mask
    u, v = uu.reshape(-1), vv.reshape(-1)
    inside_image = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    expect = np.zeros(len(pts), bool)
    expect[inside_image] = ~ref[v[inside_image], u[inside_image]]
    assert (got == expect).all()
    assert expect.any() and (~expect).any()


def test_a_ball_is_kept_while_its_projection_reaches_the_mask():
    """Pinhole f = 100 px, a ball of radius 0.05 at depth 2 projects to 2.5 px (+ 1 px for the
    masks' sampling): a ball whose centre projects 2 px off the mask's edge is kept, 4 px off is
    not."""
    f, cx = 100.0, 50.0
    P = np.array([[f, 0, cx, 0], [0, f, cx, 0], [0, 0, 1, 0]])
    mask = np.zeros((101, 101), bool)
    mask[:, :51] = True  # columns 0..50
    z = 2.0
    pts = np.array([[(u - cx) * z / f, 0.0, z] for u in (52.0, 54.2)])  # 2 and 4.2 px off
    hull = VisualHull(P[None], [mask])
    assert hull.outside(pts).tolist() == [True, True]  # centres: both outside
    assert hull.outside(pts, extent=0.05).tolist() == [False, True]
    # A dilation in photo pixels is scaled to the masks' pixels (a 1/4 release: 12 px → 3 px).
    quarter = VisualHull(P[None], [mask], px_scale=0.25)
    assert quarter.outside(pts, dilate_px=12.0).tolist() == [False, True]


def test_carving_keeps_every_cell_the_object_touches():
    scene = SyntheticScene(num_views=16, resolution=32, num_gt_points=100)
    # 1 px of dilation: the synthetic masks come from sphere tracing, which misses some
    # grazing rays at the silhouette (at 0 px, 19 of 1435 such cells go).
    grid = OccupancyGrid(resolution=32, carve_dilate_px=1.0)
    kept = grid.carve(scene.visual_hull())
    R = grid.resolution
    centres = grid.cell_centres(torch.arange(R**3), jitter=False)
    touched = (scene.sdf(centres) <= grid.cell_radius).reshape(R, R, R)  # may hold the object
    assert bool(grid.hull[touched].all())  # conservative: nothing of the object is carved
    assert bool(grid.binary[touched].all()) and not bool(grid.binary[~grid.hull].any())
    in_sphere = (centres.norm(dim=-1) < 1).float().mean().item()
    assert kept < 0.5 * in_sphere  # and most of the empty space goes
    # Testing the cells' centres only (no extent) would carve cells the object touches.
    centre_only = ~scene.visual_hull().outside(centres.numpy())
    assert not centre_only.reshape(R, R, R)[touched.numpy()].all()


def test_the_carving_is_saved_and_older_checkpoints_load_uncarved():
    scene = SyntheticScene(num_views=8, resolution=16, num_gt_points=100)
    grid = OccupancyGrid(resolution=16, carve_dilate_px=1.0)
    grid.carve(scene.visual_hull())
    fresh = OccupancyGrid(resolution=16)
    fresh.load_state_dict(grid.state_dict())
    assert torch.equal(fresh.hull, grid.hull) and not bool(fresh.hull.all())
    old = {k: v for k, v in grid.state_dict().items() if k != "hull"}
    fresh.load_state_dict(old)
    assert bool(fresh.hull.all())
    # A refresh never reopens a carved cell.
    grid.update(1, lambda x: torch.ones(len(x)))
    assert torch.equal(grid.binary, grid.hull)


def test_a_masked_run_carves_its_grid_and_an_unmasked_one_does_not():
    from neurecon.build import build

    for use_mask, carved in (("auto", True), ("false", False)):
        over = ["trainer.max_steps=2", "eval.mesh_resolution=0", "renderer.grid.carve=true"]
        r = build(compose_cfg([*TINY, *over, f"trainer.use_mask={use_mask}"]))
        r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, _tmp(use_mask))
        assert (not bool(r.renderer.grid.hull.all())) == carved


def _tmp(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"hull_{name}_"))


class _AnalyticField(nn.Module):
    """An SDF 'field': the scene's shape plus a ball of radius 0.08 at ``floater``, grey."""

    kind = "sdf"

    def __init__(self, sdf, floater: torch.Tensor) -> None:
        super().__init__()
        self.shape, self.floater = sdf, floater

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        ball = (x - self.floater.to(x)).norm(dim=-1) - 0.08
        return torch.minimum(self.shape(x), ball)

    def forward(self, x, d, create_graph=False):
        from types import SimpleNamespace

        return SimpleNamespace(color=torch.full_like(x, 0.5))


def test_a_masked_run_s_mesh_loses_the_floaters_outside_the_hull(tmp_path):
    scene = SyntheticScene(num_views=16, resolution=32, num_gt_points=5000)
    hull = scene.visual_hull()
    # A point well inside the unit ball, far from the object, that the masks (dilated by
    # 1 px: 12 px would cover most of these 32-px views) put outside the hull.
    cand = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.7
    ok = (scene.sdf(cand) > 0.3) & (cand.norm(dim=-1) < 0.85)
    ok &= torch.from_numpy(hull.outside(cand.numpy(), 1.0, 0.1))
    floater = cand[ok][0]
    field = _AnalyticField(scene.sdf, floater)
    settings = EvalSettings(mesh_resolution=64, progress=False, hull_dilate_px=1.0)
    res, mesh = mesh_metrics(scene, field, tmp_path, settings)
    raw = trimesh.load(tmp_path / "mesh_raw.ply")
    assert res["mesh/outside_hull_raw"] > 0.01 and res["mesh/outside_hull"] == 0.0
    assert (
        len(raw.vertices) == res["mesh/vertices_raw"] > res["mesh/vertices"] == len(mesh.vertices)
    )
    far = np.linalg.norm(mesh.vertices - scene.to_world_points(floater.numpy()[None]), axis=1)
    assert far.min() > 0.2 * scene.to_world[0, 0]  # the floater is gone, the object stays
    assert res["chamfer/relative"] < 0.02  # the cleaned mesh is the object (Chamfer, of its radius)
    # Without masks in training (trainer.use_mask=false) the mesh is left as extracted.
    res2, _ = mesh_metrics(scene, field, tmp_path / "u", EvalSettings(
        mesh_resolution=64, progress=False, use_mask=False, hull_dilate_px=1.0))  # fmt: skip
    assert "mesh_raw" not in res2 and res2["mesh/outside_hull"] == res2["mesh/outside_hull_raw"]


def test_carved_space_is_kept_empty_by_the_free_space_term():
    """A masked run's renderer reports ``relu(-f)`` on its random points in carved cells and
    the free-space term takes it; the term's maths on fixed values."""
    from neurecon.build import build
    from neurecon.render.volrend import carved_violation

    sdf = torch.tensor([-0.2, 0.3, -0.1, 0.5])
    carved = torch.tensor([True, True, False, False])
    assert float(carved_violation(sdf, carved)) == pytest.approx(0.1)  # (0.2 + 0) / 2
    assert float(carved_violation(sdf, torch.zeros(4, dtype=torch.bool))) == 0.0
    r = build(compose_cfg([*TINY, "trainer.max_steps=1", "eval.mesh_resolution=0",
                           "renderer.grid.carve=true"]))  # fmt: skip
    r.renderer.setup(torch.device("cpu"), r.scene.visual_hull)
    assert r.renderer.grid.carved
    r.renderer.train()
    batch = r.scene.sample_rays(64, torch.Generator().manual_seed(0))
    out = r.renderer(r.field, batch.origins, batch.dirs, r.scene.background_color)
    term = r.trainer.loss_terms["free_space"]
    assert term.value(out, batch.rgb, None) is out.extras["free_space"]
    assert out.extras["free_space"].requires_grad
