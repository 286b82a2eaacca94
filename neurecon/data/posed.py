"""Loaders for posed-image formats with OpenGL-convention camera-to-world matrices.

NeRF-synthetic (``blender``) and instant-ngp (``ngp``) store ``transform_matrix`` in the OpenGL
camera convention (x right, y up, z backwards); neurecon uses OpenCV (x right, y down, z
forwards), so the y and z camera axes are flipped. The world frame is normalised by a similarity
``to_world`` (uniform scale + translation) so the region of interest is the unit sphere.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurecon.data.cameras import check_cameras
from neurecon.data.distortion import (
    Distortion,
    fisheye_distortion,
    opencv_distortion,
    undistort,
)
from neurecon.data.io import (
    composite,
    image_size,
    list_images,
    load_npy,
    load_rgb,
    load_rgba,
    parsing,
)
from neurecon.data.neus import resized_intrinsics
from neurecon.data.scene import Scene, split_ids
from neurecon.errors import DatasetError, one_line

log = logging.getLogger(__name__)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """(…, 4, 4) OpenGL camera-to-world → OpenCV camera-to-world."""
    return c2w @ GL_TO_CV


def similarity(centre: Sequence[float], radius: float) -> np.ndarray:
    """4×4 normalised → world: scale by ``radius``, move to ``centre``."""
    T = np.eye(4)
    T[:3, :3] *= radius
    T[:3, 3] = centre
    return T


def normalise_poses(c2w_world: np.ndarray, to_world: np.ndarray) -> np.ndarray:
    """World-frame OpenCV poses (V, 4, 4) → the unit-sphere frame of the similarity ``to_world``."""
    s, t = to_world[0, 0], to_world[:3, 3]
    out = c2w_world.copy()
    out[:, :3, 3] = (c2w_world[:, :3, 3] - t) / s
    return out


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all optical axes (OpenCV poses (V, 4, 4))."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for T in c2w:
        d = T[:3, 2] / np.linalg.norm(T[:3, 2])
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ T[:3, 3]
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        meta = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{path}: not valid JSON ({one_line(e)})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: not a JSON object")
    return meta


def _matrix(frame: dict, path: Path, i: int) -> np.ndarray:
    M = np.asarray(frame.get("transform_matrix"), dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise DatasetError(f"{path}: frame {i} has no finite 4x4 transform_matrix")
    if abs(np.linalg.det(M[:3, :3])) < 1e-8:
        raise DatasetError(f"{path}: frame {i} transform_matrix is singular")
    return M


def _image_path(root: Path, file_path: str) -> Path:
    p = root / file_path
    return p if p.suffix else p.with_suffix(".png")


class BlenderScene(Scene):
    """NeRF-synthetic: ``transforms_{train,val,test}.json``, RGBA PNGs, ``camera_angle_x``.

    Args:
        root: scene folder.  radius: world radius mapped to the unit sphere (objects lie in
            [-1.5, 1.5]³).  background_color: RGB the alpha is composited over.
        test_split: split used for test metrics (``test`` or ``val``).  test_limit: keep at
            most this many test views (evenly spaced; null: all).
    """

    def __init__(
        self,
        root: str,
        downscale: int = 1,
        radius: float = 1.5,
        background_color: Sequence[float] = (1.0, 1.0, 1.0),
        test_split: str = "test",
        test_limit: int | None = 8,
        use_mask: bool = True,
        device: str = "auto",
    ) -> None:
        rootp = Path(root).expanduser()
        if not rootp.is_dir():
            raise DatasetError(f"dataset.root: folder {rootp} does not exist")
        images, masks, Ks, poses, split = [], [], [], [], {"train": [], "test": []}
        for name in ("train", test_split):
            meta_path = rootp / f"transforms_{name}.json"
            meta = _read_json(meta_path)
            with parsing(meta_path):  # wrong types or shapes in its fields name it
                frames = meta.get("frames", [])
                if "camera_angle_x" not in meta or not frames:
                    raise DatasetError(
                        f"{meta_path}: needs camera_angle_x and a non-empty frames list"
                    )
                if name != "train" and test_limit:
                    frames = frames[:: max(1, math.ceil(len(frames) / test_limit))]
                for i, fr in enumerate(frames):
                    img_path = _image_path(rootp, fr.get("file_path", ""))
                    if not img_path.is_file():
                        raise DatasetError(f"{meta_path}: frame {i} image {img_path} is missing")
                    rgb, alpha = load_rgba(img_path, downscale)
                    if alpha is None:
                        alpha = np.full(rgb.shape[:2], 255, np.uint8)
                    images.append(composite(rgb, alpha, background_color))
                    masks.append(np.where(alpha > 127, 255, 0).astype(np.uint8))
                    H, W = rgb.shape[:2]
                    f = 0.5 * W / math.tan(0.5 * float(meta["camera_angle_x"]))
                    # Blender's principal point is the image centre: (W - 1) / 2 (pixel centres)
                    Ks.append(np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]]))
                    poses.append(opengl_to_opencv(_matrix(fr, meta_path, i)))
                    split["train" if name == "train" else "test"].append(len(images) - 1)
        to_world = similarity((0.0, 0.0, 0.0), radius)
        check_cameras(np.stack(Ks), np.stack(poses), to_world, str(rootp / "transforms_*.json"))
        super().__init__(
            images=images,
            K=np.stack(Ks),
            c2w=normalise_poses(np.stack(poses), to_world),
            to_world=to_world,
            train_ids=split["train"],
            test_ids=split["test"],
            masks=masks if use_mask else None,
            background_color=background_color,
            name=rootp.name,
            device=device,
        )


class NGPScene(Scene):
    """instant-ngp ``transforms.json``: global or per-frame ``fl_x fl_y cx cy w h`` (or
    ``camera_angle_x``), OpenGL poses. Frames whose image is missing are reported and skipped.
    Frames may differ in size. Lens distortion as ``colmap2nerf.py`` writes it is undone by
    resampling to a pinhole camera with the same intrinsics: OpenCV's ``k1 k2 p1 p2`` (and
    ``k3``), or with ``is_fisheye`` OpenCV's fisheye ``k1 k2 k3 k4``; pixels with no source
    data are marked invalid (kept out of the loss and the metrics), not painted black.

    Args:
        radius: world radius of the region of interest; null = half the median camera distance
            from the point the cameras look at (the scene centre).
        test_every: hold out every n-th frame.
    """

    def __init__(
        self,
        root: str,
        transforms: str = "transforms.json",
        downscale: int = 1,
        radius: float | None = None,
        test_every: int = 8,
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        use_mask: bool = False,
        device: str = "auto",
    ) -> None:
        rootp = Path(root).expanduser()
        meta_path = rootp / transforms
        meta = _read_json(meta_path)
        frames = meta.get("frames", [])
        if not frames:
            raise DatasetError(f"{meta_path}: no frames")
        images, masks, valid, Ks, poses, missing = [], [], [], [], [], []
        with parsing(meta_path):  # a field of the wrong type or shape names the file
            if not isinstance(frames, list):
                raise DatasetError(f"{meta_path}: frames is not a list")
            for i, fr in enumerate(frames):
                cam = {**meta, **fr}  # per-frame intrinsics override global ones
                distort = _ngp_distortion(cam, f"{meta_path}: frame {i}")
                img_path = _image_path(rootp, fr.get("file_path", ""))
                if not img_path.is_file():
                    missing.append(str(img_path))
                    continue
                rgb, alpha = load_rgba(img_path, downscale)
                H, W = rgb.shape[:2]
                if "w" in cam and "h" in cam:  # the size the intrinsics refer to
                    Hf, Wf = float(cam["h"]), float(cam["w"])
                else:
                    Hf, Wf = (float(x) for x in image_size(img_path))
                if not (Hf > 0 and Wf > 0):
                    raise DatasetError(f"{meta_path}: frame {i} has size {Wf}x{Hf}")
                if "fl_x" in cam:
                    fx = float(cam["fl_x"])
                    fy = float(cam.get("fl_y", fx))
                elif "camera_angle_x" in cam:
                    fx = fy = 0.5 * Wf / math.tan(0.5 * float(cam["camera_angle_x"]))
                else:
                    raise DatasetError(
                        f"{meta_path}: frame {i} has neither fl_x nor camera_angle_x"
                    )
                # ngp's cx, cy are in continuous pixel units (centre of pixel 0 at 0.5).
                cx, cy = float(cam.get("cx", Wf / 2)) - 0.5, float(cam.get("cy", Hf / 2)) - 0.5
                K_full = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
                K = resized_intrinsics(K_full, (Hf, Wf), (H, W))  # exact ratios, odd sizes too
                ok = None
                if distort is not None:  # distortion is in normalised coordinates: any scale
                    rgb, ok = undistort(rgb, K, distort)
                    if alpha is not None:
                        alpha = undistort(alpha[..., None], K, distort)[0][..., 0]
                images.append(rgb if alpha is None else composite(rgb, alpha, background_color))
                masks.append(
                    None if alpha is None else np.where(alpha > 127, 255, 0).astype(np.uint8)
                )
                valid.append(ok)
                Ks.append(K)
                poses.append(opengl_to_opencv(_matrix(fr, meta_path, i)))
        if missing:
            log.warning(
                "%s: %d frame image(s) missing, skipped: %s",
                meta_path,
                len(missing),
                ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
            )
        if len(images) < 2:
            raise DatasetError(
                f"{meta_path}: fewer than 2 frames with an image ({len(missing)} missing)"
            )
        c2w = np.stack(poses)
        centre = focus_point(c2w)
        if radius is None:
            radius = 0.5 * float(np.median(np.linalg.norm(c2w[:, :3, 3] - centre, axis=1)))
        to_world = similarity(centre, radius)
        check_cameras(np.stack(Ks), c2w, to_world, str(meta_path))
        train, test = split_ids(len(images), test_every)
        use_masks = use_mask and all(m is not None for m in masks)
        super().__init__(
            images=images,
            K=np.stack(Ks),
            c2w=normalise_poses(c2w, to_world),
            to_world=to_world,
            train_ids=train,
            test_ids=test,
            masks=masks if use_masks else None,
            background_color=background_color,
            name=rootp.name,
            device=device,
            valid=valid,
        )


def _ngp_distortion(cam: dict[str, Any], where: str) -> Distortion | None:
    """The frame's lens model from instant-ngp keys, or None for a pinhole camera."""
    c = {k: float(cam.get(k, 0.0) or 0.0) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if not any(abs(v) > 1e-12 for v in c.values()):
        return None
    if cam.get("is_fisheye", False):
        if abs(c["p1"]) > 1e-12 or abs(c["p2"]) > 1e-12:
            raise DatasetError(f"{where}: fisheye with tangential p1/p2 is not a model we know")
        return fisheye_distortion(c["k1"], c["k2"], c["k3"], c["k4"])
    if abs(c["k4"]) > 1e-12:
        raise DatasetError(
            f"{where}: k4 without is_fisheye (OpenCV's rational model) is not supported; "
            "supported: OpenCV k1 k2 p1 p2 [k3], or fisheye k1..k4 with is_fisheye"
        )
    return opencv_distortion(c["k1"], c["k2"], c["p1"], c["p2"], c["k3"])


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """LLFF (N, 3, 5) ``[down, right, back | t | hwf]`` → OpenCV camera-to-world (N, 4, 4)."""
    R = poses[:, :, :3]
    out = np.tile(np.eye(4), (len(poses), 1, 1))
    out[:, :3, 0] = R[:, :, 1]  # right
    out[:, :3, 1] = R[:, :, 0]  # down
    out[:, :3, 2] = -R[:, :, 2]  # forward
    out[:, :3, 3] = poses[:, :, 3]
    return out


class LLFFScene(Scene):
    """LLFF: ``poses_bounds.npy`` (N × 17: a 3×5 pose with ``[H, W, focal]`` and near/far) and
    ``images/`` (or ``images_{factor}/``). Every ``test_every``-th image is held out (8, as in the
    NeRF papers). The near/far bounds place the region of interest: a sphere centred at the
    median mid-depth in front of the mean camera, reaching the median far bound.
    """

    def __init__(
        self,
        root: str,
        factor: int = 8,
        test_every: int = 8,
        margin: float = 1.05,
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        device: str = "auto",
    ) -> None:
        rootp = Path(root).expanduser()
        pb_path = rootp / "poses_bounds.npy"
        if not pb_path.is_file():
            raise DatasetError(f"{pb_path} is missing")
        pb = load_npy(pb_path)  # no pickles; the declared size checked first
        if pb.dtype.kind not in "fiu":
            raise DatasetError(f"{pb_path}: expected numbers, got {pb.dtype}")
        if pb.ndim != 2 or pb.shape[1] != 17 or not np.all(np.isfinite(pb)):
            raise DatasetError(f"{pb_path}: expected a finite (N, 17) array, got {pb.shape}")
        folder = rootp / ("images" if factor == 1 else f"images_{factor}")
        extra = 1
        if not folder.is_dir() and factor != 1 and (rootp / "images").is_dir():
            folder, extra = rootp / "images", factor  # downscale the full images ourselves
        paths = list_images(folder)
        if len(paths) != len(pb):
            raise DatasetError(f"{folder}: {len(paths)} images but {pb_path} has {len(pb)} poses")
        poses = pb[:, :15].reshape(-1, 3, 5)
        bounds = pb[:, 15:]
        images = []
        for p in paths:
            img = load_rgb(p, extra)
            if images and img.shape != images[0].shape:
                raise DatasetError(f"{p}: size {img.shape[:2]} differs from the other images")
            images.append(img)
        H, W = images[0].shape[:2]
        _, w0, f0 = poses[0, :, 4]
        s = W / w0  # focal is given for the full-resolution images
        K = np.array([[f0 * s, 0, (W - 1) / 2], [0, f0 * s, (H - 1) / 2], [0, 0, 1]])
        c2w = llff_to_opencv(poses)
        mid = 0.5 * (bounds[:, 0] + bounds[:, 1])
        fwd = c2w[:, :3, 2].mean(0)
        fwd /= np.linalg.norm(fwd)
        centre = c2w[:, :3, 3].mean(0) + fwd * np.median(mid)
        radius = margin * max(
            float(np.median(bounds[:, 1]) - np.median(mid)),
            float(np.linalg.norm(c2w[:, :3, 3] - centre, axis=1).max()),
        )
        to_world = similarity(centre, radius)
        check_cameras(np.repeat(K[None], len(images), 0), c2w, to_world, str(pb_path))
        train, test = split_ids(len(images), test_every)
        super().__init__(
            images=np.stack(images),
            K=np.repeat(K[None], len(images), 0),
            c2w=normalise_poses(c2w, to_world),
            to_world=to_world,
            train_ids=train,
            test_ids=test,
            background_color=background_color,
            name=rootp.name,
            device=device,
        )
