"""SDF gradients: finite differences against analytic SDFs' gradients, the two field modes
against each other, and the eikonal term's learning signal in both modes."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from neurecon.data.synthetic import sdf_gradient, sdf_sphere, sdf_torus_box
from neurecon.errors import ConfigError
from neurecon.fields.gradients import central_difference, stencil


def _points(n: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    r = 0.2 + 0.7 * torch.rand(n, 1, generator=g)  # away from the origin, inside the sphere
    return x / x.norm(dim=-1, keepdim=True) * r


def test_central_differences_match_analytic_sdf_gradients():
    x = _points()
    centre = torch.tensor([0.1, -0.05, 0.05])
    sphere = sdf_sphere(tuple(centre.tolist()), 0.5)
    exact = (x - centre) / (x - centre).norm(dim=-1, keepdim=True)  # closed form
    fd = central_difference(sphere(stencil(x, 1e-3)), 1e-3)
    assert (fd - exact).abs().max() < 5e-4
    # The built-in torus ∪ box (smooth-min union): against autograd on the exact function.
    shape = sdf_torus_box()
    fd = central_difference(shape(stencil(x, 1e-3)), 1e-3)
    cos = torch.nn.functional.cosine_similarity(fd, sdf_gradient(shape, x), dim=-1)
    assert cos.quantile(0.99) > 0.999 and cos.min() > 0.99  # a few points on kinks


def _field(encoder: str, gradient: str):
    torch.manual_seed(0)
    cfg = compose_cfg([f"encoder={encoder}", f"field.gradient={gradient}"])
    if encoder == "hashgrid":
        cfg.encoder.log2_table_size = 14
        cfg.encoder.max_resolution = 256
    return instantiate(cfg.field, encoder=instantiate(cfg.encoder))


@pytest.mark.parametrize("encoder", ["frequency", "hashgrid"])
def test_the_fields_two_gradient_modes_agree(encoder):
    x = _points()
    grads = {}
    for mode in ("analytic", "finite_difference"):
        field = _field(encoder, mode)
        if encoder == "hashgrid":  # the step is the finest level's cell
            assert field.fd_eps == pytest.approx(2.0 / field.encoder.scale[-1].item())
        out = field(x, torch.zeros_like(x), create_graph=False)
        grads[mode] = out.gradient
        assert not out.gradient.requires_grad
    cos = torch.nn.functional.cosine_similarity(grads["analytic"], grads["finite_difference"], -1)
    assert cos.min() > 0.999, cos.min()
    rel = (grads["analytic"] - grads["finite_difference"]).norm(dim=-1)
    assert (rel / grads["analytic"].norm(dim=-1)).max() < 0.02


def test_finite_differences_give_the_eikonal_term_the_same_learning_signal():
    x = _points(256)
    flat = {}
    for mode in ("analytic", "finite_difference"):
        field = _field("frequency", mode)
        with torch.no_grad():  # move away from the init so the eikonal term is not ~0
            for p in field.sdf_net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out = field(x, torch.zeros_like(x), create_graph=True)
        ((out.gradient.norm(dim=-1) - 1.0) ** 2).mean().backward()
        flat[mode] = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
             for p in field.sdf_net.parameters()]
        )  # fmt: skip
        assert torch.isfinite(flat[mode]).all() and flat[mode].abs().sum() > 0
    cos = torch.nn.functional.cosine_similarity(flat["analytic"], flat["finite_difference"], dim=0)
    assert cos > 0.99


def test_an_unknown_gradient_mode_is_a_config_error():
    with pytest.raises((ConfigError, InstantiationException), match=r"field\.gradient"):
        _field("frequency", "numerical")


def test_compile_refuses_a_double_backward_in_one_line_and_takes_finite_differences(caplog):
    from neurecon.train.compile import compile_field

    analytic = instantiate(compose_cfg().field, encoder=instantiate(compose_cfg().encoder))
    with caplog.at_level("WARNING"):
        assert compile_field(analytic) is False
    (rec,) = [r for r in caplog.records if "trainer.compile" in r.getMessage()]
    assert "double backward" in rec.getMessage() and "\n" not in rec.getMessage()
    assert analytic._compiled_call_impl is None  # left as it was
    fd_cfg = compose_cfg(["field.gradient=finite_difference"])
    fd = instantiate(fd_cfg.field, encoder=instantiate(fd_cfg.encoder))
    keys = set(fd.state_dict())
    assert compile_field(fd) is True and fd._compiled_call_impl is not None
    assert set(fd.state_dict()) == keys  # checkpoints keep their names


@pytest.mark.slow  # inductor compiles for ~30 s on 2 cores
def test_compiled_finite_difference_field_matches_eager(tmp_path):
    from conftest import TINY

    from neurecon.build import build

    cfg = compose_cfg([*TINY, "field.gradient=finite_difference", "trainer.compile=true",
                       "trainer.max_steps=20"])  # fmt: skip
    r = build(cfg)
    x = torch.rand(500, 3) * 1.6 - 0.8
    d = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    eager = r.field(x, d, create_graph=False)
    m = r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, tmp_path)
    assert r.trainer.compiled and m["compile_s"] > 0 and m["status"] == "completed"
    r2 = build(cfg)
    r2.field.load_state_dict(r.field.state_dict())
    r2.field.compile(dynamic=True)
    got, ref = r2.field(x, d, create_graph=False), build(cfg).field
    ref.load_state_dict(r.field.state_dict())
    want = ref(x, d, create_graph=False)
    torch.testing.assert_close(got.sdf, want.sdf, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.color, want.color, rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager.sdf, want.sdf)  # it trained
