"""The one scene object every dataset produces, and ray batches drawn from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from neurecon.data.cameras import pixel_rays


@dataclass
class RayBatch:
    """Rays in the normalised frame. ``rgb`` / ``mask`` are targets (None when unknown).

    Shapes: origins, dirs (B, 3); rgb (B, 3) float in [0, 1]; mask (B,) float in {0, 1}.
    """

    origins: Tensor
    dirs: Tensor
    rgb: Tensor | None = None
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]


def _as_list(arrays: np.ndarray | Sequence[np.ndarray] | None) -> list[np.ndarray] | None:
    if arrays is None:
        return None
    return list(arrays)  # a (V, H, W, ...) array or a sequence of per-view arrays


class Scene:
    """Posed images normalised so the region of interest is the unit sphere.

    Every view may have its own size and intrinsics (mixed portrait / landscape photos, several
    cameras). Pixels live in one ragged uint8 store: view ``i`` is the row-major slice
    ``offsets[i]:offsets[i + 1]`` of ``pixels``, so a random training pixel is one flat index.

    Attributes:
        pixels: (P, 3) uint8, all views' pixels — kept as uint8; converted to float per batch.
        masks: (P,) uint8 in {0, 255}, same layout, or None.
        valid: (P,) bool, or None (all valid): pixels with no source data (outside the source
            image after undistortion). Rays are never sampled there and metrics skip them.
        sizes: (V, 2) int64 (H, W) per view.   offsets: (V + 1,) int64 into ``pixels``.
        K: (V, 3, 3) float32 intrinsics.   c2w: (V, 4, 4) float32, normalised frame.
        to_world: (4, 4) float64, normalised frame → dataset world frame (NeuS ``scale_mat``).
        train_ids / test_ids: view indices.
        background_color: (3,) colour the images show where the mask is 0 (used for masked scenes).
        gt_points: (N, 3) float64 ground-truth surface points in WORLD coordinates, or None.
        gt_mesh: the exact ground-truth surface as a mesh in WORLD coordinates, or None (a scene
            with only points). Chamfer measures distances to it, not to points.

    Args:
        images: (V, H, W, 3) uint8, or a sequence of V (H_i, W_i, 3) uint8 arrays.
        masks / valid: (V, H, W) or per-view (H_i, W_i) arrays (uint8 masks, bool validity).
        ground_truth: a function returning ``(gt_points, gt_mesh)``, called on first use of
            either (making them costs seconds that runs which never mesh should not pay).
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        K: np.ndarray,
        c2w: np.ndarray,
        to_world: np.ndarray,
        train_ids: Sequence[int],
        test_ids: Sequence[int],
        masks: np.ndarray | Sequence[np.ndarray] | None = None,
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        gt_points: np.ndarray | None = None,
        name: str = "scene",
        ground_truth: Callable[[], tuple[np.ndarray, trimesh.Trimesh | None]] | None = None,
        valid: np.ndarray | Sequence[np.ndarray | None] | None = None,
    ) -> None:
        imgs = _as_list(images)
        if not imgs or any(
            im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3 for im in imgs
        ):
            raise ValueError(f"{name}: images must be (H, W, 3) uint8 arrays")
        V = len(imgs)
        if K.shape != (V, 3, 3) or c2w.shape != (V, 4, 4):
            raise ValueError(f"{name}: {V} images but K {K.shape} and c2w {c2w.shape}")
        mlist, vlist = _as_list(masks), _as_list(valid)
        for what, arr in (("masks", mlist), ("valid", vlist)):
            if arr is not None and (
                len(arr) != V
                or any(
                    a is not None and a.shape != im.shape[:2]
                    for a, im in zip(arr, imgs, strict=False)
                )
            ):
                raise ValueError(f"{name}: {what} do not match the images' sizes")
        if len(train_ids) == 0:
            raise ValueError(f"{name}: no training views")
        self.name = name
        self.sizes = torch.tensor([im.shape[:2] for im in imgs], dtype=torch.long)
        counts = self.sizes[:, 0] * self.sizes[:, 1]
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        if isinstance(images, np.ndarray):
            # One (V, H, W, 3) array already: its memory is the store (no copy).
            self.pixels = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, 3)
        else:
            self.pixels = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in imgs]))
        self.masks = None
        if isinstance(masks, np.ndarray):
            self.masks = torch.from_numpy(np.ascontiguousarray(masks, np.uint8)).reshape(-1)
        elif mlist is not None:
            self.masks = torch.from_numpy(np.concatenate([m.reshape(-1) for m in mlist]))
        self.valid = None
        if vlist is not None and any(v is not None and not v.all() for v in vlist):
            self.valid = torch.from_numpy(
                np.concatenate(
                    [
                        np.ones(im.shape[:2], bool).reshape(-1) if v is None else v.reshape(-1)
                        for v, im in zip(vlist, imgs, strict=True)
                    ]
                )
            )
        self.K = torch.as_tensor(K, dtype=torch.float32)
        self.c2w = torch.as_tensor(c2w, dtype=torch.float32)
        self.to_world = np.asarray(to_world, dtype=np.float64)
        self.train_ids = torch.as_tensor(list(train_ids), dtype=torch.long)
        self.test_ids = torch.as_tensor(list(test_ids), dtype=torch.long)
        self.background_color = torch.as_tensor(background_color, dtype=torch.float32)
        self._gt_points, self._gt_mesh = gt_points, None
        self._ground_truth = ground_truth

    def _resolve_ground_truth(self) -> None:
        if self._ground_truth is not None:
            pts, self._gt_mesh = self._ground_truth()
            self._gt_points = np.asarray(pts, dtype=np.float64)
            self._ground_truth = None

    @property
    def gt_points(self) -> np.ndarray | None:
        """(N, 3) float64 ground-truth surface points in world coordinates, or None."""
        self._resolve_ground_truth()
        return self._gt_points

    @property
    def gt_mesh(self) -> trimesh.Trimesh | None:
        """The exact ground-truth surface in world coordinates, or None."""
        self._resolve_ground_truth()
        return self._gt_mesh

    @property
    def num_views(self) -> int:
        return self.sizes.shape[0]

    @property
    def uniform(self) -> bool:
        """True when every view has the same size."""
        return bool((self.sizes == self.sizes[0]).all())

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) shared by all views; a scene of mixed sizes has none (use :meth:`size`)."""
        if not self.uniform:
            raise ValueError(f"{self.name}: views differ in size; use scene.size(view)")
        return self.size(0)

    def size(self, view: int) -> tuple[int, int]:
        """(H, W) of one view."""
        return int(self.sizes[view, 0]), int(self.sizes[view, 1])

    @property
    def images(self) -> Tensor:
        """(V, H, W, 3) uint8 view of the store (same-size scenes only)."""
        return self.pixels.reshape(self.num_views, *self.hw, 3)

    def _flat(self, view: Tensor, v: Tensor, u: Tensor) -> Tensor:
        """(B,) indices into the ragged pixel store of (view, row v, column u)."""
        return self.offsets[view] + v * self.sizes[view, 1] + u

    def _batch(self, view: Tensor, v: Tensor, u: Tensor, device: torch.device) -> RayBatch:
        o, d = pixel_rays(self.K[view], self.c2w[view], u.float(), v.float())
        flat = self._flat(view, v, u)
        rgb = self.pixels[flat].float() / 255.0
        mask = None if self.masks is None else (self.masks[flat] > 127).float()
        return RayBatch(
            o.to(device), d.to(device), rgb.to(device), None if mask is None else mask.to(device)
        )

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` uniform training pixels as (view, row, column)."""
        if self.uniform:  # three draws: the sequence same-size scenes have always used
            H, W = self.size(0)
            idx = torch.randint(0, len(self.train_ids), (n,), generator=generator)
            view = self.train_ids[idx]
            v = torch.randint(0, H, (n,), generator=generator)
            u = torch.randint(0, W, (n,), generator=generator)
            return view, v, u
        # Mixed sizes: a flat index over all training pixels (larger views weigh more).
        counts = self.sizes[self.train_ids, 0] * self.sizes[self.train_ids, 1]
        ends = counts.cumsum(0)
        r = torch.randint(0, int(ends[-1]), (n,), generator=generator)
        i = torch.searchsorted(ends, r, right=True)
        view = self.train_ids[i]
        p = r - (ends[i] - counts[i])
        W = self.sizes[view, 1]
        return view, p // W, p % W

    def sample_rays(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> RayBatch:
        """``n`` random rays from random training views (uniform over valid training pixels)."""
        view, v, u = self._draw(n, generator)
        if self.valid is not None:  # redraw pixels without source data (a few rounds at most)
            bad = ~self.valid[self._flat(view, v, u)]
            for _ in range(100):
                if not bad.any():
                    break
                k = int(bad.sum())
                view[bad], v[bad], u[bad] = self._draw(k, generator)
                bad = ~self.valid[self._flat(view, v, u)]
        return self._batch(view, v, u, torch.device(device))

    def _view(self, store: Tensor, view: int) -> Tensor:
        return store[self.offsets[view] : self.offsets[view + 1]].reshape(*self.size(view), -1)

    def image_u8(self, view: int) -> np.ndarray:
        """(H, W, 3) uint8 image (no copy)."""
        return self._view(self.pixels, view).numpy()

    def image(self, view: int) -> np.ndarray:
        """(H, W, 3) float32 image in [0, 1]."""
        return self.image_u8(view).astype(np.float32) / 255.0

    def mask(self, view: int) -> np.ndarray | None:
        """(H, W) bool foreground mask or None."""
        return None if self.masks is None else self._view(self.masks, view)[..., 0].numpy() > 127

    def valid_mask(self, view: int) -> np.ndarray | None:
        """(H, W) bool: pixels with source data; None when all are valid."""
        return None if self.valid is None else self._view(self.valid, view)[..., 0].numpy()

    def world_projections(self) -> np.ndarray:
        """(V, 3, 4) projections of WORLD points to pixels (``K [R|t] to_world⁻¹``)."""
        w2c = np.linalg.inv(self.c2w.double().numpy())  # normalised frame → camera
        P = np.einsum("vij,vjk->vik", self.K.double().numpy(), w2c[:, :3])
        return P @ np.linalg.inv(self.to_world)

    def to_world_points(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) normalised-frame points → world frame."""
        return pts @ self.to_world[:3, :3].T + self.to_world[:3, 3]


def split_ids(n: int, test_every: int, train_on_test: bool = False) -> tuple[list[int], list[int]]:
    """Hold out every ``test_every``-th view (the NeRF-paper convention). 0 disables the split."""
    test = list(range(0, n, test_every)) if test_every > 0 else []
    train = [i for i in range(n) if train_on_test or i not in test]
    return train, test or list(range(n))
