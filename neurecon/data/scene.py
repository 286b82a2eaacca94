"""The one scene object every dataset produces, and ray batches drawn from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
import trimesh
from torch import Tensor

from neurecon.data import rays
from neurecon.data.rays import RayBatch
from neurecon.geometry.hull import VisualHull


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
        sfm_points: (N, 3) float32 sparse structure-from-motion points in the NORMALISED frame
            (a COLMAP model's, nerfstudio's ``ply_file_path``), or None: the sparse-point SDF
            term (:class:`~neurecon.losses.terms.SparsePointsLoss`) puts them on the surface.

    Args:
        images: (V, H, W, 3) uint8, or a sequence of V (H_i, W_i, 3) uint8 arrays.
        masks / valid: (V, H, W) or per-view (H_i, W_i) arrays (uint8 masks, bool validity).
        ground_truth: a function returning ``(gt_points, gt_mesh)``, called on first use of
            either (making them costs seconds that runs which never mesh should not pay).
        device: ``dataset.device``, where training keeps the pixels (:mod:`neurecon.data.rays`):
            auto | device | host.
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
        device: str = "auto",
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
        if device not in rays.PLACEMENTS:
            raise ValueError(f"dataset.device={device!r}; choose from {list(rays.PLACEMENTS)}")
        self.placement = device
        self.name = name
        self.sfm_points: torch.Tensor | None = None  # a loader sets it (set_sfm_points)
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

    @property
    def store(self) -> rays.PixelStore:
        """The pixel store on the host (the scene's own tensors, no copy), for
        :mod:`neurecon.data.rays`."""
        total, hw = self._train_pixels, self._uniform_hw
        valid_share = 1.0 if self.valid is None else self._valid_train_pixels / total
        return rays.PixelStore(
            self.pixels, self.masks, self.valid, self.sizes, self.offsets, self.K, self.c2w,
            self.train_ids, hw, total, rays.redraw_rounds(valid_share),
        )  # fmt: skip

    @cached_property
    def _train_pixels(self) -> int:
        """The number of training pixels (views and sizes are fixed at load)."""
        return int((self.sizes[self.train_ids, 0] * self.sizes[self.train_ids, 1]).sum())

    @cached_property
    def _uniform_hw(self) -> tuple[int, int] | None:
        return self.size(0) if self.uniform else None

    @cached_property
    def _valid_train_pixels(self) -> int:
        """The number of training pixels with source data (``valid`` is set once, at load)."""
        return sum(int(self._view(self.valid, int(i)).sum()) for i in self.train_ids)

    def training_store(self, device: torch.device) -> rays.PixelStore:
        """The store training on ``device`` draws from, placed by ``dataset.device``."""
        return rays.place_store(self.store, device, self.placement)

    def sample_rays(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> RayBatch:
        """``n`` random rays from random training views (uniform over valid training pixels),
        drawn on the host and moved to ``device`` (training draws on its device instead:
        :meth:`training_store`)."""
        batch = rays.sample_batch(self.store, n, generator)
        dev = torch.device(device)
        return RayBatch(*(None if t is None else t.to(dev) for t in vars(batch).values()))

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

    def projections(self) -> np.ndarray:
        """(V, 3, 4) projections of normalised-frame points to pixels (``K [R|t]``)."""
        w2c = np.linalg.inv(self.c2w.double().numpy())
        return np.einsum("vij,vjk->vik", self.K.double().numpy(), w2c[:, :3])

    def visual_hull(self, world: bool = False) -> VisualHull | None:
        """The training masks' visual hull, for points of the normalised frame (``world``:
        the world frame); dilations in photo pixels (the full-size photos); None without
        masks."""
        if self.masks is None:
            return None
        train = self.train_ids.tolist()
        P = self.world_projections() if world else self.projections()
        scale = 1.0 / float(getattr(self, "downscale", 1) or 1)
        return VisualHull(P[train], [self.mask(v) for v in train], px_scale=scale)

    def world_projections(self) -> np.ndarray:
        """(V, 3, 4) projections of WORLD points to pixels (``K [R|t] to_world⁻¹``)."""
        return self.projections() @ np.linalg.inv(self.to_world)

    def set_sfm_points(self, world: np.ndarray) -> None:
        """Keep SfM points given in the WORLD frame (``to_world``'s target) as
        :attr:`sfm_points`, in the normalised frame, those inside the unit sphere only (what
        the field models)."""
        pts = np.asarray(world, dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(self.to_world)
        local = pts @ inv[:3, :3].T + inv[:3, 3]
        local = local[np.isfinite(local).all(1) & (np.linalg.norm(local, axis=1) < 1.0)]
        self.sfm_points = torch.as_tensor(local, dtype=torch.float32) if len(local) else None

    def to_world_points(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) normalised-frame points → world frame."""
        return pts @ self.to_world[:3, :3].T + self.to_world[:3, 3]


def split_ids(n: int, test_every: int, train_on_test: bool = False) -> tuple[list[int], list[int]]:
    """Hold out every ``test_every``-th view (the NeRF-paper convention). 0 disables the split."""
    test = list(range(0, n, test_every)) if test_every > 0 else []
    train = [i for i in range(n) if train_on_test or i not in test]
    return train, test or list(range(n))
