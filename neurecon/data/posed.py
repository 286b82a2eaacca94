"""Loaders for posed-image formats with OpenGL-convention camera-to-world matrices.

NeRF-synthetic (``blender``), instant-ngp (``ngp``) and nerfstudio (``nerfstudio``) store
``transform_matrix`` in the OpenGL camera convention (x right, y up, z backwards); neurecon
uses OpenCV (x right, y down, z forwards), so the y and z camera axes are flipped. The world
frame is normalised by a similarity ``to_world`` (uniform scale + translation) so the region of
interest is the unit sphere.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
    load_mask,
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


def camera_sphere(c2w: np.ndarray, radius: float | None = None) -> tuple[np.ndarray, float]:
    """The region of interest the cameras imply: centred at their :func:`focus_point`, of
    ``radius`` or, when None, half the median camera distance from it. c2w (V, 4, 4)."""
    centre = focus_point(c2w)
    if radius is None:
        radius = 0.5 * float(np.median(np.linalg.norm(c2w[:, :3, 3] - centre, axis=1)))
    return centre, float(radius)


def robust_sphere(
    points: np.ndarray, quantile: float = 0.95, margin: float = 1.1, where: str = "sparse points"
):
    """Centre and radius of the region of interest from sparse points (N, 3)."""
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < 4:
        raise DatasetError(
            f"{where} has only {len(points)} finite 3-D points; cannot find the scene"
        )
    d = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    inliers = points[d <= np.quantile(d, quantile)]
    centre = inliers.mean(axis=0)
    return centre, margin * float(np.linalg.norm(inliers - centre, axis=1).max())


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


class Frame(NamedTuple):
    """One ``transforms.json`` frame as loaded: OpenCV pose in the file's world frame."""

    rgb: np.ndarray  # (H, W, 3) uint8, composited over the background when the file has alpha
    alpha: np.ndarray | None  # (H, W) uint8 alpha of an RGBA image
    mask: np.ndarray | None  # (H, W) uint8 in {0, 255}: the frame's mask file (nerfstudio)
    valid: np.ndarray | None  # (H, W) bool: pixels with source data after undistortion
    K: np.ndarray  # (3, 3) pinhole intrinsics at the loaded size
    c2w: np.ndarray  # (4, 4) OpenCV camera-to-world


FrameFiles = Callable[[dict[str, Any], int], tuple[Path, int, Path | None, int]]
"""(frame, index) → (image, its downscale, mask file or None, its downscale)."""
Lens = Callable[[dict[str, Any], str], Distortion | None]


def read_frames(
    meta_path: Path,
    meta: dict[str, Any],
    files: FrameFiles,
    lens: Lens,
    background_color: Sequence[float],
) -> list[Frame]:
    """The frames of an instant-ngp-style ``transforms.json`` (instant-ngp, nerfstudio).

    Per-frame keys override the file's global ones (``fl_x fl_y cx cy w h``, lens). Frames whose
    image is missing are reported and skipped; frames may differ in size; a distorted lens is
    undone by resampling to a pinhole camera with the same intrinsics.
    """
    frames = meta.get("frames", [])
    if not frames:
        raise DatasetError(f"{meta_path}: no frames")
    out, missing = [], []
    with parsing(meta_path):  # a field of the wrong type or shape names the file
        if not isinstance(frames, list):
            raise DatasetError(f"{meta_path}: frames is not a list")
        for i, fr in enumerate(frames):
            cam = {**meta, **fr}  # per-frame intrinsics override global ones
            distort = lens(cam, f"{meta_path}: frame {i}")
            img_path, img_down, mask_path, mask_down = files(fr, i)
            if not img_path.is_file():
                missing.append(str(img_path))
                continue
            rgb, alpha = load_rgba(img_path, img_down)
            H, W = rgb.shape[:2]
            if "w" in cam and "h" in cam:  # the size the intrinsics refer to
                Hf, Wf = float(cam["h"]), float(cam["w"])
            else:
                Hf, Wf = (float(x) for x in image_size(img_path))  # the file's, not the loaded
            if not (Hf > 0 and Wf > 0):
                raise DatasetError(f"{meta_path}: frame {i} has size {Wf}x{Hf}")
            if "fl_x" in cam:
                fx = float(cam["fl_x"])
                fy = float(cam.get("fl_y", fx))
            elif "camera_angle_x" in cam:
                fx = fy = 0.5 * Wf / math.tan(0.5 * float(cam["camera_angle_x"]))
            else:
                raise DatasetError(f"{meta_path}: frame {i} has neither fl_x nor camera_angle_x")
            # cx, cy are in continuous pixel units (pixel 0's centre at 0.5), as in COLMAP.
            cx, cy = float(cam.get("cx", Wf / 2)) - 0.5, float(cam.get("cy", Hf / 2)) - 0.5
            K_full = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
            K = resized_intrinsics(K_full, (Hf, Wf), (H, W))  # exact ratios, odd sizes too
            mask = None
            if mask_path is not None:
                if not mask_path.is_file():
                    raise DatasetError(f"{meta_path}: frame {i} mask {mask_path} is missing")
                mask = load_mask(mask_path, mask_down)
                if mask.shape != (H, W):
                    raise DatasetError(
                        f"{mask_path}: size {mask.shape[1]}x{mask.shape[0]}, but its image "
                        f"{img_path} loads at {W}x{H}"
                    )
            ok = None
            if distort is not None:  # distortion is in normalised coordinates: any scale
                rgb, ok = undistort(rgb, K, distort)
                alpha, mask = (
                    None if a is None else undistort(a[..., None], K, distort)[0][..., 0]
                    for a in (alpha, mask)
                )
            if alpha is not None:
                rgb = composite(rgb, alpha, background_color)
            c2w = opengl_to_opencv(_matrix(fr, meta_path, i))
            out.append(Frame(rgb, alpha, mask, ok, K, c2w))
    if missing:
        log.warning(
            "%s: %d frame image(s) missing, skipped: %s",
            meta_path,
            len(missing),
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    if len(out) < 2:
        raise DatasetError(
            f"{meta_path}: fewer than 2 frames with an image ({len(missing)} missing)"
        )
    return out


def _alpha_masks(frames: list[Frame]) -> list[np.ndarray] | None:
    """The frames' alpha as {0, 255} masks, or None unless every frame has alpha."""
    if any(f.alpha is None for f in frames):
        return None
    return [np.where(f.alpha > 127, 255, 0).astype(np.uint8) for f in frames]


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

        def files(fr: dict[str, Any], i: int) -> tuple[Path, int, None, int]:
            return _image_path(rootp, fr.get("file_path", "")), downscale, None, 1

        frames = read_frames(meta_path, meta, files, _ngp_distortion, background_color)
        centre, radius = camera_sphere(np.stack([f.c2w for f in frames]), radius)
        masks = _alpha_masks(frames)
        _posed_scene_init(
            self, frames, similarity(centre, radius), meta_path, test_every,
            masks if use_mask else None, None, background_color, rootp.name, device,
        )  # fmt: skip


def _posed_scene_init(
    scene: Scene,
    frames: list[Frame],
    to_world: np.ndarray,
    meta_path: Path,
    test_every: int,
    masks: list[np.ndarray] | None,
    valid: list[np.ndarray | None] | None,
    background_color: Sequence[float],
    name: str,
    device: str,
) -> None:
    """``Scene.__init__`` for frames read by :func:`read_frames`, in the unit-sphere frame of
    ``to_world``; ``valid`` overrides the frames' own undistortion validity."""
    K, c2w = np.stack([f.K for f in frames]), np.stack([f.c2w for f in frames])
    check_cameras(K, c2w, to_world, str(meta_path))
    train, test = split_ids(len(frames), test_every)
    Scene.__init__(
        scene,
        images=[f.rgb for f in frames],
        K=K,
        c2w=normalise_poses(c2w, to_world),
        to_world=to_world,
        train_ids=train,
        test_ids=test,
        masks=masks,
        background_color=background_color,
        name=name,
        device=device,
        valid=[f.valid for f in frames] if valid is None else valid,
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


# nerfstudio's camera_model values (its process_data CameraModel and dataparser); colmap2nerf's
# perspective models all become OPENCV (unused coefficients zero).
NS_PERSPECTIVE = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
NS_FISHEYE = ("OPENCV_FISHEYE",)


def _ns_distortion(cam: dict[str, Any], where: str) -> Distortion | None:
    """The frame's lens from nerfstudio's ``camera_model`` (OPENCV when absent)."""
    model = str(cam.get("camera_model", "OPENCV"))
    if model in NS_FISHEYE:
        return _ngp_distortion({**cam, "is_fisheye": True}, where)
    if model in NS_PERSPECTIVE:
        return _ngp_distortion({**cam, "is_fisheye": False}, where)
    raise DatasetError(
        f"{where}: camera_model {model} is not supported; supported: "
        + ", ".join(NS_PERSPECTIVE + NS_FISHEYE)
    )


def _downscaled(root: Path, rel: str, factor: int, prefix: str) -> tuple[Path, int]:
    """nerfstudio's layout for ``downscale``: ``{prefix}_{factor}/NAME`` when
    ``ns-process-data`` wrote it (already downscaled), else ``rel`` downscaled here."""
    p = _image_path(root, rel)
    if factor > 1:
        pre = root / f"{prefix}_{factor}" / p.name
        if pre.is_file():
            return pre, 1
    return p, factor


def read_ply_points(path: Path) -> np.ndarray:
    """(N, 3) float64 vertices of a PLY point cloud (``sparse_pc.ply``), read by trimesh."""
    import trimesh

    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        cloud = trimesh.load(path, file_type="ply", process=False)
        points = np.asarray(cloud.vertices, dtype=np.float64)
    except Exception as e:  # whatever the parser raises, the message names the file
        raise DatasetError(f"{path}: not a readable PLY point cloud ({one_line(e)})") from None
    if points.ndim != 2 or points.shape[1] != 3:
        raise DatasetError(f"{path}: expected (N, 3) vertices, got {points.shape}")
    return points


class NerfstudioScene(Scene):
    """A capture as ``ns-process-data`` writes it: instant-ngp's ``transforms.json`` plus
    ``camera_model`` (``OPENCV``, ``OPENCV_FISHEYE``, ``SIMPLE_PINHOLE``, ...), per-frame
    ``mask_path``, ``applied_transform`` and ``ply_file_path`` (sparse points in the poses'
    frame). Frames are read by the instant-ngp loader's code (:func:`read_frames`).

    The mesh and metrics are in the poses' frame (COLMAP's world after ``applied_transform``).

    Args:
        downscale: integer factor; ``images_{downscale}/`` (and ``masks_{downscale}/``) are used
            when ``ns-process-data`` wrote them, else the full images are downscaled here.
        radius: world radius of the region of interest; null: the robust bounding sphere of the
            sparse points when the file names them, else half the median camera distance from
            the point the cameras look at.
        use_mask: false: ``mask_path`` marks the pixels to ignore (nerfstudio's meaning: kept
            out of the loss and the metrics); true: it is the object's mask (NeuS's mask loss,
            masked metrics), as for a capture with foreground masks.
        inlier_quantile / margin: the bounding sphere of the sparse points.
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
        inlier_quantile: float = 0.95,
        margin: float = 1.1,
        device: str = "auto",
    ) -> None:
        rootp = Path(root).expanduser()
        meta_path = rootp / transforms
        meta = _read_json(meta_path)
        if "applied_transform" in meta:  # informational: the poses already include it
            A = np.asarray(meta["applied_transform"], dtype=np.float64)
            if A.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(A)):
                raise DatasetError(f"{meta_path}: applied_transform is not a finite 3x4 matrix")

        def files(fr: dict[str, Any], i: int) -> tuple[Path, int, Path | None, int]:
            img, img_down = _downscaled(rootp, str(fr.get("file_path", "")), downscale, "images")
            if "mask_path" not in fr:
                return img, img_down, None, 1
            mask, mask_down = _downscaled(rootp, str(fr["mask_path"]), downscale, "masks")
            return img, img_down, mask, mask_down

        frames = read_frames(meta_path, meta, files, _ns_distortion, background_color)
        points = None
        if meta.get("ply_file_path"):  # in the frames' frame
            ply = rootp / str(meta["ply_file_path"])
            points = read_ply_points(ply)
        if radius is None and points is not None:
            centre, radius = robust_sphere(points, inlier_quantile, margin, str(ply))
        else:
            centre, radius = camera_sphere(np.stack([f.c2w for f in frames]), radius)
        files_masks = [f.mask for f in frames]
        masks, valid = None, None
        if use_mask:
            if any(m is None for m in files_masks):
                raise DatasetError(
                    f"{meta_path}: dataset.use_mask=true needs a mask_path on every frame"
                )
            masks = files_masks
        elif any(m is not None for m in files_masks):  # pixels to ignore
            valid = [_and(f.valid, None if f.mask is None else f.mask > 127) for f in frames]
        _posed_scene_init(
            self, frames, similarity(centre, float(radius)), meta_path, test_every, masks,
            valid, background_color, rootp.name, device,
        )  # fmt: skip
        if points is not None:
            self.set_sfm_points(points)


def _and(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Elementwise and of two optional bool maps (None: all true)."""
    if a is None or b is None:
        return b if a is None else a
    return a & b


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
