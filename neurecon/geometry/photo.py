"""Multi-view photometric consistency (Geo-NeuS, NeuralWarp): a small patch around a reference
pixel, warped into a source view through the homography of the surface's tangent plane, and
compared by normalised cross-correlation. Pure functions; the loss term is
:class:`~neurecon.losses.terms.PhotoConsistencyLoss`.

Cameras follow the package's convention (:func:`~neurecon.data.cameras.pixel_rays`): OpenCV
axes, ``c2w`` camera → frame, pixel centres at integer coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_offsets(half: int, device: torch.device | None = None) -> Tensor:
    """(P, 2) pixel offsets (du, dv) of a (2·half + 1)² patch, row-major, P = (2·half + 1)²."""
    r = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    dv, du = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([du.reshape(-1), dv.reshape(-1)], dim=-1)


def plane_homography(
    K_ref: Tensor, c2w_ref: Tensor, K_src: Tensor, c2w_src: Tensor, point: Tensor, normal: Tensor
) -> Tensor:
    """(B, 3, 3) homographies from reference pixels to source pixels induced by the planes
    through ``point`` with ``normal`` (frame coordinates): ``H = K_s (R + t nᵀ / d) K_r⁻¹``, with
    (R, t) the reference camera → source camera motion and ``nᵀX = d`` the plane in the
    reference camera's frame.

    Args:
        K_ref, K_src: (B, 3, 3) or (3, 3).  c2w_ref, c2w_src: (B, 4, 4) or (4, 4).
        point, normal: (B, 3) a point on each plane and its normal (need not be unit).
    """
    B = point.shape[0]
    K_ref, K_src, c2w_ref, c2w_src = (
        m.expand(B, *m.shape[-2:]) for m in (K_ref, K_src, c2w_ref, c2w_src)
    )
    w2c_ref = torch.linalg.inv(c2w_ref)
    rel = torch.linalg.inv(c2w_src) @ c2w_ref  # reference camera → source camera
    R, t = rel[:, :3, :3], rel[:, :3, 3]
    n_c = torch.einsum("bij,bj->bi", w2c_ref[:, :3, :3], normal)
    X_c = torch.einsum("bij,bj->bi", w2c_ref[:, :3, :3], point) + w2c_ref[:, :3, 3]
    d = (n_c * X_c).sum(-1)
    # A plane through the reference camera's centre (d = 0) has no homography: keep it finite;
    # such a patch is edge-on and its NCC is discarded by the caller's angle test.
    d = torch.where(d.abs() < 1e-8, torch.full_like(d, 1e-8), d)
    M = R + t[:, :, None] * n_c[:, None, :] / d[:, None, None]
    return K_src @ M @ torch.linalg.inv(K_ref)


def warp_pixels(H: Tensor, pixels: Tensor) -> Tensor:
    """(B, P, 2) source pixels of reference ``pixels`` (B, P, 2) (u, v) through ``H``
    (B, 3, 3); points that map behind the source camera get a NaN."""
    x = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    y = torch.einsum("bij,bpj->bpi", H, x)
    z = y[..., 2:]
    return torch.where(z > 1e-8, y[..., :2] / z.clamp_min(1e-8), torch.nan)


def sample_image(image: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples of ``image`` (H, W, C) float at ``pixels`` (..., 2) (u, v; centres at
    integers). Returns (values (..., C), inside (...) bool: every tap within the image)."""
    Hh, Ww, C = image.shape
    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= 0) & (u <= Ww - 1) & (v >= 0) & (v <= Hh - 1)  # NaN compares false
    g = torch.stack([2 * u / max(Ww - 1, 1) - 1, 2 * v / max(Hh - 1, 1) - 1], dim=-1)
    g = torch.nan_to_num(g, nan=-2.0).reshape(1, 1, -1, 2)
    out = F.grid_sample(image.permute(2, 0, 1)[None], g.to(image.dtype), align_corners=True)
    return out[0, :, 0].T.reshape(*pixels.shape[:-1], C), inside


def ncc(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """(...,) normalised cross-correlation of patches ``a`` and ``b`` (..., P): 1 for equal
    patches, invariant to a positive gain and an offset of either, in [-1, 1] (Cauchy-Schwarz;
    ``eps`` only keeps a flat patch finite, at 0: an additive eps inside the root biased a
    low-contrast patch's NCC by 0.01-0.05). Flat patches carry no information: the caller
    drops them (:func:`patch_variance`)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    cov = (a * b).mean(-1)
    # The clamp comes before the root: a flat patch's sqrt(0) has an infinite derivative, and
    # 0 x inf made the whole step's gradient NaN (a source patch on a flat background).
    return cov / torch.sqrt((a.square().mean(-1) * b.square().mean(-1)).clamp_min(eps**2))


def patch_variance(a: Tensor) -> Tensor:
    """(...,) the variance of patches ``a`` (..., P)."""
    return a.var(-1, unbiased=False)


def gray(rgb: Tensor) -> Tensor:
    """(...,) luma of (..., 3) colours (ITU-R BT.601), as Geo-NeuS compares grey patches."""
    return rgb @ torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)


def source_views(
    c2w: Tensor, candidates: Tensor, k: int, min_deg: float = 5.0, max_deg: float = 45.0
) -> Tensor:
    """(V, k) for each view, the ``k`` ``candidates`` (C,) whose optical axes are closest in
    angle to its own within [min_deg, max_deg] (DTU's pairs and NeuralWarp's choice: a source
    too close adds no parallax, one too far sees another side). A view with fewer such
    neighbours is padded with its closest candidates beyond the range; its own index never
    appears. -1 where there are fewer than k other candidates."""
    axes = c2w[:, :3, 2]
    cand = axes[candidates]
    ang = torch.rad2deg(torch.arccos((axes @ cand.T).clamp(-1, 1)))  # (V, C)
    own = torch.arange(len(c2w), device=c2w.device)[:, None] == candidates[None]
    in_range = (ang >= min_deg) & (ang <= max_deg)
    # Rank: in-range ones first by angle, then the rest by angle; the view itself last.
    key = ang + 1e3 * (~in_range) + 1e6 * own
    order = key.argsort(dim=1)[:, :k]
    picked = candidates[order]
    valid = ~torch.gather(own, 1, order)
    picked = torch.where(valid, picked, torch.full_like(picked, -1))
    if picked.shape[1] < k:
        pad = torch.full((len(c2w), k - picked.shape[1]), -1, dtype=picked.dtype)
        picked = torch.cat([picked, pad.to(picked.device)], dim=1)
    return picked
