"""Empty-space skipping: the occupancy-grid renderers against the dense ones, packed
compositing against the dense formula, the dynamic batch, and CPU runs that never touch
CUDA-only packages."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_cfg
from test_render import R

from neurecon.build import build
from neurecon.data.cameras import sphere_near_far
from neurecon.eval import render_view
from neurecon.fields.nerf import DensityOutput
from neurecon.fields.neus import SDFOutput
from neurecon.metrics import psnr
from neurecon.render import NeRFRenderer, NeuSRenderer, OccupancyGrid, occupancy
from neurecon.render.common import SphereRenderer
from neurecon.render.volrend import (
    accumulate,
    packed_transmittance,
    packed_weights,
    render_weights_from_alpha,
)
from neurecon.train.callbacks import Callback

CENTRE = torch.tensor([0.15, -0.1, 0.05])


class OffCentreSphereSDF(torch.nn.Module):
    """A converged NeuS field: exact SDF of an off-centre sphere, sharp variance, colour that
    varies over the surface (so a shifted sample shows in the image)."""

    kind = "sdf"

    def sdf(self, x):
        return (x - CENTRE).norm(dim=-1) - 0.45

    def inv_s(self):
        return torch.tensor(1500.0)

    def forward(self, x, d, create_graph=True):
        g = torch.nn.functional.normalize(x - CENTRE, dim=-1)
        return SDFOutput(self.sdf(x), g, 0.5 + 0.4 * torch.sin(4 * x))


def _camera_rays(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """An n×n pinhole view from (0, 0, -2.5) looking at the origin (some rays miss)."""
    s = torch.linspace(-0.25, 0.25, n)
    v, u = torch.meshgrid(s, s, indexing="ij")
    d = torch.nn.functional.normalize(torch.stack([u, v, torch.ones_like(u)], -1), dim=-1)
    d = d.reshape(-1, 3)
    return torch.tensor([0.0, 0.0, -2.5]).expand_as(d).contiguous(), d


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_weights_equal_dense_compositing(seed):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(40, 16, generator=g, dtype=torch.float64) ** 3
    keep = torch.rand(40, 16, generator=g) < 0.6
    keep[3] = False  # a ray with no samples at all
    dense = render_weights_from_alpha(alpha * keep)
    ray, k = keep.nonzero(as_tuple=True)
    w = packed_weights(alpha[ray, k], ray, 40)
    assert torch.allclose(w, dense[ray, k], atol=1e-6)
    assert torch.allclose(accumulate(w, ray, 40), dense.sum(-1), atol=1e-6)
    assert accumulate(w, ray, 40)[3] == 0


def test_grid_marks_the_surface_shell_only():
    grid = OccupancyGrid(resolution=32, n_steps=512)
    r = NeuSRenderer(grid=grid)
    r.update_step(1, OffCentreSphereSDF())
    x = grid.cell_centres(torch.arange(32**3), jitter=False)
    dist = OffCentreSphereSDF().sdf(x).abs()
    occ = grid.binary.flatten()
    assert occ[dist < grid.cell_radius].all()  # every cell the surface passes through
    assert not occ[dist > 3 * grid.cell_radius].any()  # neither deep inside nor far outside
    assert 0.02 < occ.float().mean() < 0.2


def test_neus_grid_renderer_matches_dense_on_converged_field():
    field, bg = OffCentreSphereSDF(), torch.tensor([0.1, 0.2, 0.3])
    o, d = _camera_rays()
    dense = NeuSRenderer(n_samples=128, n_importance=128, up_sample_steps=4).eval()
    grid = NeuSRenderer(grid=OccupancyGrid(resolution=64, n_steps=1024)).eval()
    grid.ensure_grid(field)
    a, b = dense(field, o, d, bg), grid(field, o, d, bg)
    hit = (a.opacity > 0.99) & (b.opacity > 0.99)  # depth is ill-defined on the silhouette
    assert 0.2 < hit.float().mean() < 0.9  # the view has both object and background
    assert (a.opacity - b.opacity).abs().max() < 0.02
    assert (a.color - b.color).abs().max() < 0.02
    assert (a.depth[hit] - b.depth[hit]).abs().max() < 3e-3
    assert torch.nn.functional.cosine_similarity(a.normal[hit], b.normal[hit]).min() > 0.999
    assert b.num_samples < 0.25 * a.num_samples  # the point: far fewer field evaluations
    with torch.no_grad():  # validation: samples behind the surface are not evaluated in full
        c = grid(field, o, d, bg)
    assert (c.color - b.color).abs().max() < 1e-3 and (c.opacity - b.opacity).abs().max() < 1e-3
    assert c.num_samples < 0.7 * b.num_samples


class SmoothSphereDensity(torch.nn.Module):
    """A converged NeRF-like field: density rising smoothly (over ~0.01) to 1000 inside R."""

    kind = "density"

    def density(self, x):
        return 1000.0 * torch.sigmoid((R - x.norm(dim=-1)) / 0.01)

    def forward(self, x, d, create_graph=True):
        return DensityOutput(self.density(x), torch.full_like(x, 0.25))


def test_nerf_grid_renderer_matches_dense():
    field = SmoothSphereDensity()
    o, d = _camera_rays()
    dense = NeRFRenderer(n_samples=256, n_importance=128).eval()
    r = NeRFRenderer(grid=OccupancyGrid(resolution=64, n_steps=1024))
    for step in range(1, 6):  # a few jittered refreshes, as in training
        r.update_step(step * 16, field)
    r.eval()
    a, b = dense(field, o, d, torch.zeros(3)), r(field, o, d, torch.zeros(3))
    # Cells below the threshold are skipped: grazing rays through the density's soft edge
    # lose a little opacity (the nerfacc trade-off); elsewhere the renders agree.
    diff = (a.opacity - b.opacity).abs()
    assert diff.mean() < 5e-3 and diff.max() < 0.1
    hit = (a.opacity > 0.99) & (b.opacity > 0.99)
    assert hit.float().mean() > 0.2
    assert (b.depth[hit] - a.depth[hit]).abs().max() < 1e-2
    assert b.num_samples < 0.75 * a.num_samples
    with torch.no_grad():
        c = r(field, o, d, torch.zeros(3))
    assert (c.opacity - b.opacity).abs().max() < 1e-3
    assert c.num_samples < 0.5 * b.num_samples  # the interior is never evaluated in full


@pytest.fixture(scope="module")
def trained_sphere(tmp_path_factory):
    """A NeuS field trained with the grid on the built-in sphere (TINY settings)."""
    cfg = compose_cfg([*TINY, "dataset.shape=sphere", "trainer.max_steps=250"])
    run = build(cfg)
    run.trainer.fit(
        run.scene, run.field, run.renderer, run.optimizer, tmp_path_factory.mktemp("sphere")
    )
    return run


def test_grid_renderer_matches_dense_on_trained_field(trained_sphere):
    run = trained_sphere
    dense = NeuSRenderer(n_samples=64, n_importance=64, up_sample_steps=4)
    view = int(run.scene.test_ids[0])
    cpu = torch.device("cpu")
    a, _ = render_view(run.scene, run.field, dense, view, 2048, cpu)
    b, _ = render_view(run.scene, run.field, run.renderer, view, 2048, cpu)
    assert psnr(np.clip(b["color"], 0, 1), np.clip(a["color"], 0, 1)) > 35.0
    assert np.abs(a["opacity"] - b["opacity"]).mean() < 0.01
    gt = run.scene.image(view)
    assert psnr(np.clip(b["color"], 0, 1), gt) > 24.0  # and the field did learn the scene


class _WobblySDF(OffCentreSphereSDF):
    """Not monotone along rays: a ripple of ±0.03 over the sphere's SDF, so that rays meet
    near-misses before and shells behind the surface."""

    def sdf(self, x):
        return super().sdf(x) + 0.03 * torch.sin(25 * x[:, 0]) * torch.cos(25 * x[:, 1])


@pytest.mark.parametrize("field", [OffCentreSphereSDF(), _WobblySDF()], ids=["sphere", "wobbly"])
def test_strided_visibility_drops_only_what_the_full_test_drops(field):
    """NeuS's visibility test at validation evaluates every 4th sample of a ray: it drops
    only samples the full test drops, keeps few more (light < eps reaches them), and calls
    the SDF a quarter as often."""
    renderer = NeuSRenderer(grid=OccupancyGrid(resolution=64, n_steps=1024)).eval()
    renderer.ensure_grid(field)
    o, d = _camera_rays(32)
    near, far, hit = sphere_near_far(o, d)
    o, d, near, far = o[hit], d[hit], near[hit], far[hit]
    calls: list[int] = []
    sdf = field.sdf
    field.sdf = lambda x: (calls.append(len(x)), sdf(x))[1]
    try:
        with torch.no_grad():
            ray, t0, t1 = renderer.grid.march(o, d, near, far, False)
            x, dt, n = o[ray] + d[ray] * (0.5 * (t0 + t1))[:, None], t1 - t0, len(o)
            full = SphereRenderer.visible(renderer, field, x, ray, dt, n)
            n_full = sum(calls)
            calls.clear()
            two = renderer.visible(field, x, ray, dt, n)
    finally:
        del field.sdf
    assert 0 < int(full.sum()) < 0.8 * len(full)  # the test drops samples here
    assert not (full & ~two).any()  # nothing the full test keeps is dropped
    assert two.sum() < full.sum() + 4 * len(o)  # at most a stride more per ray
    alpha = renderer.visibility_alpha(field, x, ray, dt)
    t = packed_transmittance(alpha, ray, n)
    assert t[two & ~full].max() <= renderer.grid.early_stop_eps  # the extra ones are dark
    assert sum(calls) < 0.3 * n_full


class _Record(Callback):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def on_step_end(self, ctx, stats) -> bool:
        self.seen.append((stats["rays"], stats["samples"]))
        return False


def test_dynamic_batch_tracks_the_sample_target(tmp_path):
    cfg = compose_cfg(
        [*TINY, "trainer.max_steps=80", "trainer.samples_per_step=8192", "trainer.batch_rays=32"]
    )
    run = build(cfg)
    seen: list[tuple[int, int]] = []
    run.trainer.fit(
        run.scene,
        run.field,
        run.renderer,
        run.optimizer,
        tmp_path,
        callbacks=[_Record(seen)],
    )
    rays = [r for r, _ in seen]
    late = np.mean([s for _, s in seen[-20:]])
    assert rays[0] == 32 and len(set(rays)) > 10  # the batch follows the sample counts
    assert 0.75 * 8192 < late < 1.25 * 8192


def test_cpu_runs_never_import_cuda_only_packages(tmp_path):
    """With nerfacc / tinycudann 'installed' but unusable, CPU runs warn and use torch code."""
    fake = tmp_path / "site"
    for name in ("nerfacc", "tinycudann"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(
            f"raise RuntimeError('{name} was imported on a CPU run')\n"
        )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from conftest import TINY, compose_cfg
        from neurecon.build import build
        cfg = compose_cfg([*TINY, "trainer.max_steps=3", "eval.mesh_resolution=0",
                           "renderer.grid.backend=nerfacc", "encoder=hashgrid",
                           "encoder.backend=tcnn", "eval.metrics.lpips.net=null"])
        run = build(cfg)
        run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, {str(tmp_path)!r})
        bad = [m for m in ("nerfacc", "tinycudann") if m in sys.modules]
        print("imported:", bad)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "imported: []" in p.stdout
    assert p.stderr.count("renderer.grid.backend=nerfacc needs CUDA") == 1
    assert p.stderr.count("encoder.backend=tcnn") == 1


def test_grid_state_round_trips_through_the_renderer_state_dict():
    r = NeuSRenderer(grid=OccupancyGrid(resolution=16))
    r.update_step(1, OffCentreSphereSDF())
    r2 = NeuSRenderer(grid=OccupancyGrid(resolution=16))
    r2.load_state_dict(r.state_dict())
    assert torch.equal(r2.grid.binary, r.grid.binary)


def _nerfacc_sampling_in_torch(
    self,
    rays_o,
    rays_d,
    t_min=None,
    t_max=None,
    render_step_size=1e-3,
    near_plane=0.0,
    far_plane=1e10,
    **kw,
):
    """nerfacc.OccGridEstimator.sampling for one level, in torch, honouring the estimator's
    real state (its ``aabbs`` and ``binaries``): on a CPU nerfacc's own traversal needs CUDA,
    and a double that ignored the grid is how the empty-grid probe hid (the GPU path was dead
    on every machine)."""
    lo, hi = self.aabbs[0, :3], self.aabbs[0, 3:]
    R = self.binaries.shape[-1]
    near = torch.full((len(rays_o),), near_plane) if t_min is None else t_min.clamp_min(near_plane)
    far = torch.full((len(rays_o),), far_plane) if t_max is None else t_max.clamp_max(far_plane)
    far = far.clamp_max(10.0)  # the rays here stay within a few units of the box
    K = math.ceil(float((far - near).max()) / render_step_size) + 1
    t0 = near[:, None] + render_step_size * torch.arange(K, dtype=rays_o.dtype)
    mid = rays_o[:, None] + rays_d[:, None] * (t0 + 0.5 * render_step_size)[..., None]
    ijk = ((mid - lo) / (hi - lo) * R).floor().long()
    inside = ((ijk >= 0) & (ijk < R)).all(-1) & (t0 + render_step_size <= far[:, None] + 1e-6)
    ijk = ijk.clamp(0, R - 1)
    occ = self.binaries[0][ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside
    ray, k = occ.nonzero(as_tuple=True)
    return ray, t0[ray, k], t0[ray, k] + render_step_size


def _broken_sampling(self, *a, **kw):  # nerfacc 0.5.3 when its kernels were never built
    raise AttributeError("'NoneType' object has no attribute 'ray_aabb_intersect'")


def _fake_nerfacc(monkeypatch, broken: bool):
    """The real nerfacc package (its estimator, buffers and initial state), with its CUDA
    traversal replaced by the torch equivalent above (or by the error of unbuilt kernels)."""
    nerfacc = pytest.importorskip("nerfacc")
    sampling = _broken_sampling if broken else _nerfacc_sampling_in_torch
    monkeypatch.setattr(nerfacc.OccGridEstimator, "sampling", sampling)
    monkeypatch.setattr(occupancy, "_PROBED", {})
    return nerfacc


def test_the_probe_fills_nerfaccs_empty_grid_and_checks_its_samples(monkeypatch):
    """nerfacc creates its estimator with ``binaries`` all False: through it the probe ray
    gets no sample, so the probe failed everywhere and ``auto`` never chose nerfacc. The
    probe's estimator is full, its samples are the expected ones, and the fresh estimator, as
    nerfacc makes it, indeed fails the same check."""
    nerfacc = _fake_nerfacc(monkeypatch, broken=False)
    fresh = nerfacc.OccGridEstimator(roi_aabb=[-1.0] * 3 + [1.0] * 3, resolution=4, levels=1)
    assert not bool(fresh.binaries.any())  # nerfacc's real initial state
    est = occupancy.probe_estimator(nerfacc, "cpu")
    assert bool(est.binaries.all())
    ray, t0, t1 = est.sampling(*occupancy.probe_ray("cpu"), render_step_size=occupancy.PROBE_STEP)
    occupancy.check_probe_samples(ray, t0, t1)
    assert torch.allclose(t0, torch.tensor([1.0, 1.5, 2.0, 2.5]))
    with pytest.raises(RuntimeError, match="gave 0 samples"):  # the old probe's estimator
        occupancy.check_probe_samples(
            *fresh.sampling(*occupancy.probe_ray("cpu"), render_step_size=occupancy.PROBE_STEP)
        )
    assert occupancy.probe_nerfacc("cpu") is None  # the whole probe passes with real state


def test_nerfacc_march_leaves_checkpoint_keys_unchanged(monkeypatch):
    """A march through nerfacc's estimator must not add ``grid._estimator.*`` keys: a fresh
    renderer (on CUDA or CPU) has to load the checkpoint. Old checkpoints with them load too."""
    _fake_nerfacc(monkeypatch, broken=False)
    r = NeuSRenderer(grid=OccupancyGrid(resolution=16))
    r.update_step(1, OffCentreSphereSDF())
    o, d = torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    ray, t0, _ = r.grid._march_nerfacc(o, d, torch.zeros(2), torch.ones(2), perturb=False)
    # the estimator marched our grid (not an empty one): the same samples as the torch march
    assert len(t0) > 0 and bool(r.grid.occupied(o[ray] + d[ray] * t0[:, None] + 1e-4).any())
    assert r.grid._estimator and not any("_estimator" in k for k in r.state_dict())
    fresh = NeuSRenderer(grid=OccupancyGrid(resolution=16))
    fresh.load_state_dict(r.state_dict())  # strict
    legacy = dict(r.state_dict())
    legacy.update({f"grid._estimator.{k}": v for k, v in r.grid._estimator[0].state_dict().items()})
    fresh.load_state_dict(legacy)  # strict: the stale estimator keys are dropped
    assert torch.equal(fresh.grid.binary, r.grid.binary)


@pytest.mark.parametrize("broken", [True, False])
def test_auto_backend_proves_nerfacc_with_a_real_call(monkeypatch, caplog, broken):
    """nerfacc installed but its kernels never built: ``auto`` falls back to torch with one
    warning instead of dying on the first march. The probe's tiny march runs here on CPU
    tensors through a stand-in nerfacc; the CUDA-only gate is lifted for the test."""
    _fake_nerfacc(monkeypatch, broken=broken)
    error = occupancy.probe_nerfacc("cpu")
    assert (error is not None) == broken
    assert occupancy.probe_nerfacc("cpu") is error  # once per process and device
    monkeypatch.setattr(occupancy, "nerfacc_available", lambda: True)
    monkeypatch.setattr(occupancy, "probe_nerfacc", lambda device: error)
    grid = OccupancyGrid(resolution=8, backend="auto")
    with caplog.at_level(logging.WARNING):
        backends = {grid.resolve_backend(torch.device("cuda")) for _ in range(3)}
    assert backends == {"torch" if broken else "nerfacc"}
    warnings = [r for r in caplog.records if "does not run here" in r.message]
    assert len(warnings) == (1 if broken else 0)
    if broken:
        assert "ray_aabb_intersect" in warnings[0].getMessage()
