import importlib.util
import math

import pytest
import torch

from neurecon.encoders import FrequencyEncoder, HashGridEncoder, SphericalHarmonicsEncoder
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


def test_hashgrid_level_layout_follows_tiny_cuda_nn():
    enc = HashGridEncoder(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048)
    # tiny-cuda-nn: scale_l = 16·b^l − 1, res = ⌈scale⌉ + 1, tables min(res³, 2^19) rounded to 8.
    assert enc.res[:3].tolist() == [16, 23, 31]  # b = 128^(1/15) ≈ 1.382
    assert enc.sizes[0] == 16**3 and enc.sizes[-1] == 2**19
    assert enc.dense[:3].all() and not enc.dense[-1]
    assert enc.embeddings.numel() == int(enc.sizes.sum()) * 2


@pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("tinycudann")),
    reason="needs CUDA and tinycudann",
)
def test_hashgrid_torch_and_tcnn_backends_agree():  # pragma: no cover - GPU machines only
    kw = {"n_levels": 8, "log2_table_size": 15, "max_resolution": 512, "include_input": False}
    ref = HashGridEncoder(backend="torch", **kw).cuda()
    fast = HashGridEncoder(backend="tcnn", **kw).cuda()
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.tcnn.params.copy_(ref.embeddings.flatten())
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    assert torch.allclose(fast(x), ref(x), atol=2e-3, rtol=1e-2)  # tcnn computes in fp16


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
