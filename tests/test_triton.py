"""The Triton hash grid (``encoder.backend=triton``) against the PyTorch backend: forward, both
gradients, and the double backward of the eikonal term. On a CPU the kernels run under Triton's
interpreter (``TRITON_INTERPRET=1``, set in conftest.py before neurecon is imported)."""

from __future__ import annotations

import pytest
import torch

from neurecon.encoders import HashGridEncoder
from neurecon.encoders.hashgrid_triton import interpreting, triton

pytestmark = [
    pytest.mark.skipif(triton is None, reason="triton is not installed (pip install triton)"),
    pytest.mark.skipif(
        triton is not None and not (torch.cuda.is_available() or interpreting()),
        reason="no CUDA, and TRITON_INTERPRET=1 was not set before neurecon was imported",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pair(**kw):
    """A torch and a triton encoder with the same table; dense and hashed levels both."""
    kw = {"n_levels": 4, "n_features": 2, "log2_table_size": 10, "base_resolution": 4,
          "max_resolution": 64, "include_input": False, **kw}  # fmt: skip
    torch.manual_seed(0)
    ref = HashGridEncoder(backend="torch", **kw).to(DEVICE)
    fast = HashGridEncoder(backend="triton", **kw).to(DEVICE)
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.embeddings.copy_(ref.embeddings)
    assert fast.backend == "triton" and bool(ref.dense.any()) and not bool(ref.dense.all())
    return ref, fast


@pytest.mark.parametrize("n_features", [1, 2, 4])
def test_triton_forward_and_both_gradients_match_torch(n_features):
    ref, fast = _pair(n_features=n_features)
    x = torch.rand(120, 3, device=DEVICE) * 2.2 - 1.1  # some points outside: clamped
    w = torch.randn(120, ref.out_dim, device=DEVICE)
    outs, grads = [], []
    for enc in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y = enc(xi)
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append((xi.grad, enc.embeddings.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-4)  # input
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-5)  # table
    assert grads[0][1].abs().sum() > 0 and grads[0][0].abs().sum() > 0


def test_triton_double_backward_matches_torch_for_an_eikonal_loss():
    """``field.gradient=analytic``: the eikonal term differentiates the SDF's spatial gradient,
    so the table and the MLP get gradients through the encoder's backward."""
    ref, fast = _pair()
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(ref.out_dim, 16), torch.nn.Softplus(beta=10), torch.nn.Linear(16, 1)
    ).to(DEVICE)
    x = torch.rand(120, 3, device=DEVICE) * 1.8 - 0.9
    results = []
    for enc in (ref, fast):
        mlp.zero_grad()
        xi = x.clone().requires_grad_(True)
        sdf = mlp(enc(xi))
        (g,) = torch.autograd.grad(sdf.sum(), xi, create_graph=True)
        loss = ((g.norm(dim=-1) - 1) ** 2).mean()
        loss.backward()
        results.append((g.detach(), enc.embeddings.grad.clone(), mlp[0].weight.grad.clone()))
    (g0, t0, m0), (g1, t1, m1) = results
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t1, t0, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-3, atol=1e-6)
    assert t0.abs().sum() > 0 and m0.abs().sum() > 0


def test_triton_handles_no_points():
    _, fast = _pair()
    assert fast(torch.zeros(0, 3, device=DEVICE)).shape == (0, fast.out_dim)
