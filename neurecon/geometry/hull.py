"""The visual hull of object masks: which points some view that sees them puts outside its mask.

Standard shape-from-silhouette: a point belongs to the hull when every view whose image holds
its projection has it inside the mask (dilated, to forgive mask errors). One rule serves three
users: carving the occupancy grid before training (a whole cell, so the test widens by the
cell's projected radius), the default cleaning of a masked scene's mesh, and the floater figure
``mesh/outside_hull`` (the share of mesh vertices outside the hull).

A point a view does not see (behind it, or projecting outside its image) is not judged by that
view. Dilation is a Euclidean distance to the mask: a pixel within ``r`` of a mask pixel is in
the mask dilated by a disk of radius ``r`` (scikit-image's ``disk(r)``: x² + y² <= r²).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

CHUNK = 1 << 16  # points projected at a time (bounds the temporaries)
# A ball's test also forgives the masks' sampling: the nearest pixel centre is up to 0.71 px
# from the projection, and a silhouette edge between pixel centres is marked on either side.
PIXEL_SLACK = 1.0


def mask_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask → (H, W) float32 distance in pixels to its nearest mask pixel (0 on the
    mask; +inf everywhere for an empty mask: nothing is inside it). Single precision keeps
    ``sqrt(r² + 1) > r`` for the papers' 50 px disks (half precision would not)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return np.full(m.shape, np.inf, np.float32)
    return distance_transform_edt(~m).astype(np.float32)


class VisualHull:
    """The hull of ``masks`` seen through ``projections``.

    Args:
        projections: (V, 3, 4) or (V, 4, 4) point → pixel projections (any frame: the points
            given to :meth:`outside` must be in the same one).
        masks: per view (H_i, W_i) bool masks, at the resolution the projections refer to.
        px_scale: mask pixels per "photo pixel" of the dilations passed in (1 / the dataset's
            downscale, so that a dilation means the same on every resolution).
    """

    def __init__(
        self, projections: np.ndarray, masks: Sequence[np.ndarray], px_scale: float = 1.0
    ) -> None:
        if len(projections) != len(masks):
            raise ValueError(f"visual hull: {len(projections)} projections, {len(masks)} masks")
        self.P = np.asarray(projections, np.float64)[:, :3]
        self.dist = [mask_distance(m) for m in masks]
        self.px_scale = float(px_scale)

    def outside(
        self, points: np.ndarray, dilate_px: float = 0.0, extent: float = 0.0
    ) -> np.ndarray:
        """(N,) bool: points (N, 3) that some view seeing them has outside its mask.

        ``dilate_px``: the masks' dilation in photo pixels (times ``px_scale`` in the masks').
        ``extent``: each point stands for a ball of this radius (same frame): a view keeps it
        when the ball's projection can reach the dilated mask. The ball's projected radius is
        bounded through the projection's Jacobian at the point (first order, plus
        ``PIXEL_SLACK``).
        """
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.zeros(len(pts), bool)
        for s in range(0, len(pts), CHUNK):
            out[s : s + CHUNK] = self._outside(pts[s : s + CHUNK], dilate_px, extent)
        return out

    def _outside(self, pts: np.ndarray, dilate_px: float, extent: float) -> np.ndarray:
        xh = np.c_[pts, np.ones(len(pts))]
        out = np.zeros(len(pts), bool)
        r0 = dilate_px * self.px_scale
        for P, dist in zip(self.P, self.dist, strict=True):
            H, W = dist.shape
            p = xh @ P.T
            z = p[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u, v = p[:, 0] / z, p[:, 1] / z
            seen = (z > 0) & np.isfinite(u) & np.isfinite(v)
            # Nearest pixel, as DTU's culling rounds (pixel centres at integers).
            ui = np.round(np.where(seen, u, -1)).astype(np.int64)
            vi = np.round(np.where(seen, v, -1)).astype(np.int64)
            seen &= (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
            slack = np.full(len(pts), r0)
            if extent > 0:
                # J = d(u, v)/dX, rows (P_row - u P_2) / z: its largest singular value is how
                # far (px) a displacement of unit length can move the projection.
                with np.errstate(divide="ignore", invalid="ignore"):
                    ju = (P[0, :3][None] - u[:, None] * P[2, :3][None]) / z[:, None]
                    jv = (P[1, :3][None] - v[:, None] * P[2, :3][None]) / z[:, None]
                a, c, b = (ju * ju).sum(-1), (jv * jv).sum(-1), (ju * jv).sum(-1)
                sigma = np.sqrt(0.5 * (a + c) + np.sqrt(0.25 * (a - c) ** 2 + b * b))
                grow = extent * np.nan_to_num(sigma) + PIXEL_SLACK
                slack = slack + np.where(seen, grow, 0.0)
            d = np.full(len(pts), np.inf)
            d[seen] = dist[vi[seen], ui[seen]]
            out |= seen & (d > slack)
        return out
