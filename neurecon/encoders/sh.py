"""Real spherical harmonics of unit view directions (as in instant-ngp / tiny-cuda-nn)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError


class SphericalHarmonicsEncoder(nn.Module):
    """Real SH basis up to ``degree`` (1..4) of unit vectors.

    Shapes: (N, 3) unit directions → (N, degree²).
    """

    def __init__(self, in_dim: int = 3, degree: int = 4) -> None:
        super().__init__()
        if in_dim != 3 or not 1 <= degree <= 4:
            raise ConfigError(f"SH encoder: need in_dim=3 and 1 <= degree <= 4, got {degree}")
        self.in_dim, self.degree, self.out_dim = in_dim, degree, degree**2

    def forward(self, d: Tensor) -> Tensor:
        x, y, z = d.unbind(-1)
        out = [torch.full_like(x, 0.28209479177387814)]
        if self.degree > 1:
            out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
        if self.degree > 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out += [
                1.0925484305920792 * xy,
                -1.0925484305920792 * yz,
                0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * xz,
                0.54627421529603959 * (xx - yy),
            ]
        if self.degree > 3:
            out += [
                0.59004358992664352 * y * (-3.0 * xx + yy),
                2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz),
                0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz),
                1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy),
            ]
        return torch.stack(out, dim=-1)
