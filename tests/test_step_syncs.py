"""The training step does not make the host wait for the device: counted on a CPU by
:class:`~neurecon.device.HostSyncCounter` (``torch.cuda.set_sync_debug_mode`` checks the same on
CUDA, in ``test_cuda.py``); pixels and rays where the step runs (:mod:`neurecon.data.rays`)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_cfg

from neurecon.build import build
from neurecon.data import SyntheticScene, rays
from neurecon.device import HostSyncCounter
from neurecon.render.common import render_hits
from neurecon.train.callbacks import SyncCountCallback


def _count(tmp_path, *overrides: str, steps=frozenset({21, 22, 32})) -> dict[int, list]:
    # 32 refreshes the occupancy grid (update_every 16); 21 and 22 are ordinary steps.
    cfg = compose_cfg([*TINY, "trainer.max_steps=34", "callbacks.log.every=1000", *overrides])
    run = build(cfg)
    cb = SyncCountCallback(steps)
    run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path, callbacks=[cb])
    return cb.per_step


def _names(calls) -> list[str]:
    return sorted(f"{name} {where.rsplit('/neurecon/', 1)[-1]}" for name, where in calls)


def test_the_counter_sees_what_would_sync():
    """The counter itself: the hit subset of dense rendering syncs (bool, boolean indexing)."""
    o = torch.zeros(4, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    near, far, hit = torch.zeros(4), torch.ones(4), torch.tensor([True, False, True, True])

    def fn(o, d, n, f):
        from neurecon.render.common import RenderOutput

        return RenderOutput(color=o + 1, opacity=f.clone(), depth=f.clone())

    with HostSyncCounter() as c:
        render_hits(o, d, near, far, hit, fn, subset=True)
    names = [n for n, _ in c.calls]
    assert "__bool__" in names and names.count("__getitem__") == 4
    with HostSyncCounter() as c:
        out = render_hits(o, d, near, far, hit, fn, subset=False)
    assert c.calls == [] and out.opacity.tolist() == [1.0, 0.0, 1.0, 1.0]  # misses zeroed
    assert out.color[1].tolist() == [0.0, 0.0, 0.0] and out.color[0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "overrides, ordinary, refresh",
    [
        # The default NeuS run with the occupancy grid: the guard's one read-back, and the
        # march's sample count (a packed march sizes its output from it; so does nerfacc).
        (
            ("renderer.grid.warmup_steps=16",),
            ["nonzero render/occupancy.py", "tolist train/guard.py"],
            2,
        ),
        # Dense sampling: the guard alone.
        (("renderer.grid=null",), ["tolist train/guard.py"], 0),
    ],
    ids=["grid", "dense"],
)
def test_a_training_step_reads_back_once_for_the_guard(tmp_path, overrides, ordinary, refresh):
    per_step = _count(tmp_path, *overrides)
    for step in (21, 22):
        assert [n.split(":")[0] for n in _names(per_step[step])] == ordinary, per_step[step]
    # A grid refresh adds its count of cells to re-evaluate and the new box's bounds.
    assert len(per_step[32]) == len(ordinary) + refresh, _names(per_step[32])


def test_rays_drawn_from_the_store_match_the_scene(tmp_path):
    """Every batch's colours and rays are the scene's pixels and cameras at the drawn indices;
    on a CPU run the store is the scene's own memory (no copy)."""
    s = SyntheticScene(resolution=16, num_views=8, image_sizes=[[16, 12], [12, 16]])
    store = s.training_store(torch.device("cpu"))
    assert store.pixels.data_ptr() == s.pixels.data_ptr() and store.uniform_hw is None
    g = torch.Generator().manual_seed(3)
    view, v, u = rays.draw_pixels(store, 500, g)
    assert set(view.tolist()) <= set(s.train_ids.tolist())
    assert ((v < s.sizes[view, 0]) & (u < s.sizes[view, 1])).all()
    b = rays.gather_batch(store, view, v, u)
    for i in range(0, 500, 97):
        vi, r, c = int(view[i]), int(v[i]), int(u[i])
        assert torch.equal(b.rgb[i], torch.from_numpy(s.image(vi)[r, c]))
    with pytest.raises(ValueError, match=r"dataset\.device"):
        SyntheticScene(resolution=8, num_views=4, device="gpu")


def test_redraws_leave_a_ray_on_a_pixel_without_data_rarer_than_stated():
    assert rays.redraw_rounds(1.0) == 0
    for share in (0.9, 0.6, 0.5):
        r = rays.redraw_rounds(share)
        assert (1 - share) ** r <= rays.MISS_PROBABILITY < (1 - share) ** (r - 1)
    assert rays.redraw_rounds(0.3) == rays.MAX_REDRAWS  # capped, with a warning
