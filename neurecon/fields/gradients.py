"""Finite-difference SDF gradients as pure functions (the stencil and the difference), so
fields batch the seven evaluations into one pass and tests can check the maths on analytic
SDFs."""

from __future__ import annotations

import torch
from torch import Tensor


def stencil(x: Tensor, eps: float) -> Tensor:
    """``x`` followed by its six neighbours ``x ± eps·e_i``. Shapes: (N, 3) → (7N, 3), laid out
    as [x, x+e0, x+e1, x+e2, x−e0, x−e1, x−e2], each block N rows."""
    off = torch.eye(3, device=x.device, dtype=x.dtype) * eps
    plus = (x[None] + off[:, None]).reshape(-1, 3)
    minus = (x[None] - off[:, None]).reshape(-1, 3)
    return torch.cat([x, plus, minus])


def central_difference(values: Tensor, eps: float) -> Tensor:
    """∇f ≈ (f(x + eps·e_i) − f(x − eps·e_i)) / (2 eps) from ``values`` = f on a
    :func:`stencil`. Shapes: (7N,) → (N, 3). Error O(eps²·f''') plus rounding O(ulp(f)/eps)."""
    n = values.shape[0] // 7
    plus, minus = values[n : 4 * n].reshape(3, n), values[4 * n :].reshape(3, n)
    return ((plus - minus) / (2 * eps)).T
