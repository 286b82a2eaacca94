"""The loss maths as pure functions; each returns a scalar tensor. The terms that weigh them
are in :mod:`neurecon.losses.terms`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neurecon.errors import ConfigError

COLOR_LOSSES = ("l1", "huber", "mse")
# How the per-channel error becomes one number: "mean" over rays and channels (instant-nsr-pl,
# nerfacc, NeRF), or "sum" over the 3 channels, then mean over rays (NeuS's exp_runner:
# l1_loss(color_error, 0, reduction="sum") / mask_sum), which weighs colour 3x against the
# eikonal and mask terms.
COLOR_REDUCTIONS = ("mean", "sum")


def color_loss(
    pred: Tensor,
    target: Tensor,
    kind: str = "l1",
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Photometric loss over rays (B, 3); with ``mask`` (B,), only foreground rays count.
    ``reduction`` (:data:`COLOR_REDUCTIONS`): mean over channels, or their sum (NeuS)."""
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=0.1)
    elif kind == "mse":
        err = (pred - target) ** 2
    else:
        raise ConfigError(f"loss.color.kind={kind!r}; choose from {list(COLOR_LOSSES)}")
    if reduction not in COLOR_REDUCTIONS:
        raise ConfigError(
            f"loss.color.reduction={reduction!r}; choose from {list(COLOR_REDUCTIONS)}"
        )
    n_channels = 1 if reduction == "sum" else err.shape[-1]
    if mask is None:
        return err.sum(-1).mean() if reduction == "sum" else err.mean()
    return (err * mask[:, None]).sum() / (n_channels * mask.sum()).clamp_min(1.0)


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy between accumulated opacity (B,) and the object mask (B,).

    Written out (as ATen computes it) rather than ``F.binary_cross_entropy``, which checks its
    input's range: a NaN opacity raises there on a CPU and is a device-side assert on CUDA,
    where it must be a NaN loss for the NaN guard."""
    o = opacity.clamp(1e-3, 1 - 1e-3)
    return (
        (mask - 1) * torch.log1p(-o).clamp_min(-100) - mask * torch.log(o).clamp_min(-100)
    ).mean()


def sparse_point_loss(sdf: Tensor) -> Tensor:
    """Geo-NeuS's SDF loss on sparse points: ``mean |sdf|`` of the SDF at points (N,) that lie
    on the surface."""
    return sdf.abs().mean()


def photo_consistency_loss(
    photos: list[Tensor | None],
    K: Tensor,
    c2w: Tensor,
    sources: Tensor,
    ref: Tensor,
    u: Tensor,
    v: Tensor,
    points: Tensor,
    normals: Tensor,
    dirs: Tensor,
    half: int = 5,
    keep: int = 2,
    min_variance: float = 1e-4,
) -> Tensor | None:
    """Mean ``1 − NCC`` of reference patches against their warps into source views
    (:mod:`neurecon.geometry.photo`), over the best ``keep`` sources of each ray; None when no
    ray qualifies.

    Args:
        photos: per view, its (H, W) grey photo in [0, 1] (None: not a training view).
        K: (V, 3, 3), c2w: (V, 4, 4) every view's camera.  sources: (B, k) source views per ray
            (-1: none).  ref: (B,) each ray's view; u, v: (B,) its pixel.
        points, normals: (B, 3) the rendered surface point and normal (need not be unit).
        dirs: (B, 3) the rays' directions.
    Rays are skipped whose reference patch leaves its photo or is flat (variance below
    ``min_variance``), whose surface is seen at a grazing angle or from behind (cosine < 0.1),
    or with fewer than ``keep`` sources whose warped patch lies inside their photo.
    """
    from neurecon.geometry.photo import (
        ncc,
        patch_offsets,
        patch_variance,
        plane_homography,
        sample_image,
        warp_pixels,
    )

    B, k = sources.shape
    dev = points.device
    pix = torch.stack([u, v], dim=-1).to(points.dtype)[:, None] + patch_offsets(half, dev)[None]
    P = pix.shape[1]
    ref_patch = points.new_zeros(B, P)
    ref_ok = torch.zeros(B, dtype=torch.bool, device=dev)
    for view in ref.unique().tolist():
        sel = ref == view
        vals, inside = sample_image(photos[view][..., None], pix[sel])  # integer taps: exact
        ref_patch[sel], ref_ok[sel] = vals[..., 0], inside.all(-1)
    n = F.normalize(normals, dim=-1)
    ok = ref_ok & (patch_variance(ref_patch) > min_variance) & ((n * dirs).sum(-1) < -0.1)
    errors = torch.full((B, k), torch.inf, dtype=points.dtype, device=dev)
    for j in range(k):
        for view in sources[:, j].unique().tolist():
            sel = ok & (sources[:, j] == view)
            if view < 0 or not bool(sel.any()):
                continue
            Hm = plane_homography(K[ref[sel]], c2w[ref[sel]], K[view], c2w[view],
                                  points[sel], n[sel])  # fmt: skip
            vals, inside = sample_image(photos[view][..., None], warp_pixels(Hm, pix[sel]))
            err = 1.0 - ncc(ref_patch[sel], vals[..., 0])
            errors[sel, j] = torch.where(inside.all(-1), err, torch.inf)
    best = errors.sort(dim=1).values[:, :keep]
    ok &= torch.isfinite(best).all(dim=1)
    return best[ok].mean() if bool(ok.any()) else None
