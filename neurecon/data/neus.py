"""NeuS / IDR format (``cameras_sphere.npz`` + ``image/`` + ``mask/``): DTU, BlendedMVS, custom.

``world_mat_i`` projects world points to pixels; ``scale_mat_i`` maps the unit sphere to the
object's bounding sphere in world coordinates. Decomposing ``world_mat @ scale_mat`` gives the
intrinsics and the camera pose in the normalised frame; ``scale_mat`` itself is kept as the
to-world transform so exported meshes land back in world coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurecon.data.cameras import CameraError, check_cameras, decompose_projection
from neurecon.data.io import image_size, list_images, load_mask, load_npz, load_rgb, parsing
from neurecon.data.scene import Scene, split_ids
from neurecon.errors import DatasetError

log = logging.getLogger(__name__)


def cameras_from_neus(
    world_mats: Sequence[np.ndarray], scale_mats: Sequence[np.ndarray], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised intrinsics / poses from NeuS matrices.

    Returns:
        K (V, 3, 3), c2w (V, 4, 4) in the unit-sphere frame, to_world (4, 4) = ``scale_mat``.
    """
    Ks, poses = [], []
    for i, (wm, sm) in enumerate(zip(world_mats, scale_mats, strict=True)):
        try:
            K, c2w = decompose_projection(np.asarray(wm) @ np.asarray(sm), f"{name}: view {i}")
        except CameraError as e:
            raise DatasetError(str(e)) from None
        Ks.append(K)
        poses.append(c2w)
    to_world = np.asarray(scale_mats[0], dtype=np.float64)
    for i, sm in enumerate(scale_mats):
        if not np.allclose(sm, to_world, rtol=1e-6, atol=1e-9):
            raise DatasetError(f"{name}: scale_mat_{i} differs from scale_mat_0; expected one")
    if not np.all(np.isfinite(to_world)) or abs(np.linalg.det(to_world[:3, :3])) < 1e-12:
        raise DatasetError(f"{name}: scale_mat_0 is singular or non-finite")
    return np.stack(Ks), np.stack(poses), to_world


def downscale_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
    """Intrinsics after resizing by 1/``factor`` (pixel centres at integer coordinates)."""
    return scale_intrinsics(K, 1.0 / factor, 1.0 / factor)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics (..., 3, 3) of an image resized by ``sx`` across and ``sy`` down (the new
    size over the old: ``w / W``, ``h / H``), pixel centres at integer coordinates. An image
    whose size the downscale factor does not divide is resized by exactly these ratios
    (:func:`neurecon.data.io.downscale_image`), not by 1/factor."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 0] *= sx
    K[..., 0, 1] *= sx
    K[..., 1, 1] *= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def resized_intrinsics(K: np.ndarray, full: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """``K`` of a (H, W) = ``full`` image for its resized (h, w) = ``new`` copy."""
    return scale_intrinsics(K, new[1] / full[1], new[0] / full[0])


class NeuSScene(Scene):
    """A scene in the NeuS/IDR release format.

    Args:
        root: scene folder; with ``scan`` set, ``root/dtu_scan{scan}``.
        cameras: camera file name inside ``root``; ``auto`` tries cameras_sphere.npz, then
            cameras.npz.
        use_mask: load ``mask/`` (paired with ``image/`` by sorted order); ``auto``: when the
            folder exists. All-255 masks count as no masks.
        downscale: integer factor to shrink images by (area averaging).
        test_every: hold out every n-th view for testing (0: test on all views).
        train_on_test: also train on the held-out views (NeuS trains on all DTU views).
        points: a PLY of sparse points in the world frame (relative to the scene folder, or
            absolute) for the sparse-point SDF term; ``auto``: ``points3D.ply`` when present
            (what ``python -m neurecon.data.prepare --triangulate`` writes); null: none.
    """

    def __init__(
        self,
        root: str,
        scan: int | None = None,
        cameras: str = "cameras_sphere.npz",
        image_dir: str = "image",
        mask_dir: str = "mask",
        use_mask: bool | str = True,
        downscale: int = 1,
        test_every: int = 8,
        train_on_test: bool = False,
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        device: str = "auto",
        points: str | None = "auto",
    ) -> None:
        if root is None or str(root) in ("", "???"):
            raise DatasetError("dataset.root is not set: point it at a NeuS-format scene folder")
        self.downscale = int(downscale)  # the DTU protocols' mask dilation is in photo pixels
        rootp = Path(root).expanduser()
        if scan is not None:
            rootp = rootp / f"dtu_scan{scan}"
        if not rootp.is_dir():
            raise DatasetError(f"dataset.root: folder {rootp} does not exist")
        if int(downscale) < 1:
            raise DatasetError(f"dataset.downscale must be an integer >= 1, got {downscale}")
        names = ["cameras_sphere.npz", "cameras.npz"] if cameras == "auto" else [cameras]
        cam_path = next((rootp / n for n in names if (rootp / n).is_file()), rootp / names[0])
        if not cam_path.is_file():
            raise DatasetError(f"camera file {cam_path} is missing (dataset.cameras={cameras})")
        cams = load_npz(cam_path)  # no pickles; declared sizes checked before reading
        image_paths = list_images(rootp / image_dir)
        n = len(image_paths)
        missing = [f"world_mat_{i}" for i in range(n) if f"world_mat_{i}" not in cams]
        if missing:
            raise DatasetError(
                f"{cam_path}: {n} images in {rootp / image_dir} but no {missing[0]} "
                f"({len(missing)} camera(s) missing)"
            )
        with parsing(cam_path):  # wrong shapes or types in the arrays: name the file
            world_mats = [np.asarray(cams[f"world_mat_{i}"], np.float64) for i in range(n)]
            scale_mats = [np.asarray(cams.get(f"scale_mat_{i}", np.eye(4)), np.float64)
                          for i in range(n)]  # fmt: skip
            K, c2w, to_world = cameras_from_neus(world_mats, scale_mats, str(cam_path))

        first = load_rgb(image_paths[0], downscale)
        # One uint8 array while the sizes agree (no copy into the scene); a per-image list
        # from the first image of another size on (each camera has its own intrinsics).
        images: np.ndarray | list[np.ndarray] = np.empty((n, *first.shape), dtype=np.uint8)
        images[0] = first
        for i, p in enumerate(image_paths[1:], start=1):
            img = load_rgb(p, downscale)
            if isinstance(images, np.ndarray) and img.shape != first.shape:
                images = [a.copy() for a in images[:i]]
            if isinstance(images, list):
                images.append(img)
            else:
                images[i] = img
        if int(downscale) > 1:  # by each image's exact size ratio (odd sizes round down)
            K = np.stack([resized_intrinsics(K[i], image_size(p), images[i].shape[:2])
                          for i, p in enumerate(image_paths)])  # fmt: skip
        check_cameras(K, c2w, to_world, str(cam_path))

        masks = None
        if use_mask == "auto":
            use_mask = (rootp / mask_dir).is_dir()
        if use_mask:
            mask_paths = list_images(rootp / mask_dir)
            if len(mask_paths) != n:
                raise DatasetError(
                    f"{rootp / mask_dir}: {len(mask_paths)} masks for {n} images in "
                    f"{rootp / image_dir} (pairs are made by sorted order)"
                )
            masks = []
            for p, img in zip(mask_paths, images, strict=True):
                m = load_mask(p, downscale)
                if m.shape != img.shape[:2]:
                    raise DatasetError(f"{p}: mask size {m.shape} != image size {img.shape[:2]}")
                masks.append(m)
            # NeuS custom data marks "no mask" with all-255 masks.
            if min(m.min() for m in masks) == 255:
                log.info(
                    "%s: every mask is all foreground; training without masks", mask_paths[0].parent
                )
                masks = None

        train, test = split_ids(n, test_every, train_on_test)
        super().__init__(
            images=images,
            K=K,
            c2w=c2w,
            to_world=to_world,
            train_ids=train,
            test_ids=test,
            masks=masks,
            background_color=background_color,
            name=rootp.name,
            device=device,
        )
        ply = _points_file(rootp, points)
        if ply is not None:
            from neurecon.data.posed import read_ply_points

            self.set_sfm_points(read_ply_points(ply))
            n_in = 0 if self.sfm_points is None else len(self.sfm_points)
            log.info("%s: %d sparse points inside the unit sphere", ply, n_in)


POINTS_FILE = "points3D.ply"


def _points_file(root: Path, points: str | None) -> Path | None:
    """The PLY ``dataset.points`` names (see :class:`NeuSScene`), or None."""
    if points is None or str(points) in ("", "none", "null"):
        return None
    if str(points) == "auto":
        auto = root / POINTS_FILE
        return auto if auto.is_file() else None
    path = Path(points).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DatasetError(f"dataset.points: {path} is missing")
    return path
