"""Volume-rendering maths as pure functions, with shapes: no modules, no state, no sampler.

The renderers (:mod:`neurecon.render.neus`, :mod:`neurecon.render.nerf`) place samples — with
the occupancy grid (:mod:`neurecon.render.occupancy`) or densely — and call these, as nerfacc's
``volrend.py`` does. Two layouts: *dense* (B, S) per ray, and *packed* (N,) samples sorted by
ray with ``ray`` (N,) ray indices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def density_alpha(density: Tensor, delta: Tensor) -> Tensor:
    """Opacity of an interval of length ``delta`` in a medium of ``density``: ``1 − e^{−σδ}``."""
    return 1.0 - torch.exp(-density * delta)


def neus_alpha(sdf_prev: Tensor, sdf_next: Tensor, inv_s: Tensor | float) -> Tensor:
    """Discrete opacity between two SDF values (eq. 13 of NeuS). Shapes: any, broadcast."""
    prev_cdf = torch.sigmoid(sdf_prev * inv_s)
    next_cdf = torch.sigmoid(sdf_next * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def render_weights_from_alpha(alpha: Tensor) -> Tensor:
    """Compositing weights ``w_i = α_i Π_{j<i} (1 - α_j)``. Shapes: (B, S) → (B, S)."""
    trans = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], dim=-1), dim=-1
    )[:, :-1]
    return alpha * trans


def ray_starts(ray: Tensor, n_rays: int) -> Tensor:
    """(B,) the index of each ray's first packed sample, for ``ray`` (N,) long sorted by ray
    (a ray without samples gets the next ray's start)."""
    counts = torch.bincount(ray, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def packed_transmittance(alpha: Tensor, ray: Tensor, n_rays: int) -> Tensor:
    """Exclusive transmittance ``Π_{j<i} (1 − α_j)`` of packed samples (sorted by ray).

    Shapes: alpha (N,), ray (N,) long → (N,). A cumulative sum of ``log(1 − α)`` minus its
    value at each ray's first sample, in float64 so that long packed arrays (millions of
    samples) do not lose the small per-ray sums to cancellation.
    """
    if alpha.numel() == 0:
        return alpha
    log_t = torch.log1p(-alpha.double().clamp(max=1.0 - 1e-7))
    excl = torch.cumsum(log_t, 0) - log_t
    return torch.exp(excl - excl[ray_starts(ray, n_rays)[ray]]).to(alpha.dtype)


def packed_weights(alpha: Tensor, ray: Tensor, n_rays: int) -> Tensor:
    """Compositing weights ``α_i Π_{j<i} (1 − α_j)`` for packed samples (sorted by ray)."""
    return alpha * packed_transmittance(alpha, ray, n_rays)


def accumulate(values: Tensor, ray: Tensor, n_rays: int) -> Tensor:
    """Per-ray sums of packed ``values`` (N, C) or (N,) → (B, C) or (B,), in float32 (under
    autocast the field's outputs may be half precision; sums of many samples should not be)."""
    dtype = torch.promote_types(values.dtype, torch.float32)
    out = values.new_zeros((n_rays, *values.shape[1:]), dtype=dtype)
    return out.index_add(0, ray, values.to(dtype))


@torch.no_grad()
def sample_pdf(bins: Tensor, weights: Tensor, n: int, det: bool = True) -> Tensor:
    """Draw ``n`` samples per ray from the piecewise-constant pdf given by ``weights``.

    Shapes: bins (B, S+1) edges, weights (B, S) → (B, n) ray distances.
    """
    weights = weights + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    if det:
        u = torch.linspace(0.5 / n, 1.0 - 0.5 / n, n, device=bins.device).expand(cdf.shape[0], n)
    else:
        u = torch.rand(cdf.shape[0], n, device=bins.device)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp_min(0)
    above = idx.clamp_max(cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def stratified(near: Tensor, far: Tensor, n: int, perturb: bool) -> Tensor:
    """``n`` sorted distances in [near, far] per ray, jittered within strata when ``perturb``."""
    t = torch.linspace(0.0, 1.0, n, device=near.device)
    z = near[:, None] + (far - near)[:, None] * t
    if perturb:
        step = (far - near)[:, None] / n
        z = z + (torch.rand_like(z) - 0.5) * step
    return z


def carved_violation(sdf: Tensor, carved: Tensor) -> Tensor:
    """Mean ``relu(−sdf)`` (N,) over the points ``carved`` (N,) bool, known to be empty space
    (0 when there is none); the mean over carved points without boolean indexing, whose
    data-dependent size would make the host wait for the device."""
    c = carved.to(sdf.dtype)
    return (torch.relu(-sdf.reshape(-1)) * c).sum() / c.sum().clamp_min(1.0)
