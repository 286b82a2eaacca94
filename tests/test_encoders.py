import ctypes
import ctypes.util
import importlib.util
import math
import sys
import types

import pytest
import torch
from torch import nn

from neurecon.encoders import FrequencyEncoder, HashGridEncoder, SphericalHarmonicsEncoder, hashgrid
from neurecon.errors import ConfigError


def test_frequency_values_and_shape():
    enc = FrequencyEncoder(n_freqs=3)
    x = torch.tensor([[0.1, -0.2, 0.3]])
    y = enc(x)
    assert y.shape == (1, enc.out_dim) == (1, 3 + 3 * 2 * 3)
    assert torch.allclose(y[0, :3], x[0])
    # The channel for octave 2 of x_0 is sin(4 * 0.1).
    assert torch.isclose(y[0, 3 + 2 * 3], torch.sin(torch.tensor(0.4)))


def _naive_trilinear(enc: HashGridEncoder, x: torch.Tensor, level: int) -> torch.Tensor:
    """One dense level evaluated point by point, from tiny-cuda-nn's definition: grid
    coordinate ``u · scale + 0.5``, ``res = ⌈scale⌉ + 1`` points per axis, x-fastest index."""
    r, scale, size = int(enc.res[level]), float(enc.scale[level]), int(enc.sizes[level])
    table = enc.embeddings[int(enc.offsets[level]) : int(enc.offsets[level]) + size]
    out = []
    for p in ((x + 1) / 2).clamp(0, 1):
        pos = p * scale + 0.5
        base = pos.floor()
        f = pos - base
        acc = torch.zeros(enc.n_features)
        for c in range(8):
            o = torch.tensor([c >> 2 & 1, c >> 1 & 1, c & 1])
            i = (base + o).long()
            w = torch.prod(torch.where(o.bool(), f, 1 - f))
            acc = acc + w * table[(i[0] + i[1] * r + i[2] * r * r) % size]
        out.append(acc)
    return torch.stack(out)


def test_hashgrid_matches_naive_trilinear_on_dense_levels():
    torch.manual_seed(0)
    enc = HashGridEncoder(
        n_levels=4,
        n_features=2,
        log2_table_size=14,
        base_resolution=4,
        max_resolution=16,
        include_input=False,
    )
    with torch.no_grad():
        enc.embeddings.normal_()
    x = torch.rand(20, 3) * 2 - 1
    y = enc(x)
    assert y.shape == (20, 8)
    for level in range(4):
        assert bool(enc.dense[level])
        ref = _naive_trilinear(enc, x, level)
        assert torch.allclose(y[:, 2 * level : 2 * level + 2], ref, atol=1e-5)


def test_hashgrid_gradients_reach_tables_and_input():
    enc = HashGridEncoder(n_levels=8, log2_table_size=12, max_resolution=256)
    x = (torch.rand(64, 3) * 2 - 1).requires_grad_(True)
    y = enc(x)
    assert y.shape == (64, enc.out_dim)
    assert not bool(enc.dense[-1])  # fine levels are hashed
    y.square().sum().backward()
    assert enc.embeddings.grad is not None and enc.embeddings.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("n_features", [1, 2, 4])
def test_hashgrid_hand_written_autograd_matches_plain_autograd(n_features):
    """The torch backend's own backward and double backward (``hashgrid_ops``) against autograd
    through the same tensor ops (``_encode_torch``): the encoding, the SDF's spatial gradient,
    and an eikonal + SDF loss's gradients for the table and the MLP, on dense and hashed
    levels, with points outside the bound (clamped)."""
    torch.manual_seed(0)
    enc = HashGridEncoder(n_levels=4, n_features=n_features, log2_table_size=10,
                          base_resolution=4, max_resolution=64, include_input=False,
                          backend="torch")  # fmt: skip
    assert bool(enc.dense[0]) and not bool(enc.dense[-1])
    with torch.no_grad():
        enc.embeddings.normal_()
    mlp = nn.Sequential(nn.Linear(enc.out_dim, 16), nn.Softplus(beta=10), nn.Linear(16, 1))
    x = torch.rand(150, 3) * 2.2 - 1.1
    results = []
    for plain in (True, False):
        mlp.zero_grad()
        enc.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = enc._encode_torch(((xi + 1) / 2).clamp(0, 1)) if plain else enc(xi)
        sdf = mlp(y)
        (g,) = torch.autograd.grad(sdf.sum(), xi, create_graph=True)
        (((g.norm(dim=-1) - 1) ** 2).mean() + sdf.square().mean()).backward()
        results.append([y.detach(), g.detach(), enc.embeddings.grad, mlp[0].weight.grad])
    for ref, fast in zip(*results, strict=True):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_hashgrid_level_layout_follows_tiny_cuda_nn():
    enc = HashGridEncoder(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048)
    # tiny-cuda-nn: scale_l = 16·b^l − 1, res = ⌈scale⌉ + 1, tables min(res³, 2^19) rounded to 8.
    assert enc.res[:3].tolist() == [16, 23, 31]  # b = 128^(1/15) ≈ 1.382
    assert enc.sizes[0] == 16**3 and enc.sizes[-1] == 2**19
    assert enc.dense[:3].all() and not enc.dense[-1]
    assert enc.embeddings.numel() == int(enc.sizes.sum()) * 2


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("tinycudann")),
    reason="needs CUDA and tinycudann",
)
def test_hashgrid_torch_and_tcnn_backends_agree():  # pragma: no cover - GPU machines only
    """Same parameters, same encoding; and checkpoints move between the backends both ways."""
    kw = {"n_levels": 8, "log2_table_size": 15, "max_resolution": 512, "include_input": False}
    ref = HashGridEncoder(backend="torch", **kw).cuda()
    fast = HashGridEncoder(backend="tcnn", **kw).cuda()
    with torch.no_grad():
        ref.embeddings.normal_()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    assert torch.allclose(fast(x), ref(x), atol=2e-3, rtol=1e-2)  # tcnn computes in fp16
    back = HashGridEncoder(backend="torch", **kw).cuda()
    back.load_state_dict(fast.state_dict())
    assert torch.equal(back.embeddings, ref.embeddings)


def _libm_level_resolution(level: int, per_level_scale: float, base: int) -> int:
    """tiny-cuda-nn's host code, through the C library's float functions (log2f, exp2f,
    ceilf): an independent reference for our numpy float32 version."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    for name in ("log2f", "exp2f", "ceilf"):
        getattr(libm, name).restype = ctypes.c_float
        getattr(libm, name).argtypes = [ctypes.c_float]
    f = ctypes.c_float
    log2s = f(libm.log2f(f(per_level_scale))).value
    scale = f(f(libm.exp2f(f(f(level).value * log2s))).value * base).value - 1.0
    return int(libm.ceilf(f(scale))) + 1


@pytest.mark.parametrize("max_resolution", [512, 1024, 2048])
def test_hashgrid_levels_match_tcnn_float32_formula(max_resolution):
    enc = HashGridEncoder(n_levels=16, log2_table_size=19, max_resolution=max_resolution)
    ref = [_libm_level_resolution(i, enc.per_level_scale, 16) for i in range(16)]
    assert enc.res.tolist() == ref
    # The float64 formula used before disagreed on some level for 512 and 1024.
    f64 = [math.ceil(2.0 ** (i * math.log2(enc.per_level_scale)) * 16 - 1.0) + 1 for i in range(16)]
    if max_resolution in (512, 1024):
        assert f64 != ref, "this configuration no longer exercises the float32 rounding"


def test_hashgrid_checkpoints_move_between_torch_and_tcnn(monkeypatch):
    """A run trained with backend=tcnn loads where tinycudann is missing, and back. On CPU a
    stand-in tinycudann.Encoding (a flat ``params`` vector, as the real one) plays tcnn."""

    class FakeEncoding(nn.Module):
        def __init__(self, n_input_dims, config, dtype=torch.float32):
            super().__init__()
            self.params = nn.Parameter(torch.zeros(self.size, dtype=dtype))

    kw = {"n_levels": 6, "log2_table_size": 12, "max_resolution": 256, "include_input": False}
    FakeEncoding.size = HashGridEncoder(**kw).n_params
    monkeypatch.setitem(sys.modules, "tinycudann", types.SimpleNamespace(Encoding=FakeEncoding))
    monkeypatch.setattr(hashgrid, "tcnn_available", lambda: True)
    tc = HashGridEncoder(backend="tcnn", device="cuda", **kw)
    assert tc.tcnn is not None
    with torch.no_grad():
        tc.tcnn.params.normal_()
    sd = tc.state_dict()
    assert list(sd) == ["embeddings"] and sd["embeddings"].shape == (tc.n_params // 2, 2)
    th = HashGridEncoder(backend="torch", **kw)
    th.load_state_dict(sd)  # strict
    assert torch.equal(th.embeddings.flatten(), tc.tcnn.params)
    tc2 = HashGridEncoder(backend="tcnn", device="cuda", **kw)
    tc2.load_state_dict(th.state_dict())
    assert torch.equal(tc2.tcnn.params, tc.tcnn.params)
    tc2.load_state_dict({"tcnn.params": tc.tcnn.params.detach().clone()})  # older tcnn files
    th.load_state_dict({"tcnn.params": tc.tcnn.params.detach().clone()})
    with pytest.raises(ConfigError, match="checkpoint hash table has"):
        HashGridEncoder(backend="torch", **{**kw, "n_levels": 4}).load_state_dict(sd)


@pytest.mark.parametrize("n_features", [3, 16])
def test_hashgrid_rejects_feature_counts_tcnn_cannot_run(n_features):
    with pytest.raises(ConfigError, match=r"n_features=\d+: tiny-cuda-nn"):
        HashGridEncoder(n_features=n_features)


def test_hashgrid_rejects_unknown_backend():
    with pytest.raises(ConfigError, match="backend"):
        HashGridEncoder(backend="magic")


def test_sh_basis_is_orthonormal():
    """Monte Carlo ∫ Y_i Y_j dω over the sphere ≈ δ_ij."""
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, dtype=torch.float64), dim=-1)
    Y = SphericalHarmonicsEncoder(degree=4)(d)
    gram = Y.T @ Y * (4 * math.pi / d.shape[0])
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


def test_hashgrid_encodes_an_empty_batch():
    """No point at all (no ray met an occupied cell): an empty encoding, not a crash (a DTU
    run with the hash-grid preset died here before validation)."""
    enc = HashGridEncoder(n_levels=4, log2_table_size=10, max_resolution=64)
    out = enc(torch.zeros(0, 3, requires_grad=True))
    assert out.shape == (0, enc.out_dim)
    out.sum().backward()


def test_progressive_levels_open_coarse_to_fine_and_are_saved():
    """Neuralangelo's schedule: finer levels output zeros until their step; the FD step follows
    the finest active level; a loaded model encodes as it was trained."""
    from neurecon.fields.neus import NeuSField

    kw = {"n_levels": 4, "n_features": 2, "log2_table_size": 10, "base_resolution": 4,
          "max_resolution": 32, "include_input": False, "backend": "torch"}  # fmt: skip
    torch.manual_seed(0)
    enc = HashGridEncoder(progressive_levels=2, level_every=10, **kw)
    with torch.no_grad():
        enc.embeddings.normal_()
    x = torch.rand(50, 3) * 2 - 1
    full = HashGridEncoder(**kw)
    full.load_state_dict({"embeddings": enc.embeddings.detach()})
    ref = full(x)
    y = enc(x)
    assert torch.equal(y[:, :4], ref[:, :4]) and not y[:, 4:].any()
    field = NeuSField(
        enc, FrequencyEncoder(n_freqs=0), geometric_init=False, gradient="finite_difference"
    )
    coarse_eps = field.fd_eps
    enc.update_step(15)  # 2 + 15 // 10 = 3 levels
    assert int(enc.active_levels) == 3 and not enc(x)[:, 6:].any() and enc(x)[:, 4:6].any()
    assert field.fd_eps < coarse_eps
    enc.update_step(10_000)
    assert torch.equal(enc(x), ref) and field.fd_eps == pytest.approx(full.finest_cell)
    # Saved and restored with the model; checkpoints from before the schedule use every level.
    again = HashGridEncoder(progressive_levels=2, level_every=10, **kw)
    again.load_state_dict(enc.state_dict())
    assert int(again.active_levels) == 4
    old = {k: v for k, v in enc.state_dict().items() if k != "active_levels"}
    again.update_step(0)
    again.load_state_dict(old)
    assert int(again.active_levels) == 4
    with pytest.raises(ConfigError, match="progressive_levels"):
        HashGridEncoder(progressive_levels=0, **kw)
