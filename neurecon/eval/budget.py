"""What the end-of-run evaluation will cost, so that a run under a deadline finishes it.

``trainer.max_time`` and a SLURM job's limit bound the *whole* run: training stops once the time
left is what the test views and the mesh will take. That reserve is estimated on the current
field by timing a sample of the same work (:func:`time_eval_sample`: a batch of test-view rays
through the renderer, a batch of points through the field's geometry) and scaling it by the
work the evaluation will do (:func:`eval_work`). The trainer re-times it as training goes on,
since a field's cost changes as it converges (an occupancy grid empties, a hash grid's levels
switch on).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from neurecon.data.cameras import pixel_rays
from neurecon.data.scene import Scene
from neurecon.eval.settings import EvalSettings

# The sample's cost is a lower bound of the whole (chunking, metrics, writes): what is kept back
# is SAFETY times the estimate, plus FIXED_S seconds for what does not scale (LPIPS, Chamfer's
# nearest neighbours, pictures, metrics.json) and for the process to finish.
SAFETY = 1.3
FIXED_S = 1.0
# Re-timed when this share of the time left at the start has passed (at least RETIME_MIN_S).
RETIME_SHARE, RETIME_MIN_S = 0.05, 2.0


@dataclass(frozen=True)
class EvalWork:
    """How much the end-of-run evaluation does: ``rays`` through the renderer (test views,
    turntable frames) and ``points`` through the field's geometry (the mesh grid)."""

    rays: int
    points: int


@dataclass(frozen=True)
class EvalCost:
    """Seconds per unit of work, timed on the current field."""

    s_per_ray: float
    s_per_point: float

    def seconds(self, work: EvalWork) -> float:
        """The reserve for ``work``: the scaled sample, with :data:`SAFETY` and :data:`FIXED_S`."""
        scaled = self.s_per_ray * work.rays + self.s_per_point * work.points
        return SAFETY * scaled + FIXED_S


def eval_work(scene: Scene, settings: EvalSettings) -> EvalWork:
    """The work of :func:`~neurecon.eval.run.evaluate_run` on ``scene`` with ``settings``.

    Rays: every test pixel, plus each turntable frame at the first test view's size. Points:
    the marching-cubes grid inside the unit sphere (``pi/6`` of the cube; SDF fields skip far
    blocks, so this is an upper bound), plus the mesh's vertex colours, a small share.
    """
    sizes = scene.sizes[scene.test_ids] if len(scene.test_ids) else scene.sizes[:1]
    pixels = int((sizes[:, 0] * sizes[:, 1]).sum())
    frame = int(sizes[0, 0] * sizes[0, 1])
    rays = pixels + int(settings.video_frames) * frame
    r = int(settings.mesh_resolution or 0)
    points = math.ceil(math.pi / 6 * r**3) if r else 0
    return EvalWork(rays=rays, points=points)


@torch.no_grad()
def time_eval_sample(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    device: torch.device,
    rays: int = 1024,
    points: int = 32768,
    seed: int = 0,
) -> EvalCost:
    """Time ``rays`` rays of the first test view through ``renderer`` and ``points`` points
    through ``field.geometry``, in eval mode as the evaluation runs them (the modules' modes
    are restored). Returns seconds per ray and per point."""
    g = torch.Generator().manual_seed(seed)
    view = int(scene.test_ids[0]) if len(scene.test_ids) else 0
    H, W = (int(n) for n in scene.size(view))
    flat = torch.randint(0, H * W, (rays,), generator=g)
    K, c2w = (torch.as_tensor(a, dtype=torch.float32) for a in (scene.K[view], scene.c2w[view]))
    o, d = pixel_rays(K, c2w, (flat % W).float(), (flat // W).float())
    x = (torch.rand(points, 3, generator=g) * 2 - 1).to(device)
    modes = [(m, m.training) for m in (field, renderer)]
    field.eval()
    renderer.eval()
    try:
        bg = scene.background_color.to(device)
        t0 = time.perf_counter()
        r = renderer(field, o.to(device), d.to(device), bg)
        float(r.color.sum())  # wait for the device
        t1 = time.perf_counter()
        float(field.geometry(x).sum())
        t2 = time.perf_counter()
    finally:
        for m, training in modes:
            m.train(training)
    return EvalCost(s_per_ray=(t1 - t0) / rays, s_per_point=(t2 - t1) / points)


class EvalReserve:
    """The seconds a run under a deadline keeps back for its evaluation, re-timed on the
    current field every :data:`RETIME_SHARE` of the time that was left at the first call."""

    def __init__(self, scene: Scene, settings: EvalSettings) -> None:
        self.scene, self.work = scene, eval_work(scene, settings)
        self.seconds = 0.0  # the latest estimate
        self.cost: EvalCost | None = None
        self._timed_at: float | None = None
        self._interval = RETIME_MIN_S

    def update(
        self, time_left_s: float, field: nn.Module, renderer: nn.Module, device: torch.device
    ) -> float:
        """The reserve, re-timed when due; ``time_left_s``: seconds to the deadline."""
        now = time.monotonic()
        if self._timed_at is None:
            self._interval = max(RETIME_MIN_S, RETIME_SHARE * time_left_s)
        if self._timed_at is None or now - self._timed_at >= self._interval:
            self.cost = time_eval_sample(self.scene, field, renderer, device)
            self.seconds = self.cost.seconds(self.work)
            self._timed_at = time.monotonic()  # the timing itself is not an interval's
        return self.seconds
