import math

import torch
from torch import nn

from neurecon.fields.nerf import DensityOutput
from neurecon.fields.neus import SDFOutput
from neurecon.render import NeRFRenderer, NeuSRenderer

R = 0.5


class SphereSDF(nn.Module):
    kind = "sdf"

    def sdf(self, x):
        return x.norm(dim=-1) - R

    def inv_s(self):
        return torch.tensor(2000.0)

    def forward(self, x, d, create_graph=True):
        g = torch.nn.functional.normalize(x, dim=-1)
        return SDFOutput(self.sdf(x), g, torch.full_like(x, 0.25))


class SphereDensity(nn.Module):
    kind = "density"

    def density(self, x):
        return torch.where(x.norm(dim=-1) < R, 1e4, 0.0)

    def forward(self, x, d, create_graph=True):
        return DensityOutput(self.density(x), torch.full_like(x, 0.25))


def _rays():
    o = torch.tensor([[0.01, 0.0, -3.0], [0.3, 0.0, -3.0], [0.0, -0.45, -3.0], [0.0, 2.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    depth = [
        3 - math.sqrt(R**2 - 0.01**2),
        3 - math.sqrt(R**2 - 0.09),
        3 - math.sqrt(R**2 - 0.45**2),
    ]
    return o, d, torch.tensor(depth)


def test_neus_renderer_sphere_depth_and_opacity():
    r = NeuSRenderer(n_samples=64, n_importance=64, up_sample_steps=4).eval()
    o, d, depth = _rays()
    bg = torch.tensor([0.0, 1.0, 0.0])
    out = r(SphereSDF(), o, d, bg)
    assert torch.allclose(out.depth[:3], depth, atol=5e-3)
    assert torch.allclose(out.opacity[:3], torch.ones(3), atol=1e-3)
    assert torch.allclose(out.color[:3], torch.full((3, 3), 0.25), atol=1e-3)
    # The ray missing the unit sphere shows the background and nothing else.
    assert out.opacity[3] == 0 and torch.equal(out.color[3], bg)
    assert torch.allclose(out.eikonal, torch.tensor(0.0), atol=1e-6)  # |∇sdf| = 1


def test_neus_renderer_rejects_density_field():
    o, d, _ = _rays()
    try:
        NeuSRenderer()(SphereDensity(), o, d, torch.zeros(3))
    except TypeError as e:
        assert "field=neus" in str(e)
    else:
        raise AssertionError("expected TypeError")


def test_nerf_renderer_sphere_depth():
    r = NeRFRenderer(n_samples=128, n_importance=64).eval()
    o, d, depth = _rays()
    out = r(SphereDensity(), o, d, torch.zeros(3))
    assert torch.allclose(out.depth[:3], depth, atol=1e-2)
    assert torch.allclose(out.opacity[:3], torch.ones(3), atol=1e-3)
    assert out.opacity[3] == 0
