"""What the end-of-run evaluation will cost, so that a run under a deadline finishes it.

``trainer.max_time`` and a SLURM job's limit bound the *whole* run: training stops once the time
left is what the test views and the mesh will take. That reserve is estimated on the current
field by timing a sample of the same work (:func:`time_eval_sample`: runs of test-view pixels
through the renderer, the mesh extraction at half its resolution and, on a masked scene, the
visual-hull test and cleaning of that coarse mesh) and scaling it by the work the evaluation
will do (:func:`eval_work`). The trainer starts timing once half of the time is left
(an early field's evaluation is not the one that will run) and re-times it as training goes on,
since a field's cost changes as it converges (an occupancy grid empties, a hash grid's levels
switch on). The estimate errs on the slow side: 1.5-2.5x the real evaluation where measured.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from dataclasses import dataclass

import torch
import trimesh
from torch import nn

from neurecon.data.cameras import pixel_rays
from neurecon.data.scene import Scene
from neurecon.eval.settings import EvalSettings
from neurecon.geometry.clean import clean_by_hull
from neurecon.geometry.hull import VisualHull

# The sample times rendering, meshing and the mesh's cleaning and picture: what is kept back is
# SAFETY times the scaled estimate, plus FIXED_S seconds for what is not timed (LPIPS, Chamfer's
# nearest neighbours, metrics.json) and for the process to finish.
SAFETY = 1.3
FIXED_S = 1.0
# Re-timed when this share of the time left at the first timing has passed (>= RETIME_MIN_S).
RETIME_SHARE, RETIME_MIN_S = 0.1, 2.0


@dataclass(frozen=True)
class EvalWork:
    """How much the end-of-run evaluation does: ``rays`` through the renderer (test views,
    turntable frames) and ``points`` through the field's geometry (the mesh grid)."""

    rays: int
    points: int


@dataclass(frozen=True)
class EvalCost:
    """Seconds per unit of work, timed on the current field; ``s_after_mesh``: seconds of what
    follows the full-resolution mesh's extraction (the visual-hull test and cleaning, the
    picture), already scaled: that grows with the surface's vertices, not the grid's points."""

    s_per_ray: float
    s_per_point: float
    s_after_mesh: float = 0.0

    def seconds(self, work: EvalWork) -> float:
        """The reserve for ``work``: the scaled sample, with :data:`SAFETY` and :data:`FIXED_S`."""
        scaled = self.s_per_ray * work.rays + self.s_per_point * work.points + self.s_after_mesh
        return SAFETY * scaled + FIXED_S


def eval_work(scene: Scene, settings: EvalSettings) -> EvalWork:
    """The work of :func:`~neurecon.eval.run.evaluate_run` on ``scene`` with ``settings``.

    Rays: every test pixel, plus each turntable frame at the first test view's size. Points:
    the marching-cubes grid (its cost per point is timed on a coarse extraction).
    """
    sizes = scene.sizes[scene.test_ids] if len(scene.test_ids) else scene.sizes[:1]
    pixels = int((sizes[:, 0] * sizes[:, 1]).sum())
    frame = int(sizes[0, 0] * sizes[0, 1])
    rays = pixels + int(settings.video_frames) * frame
    r = int(settings.mesh_resolution or 0)
    points = r**3
    return EvalWork(rays=rays, points=points)


@torch.no_grad()
def time_eval_sample(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    device: torch.device,
    rays: int = 2048,
    mesh_resolution: int = 256,
    seed: int = 0,
    hull: VisualHull | None = None,
    settings: EvalSettings | None = None,
) -> EvalCost:
    """Time ``rays`` rays of the first test view (runs of consecutive pixels) through
    ``renderer``, and the mesh extraction at half of ``mesh_resolution`` (0: no mesh), in eval
    mode and with the occupancy grid as the evaluation runs them (modes are restored).
    Then what follows on the coarse mesh: with the scene's visual ``hull`` (world frame) the
    hull test and, as ``settings`` asks (:func:`~neurecon.eval.mesh.mesh_metrics`), the
    cleaning; the picture. Returns seconds per ray, per grid point and for the full mesh's
    after-work.

    Both samples are coherent and chunked as the evaluation's work is: scattered pixels or
    points cost several times more per item (no cache reuse), which overstated the time 2-5x."""
    g = torch.Generator().manual_seed(seed)
    view = int(scene.test_ids[0]) if len(scene.test_ids) else 0
    H, W = (int(n) for n in scene.size(view))
    # Runs of consecutive pixels, as the evaluation renders them (row-major chunks): scattered
    # pixels cost more per ray (no cache reuse in the field's tables) and overstate the time.
    runs = 8
    run = max(1, min(rays // runs, H * W))
    starts = torch.randint(0, max(1, H * W - run), (runs,), generator=g)
    flat = (starts[:, None] + torch.arange(run)[None]).reshape(-1)
    K, c2w = (torch.as_tensor(a, dtype=torch.float32) for a in (scene.K[view], scene.c2w[view]))
    o, d = pixel_rays(K, c2w, (flat % W).float(), (flat // W).float())
    grid = getattr(renderer, "grid", None)
    if grid is not None and not bool(grid.occs.any()):
        # The evaluation first refreshes a grid that has never seen the field (else every ray
        # marches every cell). Time it as it will be, on a copy, so that training keeps its
        # own grid schedule.
        renderer = copy.deepcopy(renderer)
        renderer.ensure_grid(field)
    modes = [(m, m.training) for m in (field, renderer)]
    field.eval()
    renderer.eval()
    try:
        bg = scene.background_color.to(device)
        # A small warm-up first: a first call pays one-time costs.
        renderer(field, o[:64].to(device), d[:64].to(device), bg)
        t0 = time.perf_counter()
        r = renderer(field, o.to(device), d.to(device), bg)
        float(r.color.sum())  # wait for the device
        t1 = time.perf_counter()
        per_point = after_s = 0.0
        if mesh_resolution > 0:
            coarse, mesh = _coarse_mesh(field, scene, mesh_resolution, device)
            r = coarse_grid(mesh_resolution)
            per_point = coarse / r**3
            if mesh is not None and len(mesh.vertices):
                # A mesh's vertices grow with its surface, as the resolution squared; the
                # pictures' pixels do not (0.13 s a panel even for a box): that part is kept.
                grows, fixed = _after_mesh_seconds(mesh, hull, settings)
                after_s = grows * (mesh_resolution / r) ** 2 + fixed
    finally:
        for m, training in modes:
            m.train(training)
    return EvalCost(s_per_ray=(t1 - t0) / rays, s_per_point=per_point, s_after_mesh=after_s)


def coarse_grid(mesh_resolution: int) -> int:
    """The resolution the mesh's cost is timed at: half of it (1/8 of the work)."""
    return max(16, int(mesh_resolution) // 2)


def _coarse_mesh(
    field: nn.Module, scene: Scene, mesh_resolution: int, device: torch.device
) -> tuple[float, trimesh.Trimesh | None]:
    """Seconds of the real extraction at :func:`coarse_grid`, and its mesh (None: no surface
    yet, the work done is the cost). The extraction skips the blocks far from the surface,
    which a timing of field points alone cannot know (it overstated a 256^3 mesh 5x). Coarse
    blocks are skipped less often, so this errs on the slow side."""
    from neurecon.errors import MeshExtractionError
    from neurecon.geometry.mesh import extract_mesh

    margin = 2.0 if getattr(field, "kind", None) == "sdf" else None
    t, mesh = time.perf_counter(), None
    with contextlib.suppress(MeshExtractionError):
        mesh = extract_mesh(field.geometry, scene.to_world, coarse_grid(mesh_resolution),
                            device=device, skip_margin=margin)  # fmt: skip
    return time.perf_counter() - t, mesh


def _after_mesh_seconds(
    mesh: trimesh.Trimesh, hull: VisualHull | None, settings: EvalSettings | None
) -> tuple[float, float]:
    """Seconds of what the evaluation does to ``mesh`` once extracted: the vertices' hull test
    and the cleaning where ``settings`` asks for it (:func:`~neurecon.eval.mesh.mesh_metrics`),
    and the panels of ``mesh.png``. Returns (the part that grows with the mesh, the part that
    does not: the panels' cost for a box, their pixels)."""
    from neurecon.eval.run import CAPTURE_VIEWS

    t = time.perf_counter()
    if hull is not None and settings is not None:
        outside = hull.outside(mesh.vertices, settings.hull_dilate_px)
        if settings.cleans_mesh():
            clean_by_hull(mesh, outside, settings.min_component)
    size = (settings or EvalSettings).picture_size  # no settings: the default picture
    if size:
        _panels(mesh, CAPTURE_VIEWS, size)
    total = time.perf_counter() - t
    fixed = min(total, len(CAPTURE_VIEWS) * _panel_fixed_seconds(size)) if size else 0.0
    return total - fixed, fixed


def _panels(mesh: trimesh.Trimesh, views, size: int) -> None:
    from neurecon.geometry.picture import render_mesh_view

    for azimuth, elevation in views:
        render_mesh_view(mesh, azimuth, elevation, size)


@functools.cache
def _panel_fixed_seconds(size: int) -> float:
    """Seconds of one ``mesh.png`` panel of a box at ``size`` pixels a side: its pixels'
    share (timed once a process and size)."""
    box = trimesh.creation.box()
    _panels(box, [(30.0, 20.0)], size)  # the first call pays one-time costs
    t = time.perf_counter()
    _panels(box, [(30.0, 20.0)], size)
    return time.perf_counter() - t


class EvalReserve:
    """The seconds a run under a deadline keeps back for its evaluation, re-timed on the
    current field every :data:`RETIME_SHARE` of the time that was left at the first call."""

    def __init__(self, scene: Scene, settings: EvalSettings) -> None:
        self.scene, self.settings, self.work = scene, settings, eval_work(scene, settings)
        self.mesh_resolution = int(settings.mesh_resolution or 0)  # 0: no mesh
        # The evaluation builds the masks' visual hull once (a distance transform per training
        # mask): timed here once, kept for the hull work's timings.
        self._hull: VisualHull | None = None
        self._hull_build_s: float | None = None
        self.seconds = 0.0  # the latest estimate
        self.cost: EvalCost | None = None
        self._timed_at: float | None = None
        self._interval = RETIME_MIN_S
        self.timings = 0  # how many times the sample was timed

    def update(
        self, time_left_s: float, field: nn.Module, renderer: nn.Module, device: torch.device
    ) -> float:
        """The reserve, re-timed when due; ``time_left_s``: seconds to the deadline."""
        now = time.monotonic()
        if self._timed_at is None:
            self._interval = max(RETIME_MIN_S, RETIME_SHARE * time_left_s)
        if self._timed_at is None or now - self._timed_at >= self._interval:
            if self._hull_build_s is None:
                t = time.perf_counter()
                self._hull = self.scene.visual_hull(world=True) if self.mesh_resolution else None
                self._hull_build_s = time.perf_counter() - t
            self.cost = time_eval_sample(
                self.scene, field, renderer, device, mesh_resolution=self.mesh_resolution,
                hull=self._hull, settings=self.settings,
            )  # fmt: skip
            self.seconds = self.cost.seconds(self.work) + SAFETY * self._hull_build_s
            self.timings += 1
            self._timed_at = time.monotonic()  # the timing itself is not an interval's
        return self.seconds
