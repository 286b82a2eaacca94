"""Background outside the unit sphere (NeRF++): compositing and when it is switched on."""

import torch
from conftest import TINY, compose_cfg
from torch import nn

from neurecon.build import build
from neurecon.fields import BackgroundField
from neurecon.fields.base import DensityOutput, SDFOutput
from neurecon.render import NeuSRenderer

SKY = torch.tensor([0.2, 0.4, 0.9])
# The built-in scene before a near, textured table and wall, trained without its masks.
ROOM = ["dataset.room=true", "dataset.num_views=20", "dataset.resolution=40",
        "trainer.use_mask=false", "trainer.max_steps=200"]  # fmt: skip


class Sky(nn.Module):
    def forward(self, x, d):
        assert (x.norm(dim=-1) >= 1.0 - 1e-4).all()  # only ever queried outside the sphere
        n = x.shape[0]
        return DensityOutput(torch.full((n,), 50.0), SKY.expand(n, 3))


class Ball(nn.Module):
    """An opaque analytic ball of radius 0.5, optionally with a background network."""

    kind = "sdf"

    def __init__(self, background_net=None):
        super().__init__()
        self.background_net = background_net

    def sdf(self, x):
        return x.norm(dim=-1) - 0.5

    def inv_s(self):
        return torch.tensor(2000.0)

    def forward(self, x, d, create_graph=True):
        return SDFOutput(
            self.sdf(x), torch.nn.functional.normalize(x, dim=-1), torch.full_like(x, 0.8)
        )


def _rays():
    o = torch.tensor([[0.01, 0.0, -3.0], [0.0, 0.8, -3.0], [0.0, 2.0, -3.0]])  # ball, sphere, miss
    return o, torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)


def test_background_field_fills_what_the_object_does_not_cover():
    r = NeuSRenderer(n_samples=64, n_importance=64, up_sample_steps=4).eval()
    o, d = _rays()
    out = r(Ball(Sky()), o, d, torch.zeros(3))
    assert torch.allclose(out.color[0], torch.full((3,), 0.8), atol=1e-3)  # the object
    assert torch.allclose(out.color[1], SKY, atol=1e-3)  # inside the sphere, no object
    assert torch.allclose(out.color[2], SKY, atol=1e-3)  # ray that misses the sphere
    # The object's opacity (used by the mask loss) does not include the background.
    assert out.opacity[1] < 5e-3 and out.opacity[2] == 0  # NeuS alpha has a 1e-5 floor
    plain = r(Ball(), o, d, torch.zeros(3))
    assert torch.allclose(plain.color[1:], torch.zeros(2, 3), atol=5e-3)


def test_background_auto_follows_the_masks():
    base = [*TINY, "dataset.num_views=4", "dataset.resolution=16"]
    assert build(compose_cfg(base)).field.background_net is None  # masked scene
    run = build(compose_cfg([*base, "trainer.use_mask=false"]))
    assert isinstance(run.field.background_net, BackgroundField)
    assert (
        build(compose_cfg([*base, "field.background_model=nerfpp"])).field.background_net
        is not None
    )
    off = compose_cfg([*base, "trainer.use_mask=false", "field.background_model=none"])
    assert build(off).field.background_net is None
    # optimizer.lr_variance=auto follows them too; a number is kept as given (sweeps set one).
    assert build(compose_cfg(base)).optimizer.lr_variance == 1e-2
    assert run.optimizer.lr_variance == 1e-3
    given = build(compose_cfg([*base, "trainer.use_mask=false", "optimizer.lr_variance=5e-3"]))
    assert given.optimizer.lr_variance == 5e-3


def test_background_is_trained_and_checkpointed(tmp_path):
    cfg = compose_cfg(
        [
            *TINY,
            "dataset.env_background=true",
            "trainer.use_mask=false",
            "trainer.max_steps=20",
            "callbacks.checkpoint.every=20",
        ]
    )
    run = build(cfg)
    before = [p.detach().clone() for p in run.field.background_net.parameters()]
    run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    after = list(run.field.background_net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    state = torch.load(tmp_path / "checkpoints" / "step_0000020.ckpt", weights_only=True)
    assert any(k.startswith("background_net.") for k in state["field"])


def test_unmasked_training_leaves_a_near_textured_room_to_the_background(tmp_path):
    """Without masks, a textured table and wall just outside the unit sphere (DTU-like, seen
    from an arc of cameras in front of the wall) go to the background field, not to the object:
    no vertex of the mesh lies at the sphere's surface or towards the table or the wall, and
    the photos' room is rendered. (With ``field.background_model=none`` the same run, at 300
    steps, filled the whole sphere — no surface inside it — at 5 dB.)"""
    import numpy as np
    import trimesh

    run = build(compose_cfg([*TINY, *ROOM]))
    assert run.field.background_net is not None and run.scene.masks is not None  # unused
    metrics = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    assert "mesh_error" not in metrics, metrics["mesh_error"]
    T = run.scene.to_world
    x = (trimesh.load(tmp_path / "mesh.ply").vertices - T[:3, 3]) / T[0, 0]  # normalised frame
    r = np.linalg.norm(x, axis=1)
    assert np.mean(np.abs(r - 1) < 0.02) < 0.05
    assert x[:, 2].min() > -0.8 and x[:, 1].max() < 0.8  # the table: z = -1.05, the wall: y = 1.1
    assert r.max() < 0.9 and metrics["chamfer/relative"] < 0.2
    assert metrics["test/psnr"] > 14.0  # the room, by the background field
