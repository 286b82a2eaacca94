"""The one scene object every dataset produces, and ray batches drawn from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
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


class Scene:
    """Posed images normalised so the region of interest is the unit sphere.

    Attributes:
        images: (V, H, W, 3) uint8 — kept as uint8; converted to float per batch.
        masks: (V, H, W) uint8 in {0, 255}, or None.
        K: (V, 3, 3) float32 intrinsics.   c2w: (V, 4, 4) float32, normalised frame.
        to_world: (4, 4) float64, normalised frame → dataset world frame (NeuS ``scale_mat``).
        train_ids / test_ids: view indices.
        background: (3,) colour the images show where the mask is 0 (used for masked scenes).
        gt_points: (N, 3) float64 ground-truth surface points in WORLD coordinates, or None.
    """

    def __init__(
        self,
        images: np.ndarray,
        K: np.ndarray,
        c2w: np.ndarray,
        to_world: np.ndarray,
        train_ids: Sequence[int],
        test_ids: Sequence[int],
        masks: np.ndarray | None = None,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        gt_points: np.ndarray | None = None,
        name: str = "scene",
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name}: images must be (V, H, W, 3) uint8, got {images.shape}")
        V = images.shape[0]
        if K.shape != (V, 3, 3) or c2w.shape != (V, 4, 4):
            raise ValueError(f"{name}: {V} images but K {K.shape} and c2w {c2w.shape}")
        if masks is not None and masks.shape != images.shape[:3]:
            raise ValueError(f"{name}: masks {masks.shape} do not match images {images.shape}")
        if len(train_ids) == 0:
            raise ValueError(f"{name}: no training views")
        self.name = name
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.masks = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks))
        self.K = torch.as_tensor(K, dtype=torch.float32)
        self.c2w = torch.as_tensor(c2w, dtype=torch.float32)
        self.to_world = np.asarray(to_world, dtype=np.float64)
        self.train_ids = torch.as_tensor(list(train_ids), dtype=torch.long)
        self.test_ids = torch.as_tensor(list(test_ids), dtype=torch.long)
        self.background = torch.as_tensor(background, dtype=torch.float32)
        self.gt_points = gt_points

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def _batch(self, view: Tensor, v: Tensor, u: Tensor, device: torch.device) -> RayBatch:
        o, d = pixel_rays(self.K[view], self.c2w[view], u.float(), v.float())
        rgb = self.images[view, v, u].float() / 255.0
        mask = None if self.masks is None else (self.masks[view, v, u] > 127).float()
        return RayBatch(
            o.to(device), d.to(device), rgb.to(device), None if mask is None else mask.to(device)
        )

    def sample_rays(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> RayBatch:
        """``n`` random rays from random training views (uniform over training pixels)."""
        H, W = self.hw
        idx = torch.randint(0, len(self.train_ids), (n,), generator=generator)
        view = self.train_ids[idx]
        v = torch.randint(0, H, (n,), generator=generator)
        u = torch.randint(0, W, (n,), generator=generator)
        return self._batch(view, v, u, torch.device(device))

    def view_rays(
        self, view: int, chunk: int, device: str | torch.device = "cpu"
    ) -> Iterator[RayBatch]:
        """All rays of one view in row-major chunks of at most ``chunk`` rays."""
        H, W = self.hw
        for start in range(0, H * W, chunk):
            flat = torch.arange(start, min(start + chunk, H * W))
            v, u = flat // W, flat % W
            yield self._batch(torch.full_like(flat, view), v, u, torch.device(device))

    def image(self, view: int) -> np.ndarray:
        """(H, W, 3) float32 image in [0, 1]."""
        return self.images[view].numpy().astype(np.float32) / 255.0

    def mask(self, view: int) -> np.ndarray | None:
        """(H, W) bool foreground mask or None."""
        return None if self.masks is None else self.masks[view].numpy() > 127

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
