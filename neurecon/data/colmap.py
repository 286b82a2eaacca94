"""COLMAP sparse models (``sparse/0/cameras|images|points3D.{bin,txt}``), read with pycolmap.

Poses come from the reconstruction; the scene is normalised from the sparse points (a robust
bounding sphere: points far from the median are dropped first). Distorted camera models are
undistorted to a pinhole camera with the same focal lengths, using pycolmap's projection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurecon.data.cameras import check_cameras
from neurecon.data.distortion import downscale_valid, remap
from neurecon.data.io import downscale_image, load_rgb
from neurecon.data.neus import resized_intrinsics
from neurecon.data.posed import normalise_poses, robust_sphere, similarity
from neurecon.data.scene import Scene, split_ids
from neurecon.errors import DatasetError, one_line

log = logging.getLogger(__name__)
SUPPORTED = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def _pycolmap():
    try:
        import pycolmap
    except ImportError:
        raise DatasetError("dataset=colmap needs pycolmap: pip install pycolmap") from None
    return pycolmap


def read_model(path: Path):
    """A ``pycolmap.Reconstruction`` from a folder of .bin or .txt files."""
    pycolmap = _pycolmap()
    if not path.is_dir():
        raise DatasetError(f"COLMAP model folder {path} does not exist")
    for name in ("cameras", "images", "points3D"):
        if not any((path / f"{name}.{ext}").is_file() for ext in ("bin", "txt")):
            raise DatasetError(f"COLMAP model {path}: {name}.bin or {name}.txt is missing")
    _probe_model(path)
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises plain RuntimeErrors for malformed files
        raise DatasetError(f"COLMAP model {path} cannot be read: {one_line(e)}") from None


# A child reads the model first, under these limits: pycolmap trusts the counts in a .bin file,
# and a corrupted one makes it allocate without bound, hang or crash (found by fuzzing).
# The address space counts the interpreter and pycolmap's libraries (~0.4 GB for any model); a
# corrupted count makes the reader fill the limit before it fails, ~5 s a GB here.
PROBE_TIMEOUT_S = 300.0
PROBE_MEMORY_BYTES = 1 << 30  # plus 100x the model's size (a dense model needs more)

_PROBE = "import sys, pycolmap; pycolmap.Reconstruction(sys.argv[1])"


def _probe_model(path: Path) -> None:
    """Load the model in a child process with a time and address-space limit; raise
    :class:`DatasetError` naming the folder when the child fails, crashes or runs out."""
    import resource
    import subprocess
    import sys

    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    limit = PROBE_MEMORY_BYTES + 100 * size

    def restrict() -> None:  # in the child, before it starts
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, preexec_fn=restrict)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DatasetError(
            f"COLMAP model {path} cannot be read: still reading after {PROBE_TIMEOUT_S:.0f} s "
            "(a corrupted file?)"
        ) from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
        why = lines[-1] if lines else f"the reader died with code {done.returncode}"
        if done.returncode < 0 or "bad_alloc" in done.stderr or "MemoryError" in done.stderr:
            why = f"the reader crashed or ran out of memory ({one_line(why, 160)})"
        raise DatasetError(f"COLMAP model {path} cannot be read: {one_line(why, 240)}")


def pinhole_K(camera) -> np.ndarray:
    """Pinhole intrinsics of a COLMAP camera in neurecon's pixel-centre convention."""
    K = np.asarray(camera.calibration_matrix(), dtype=np.float64).copy()
    K[:2, 2] -= 0.5  # COLMAP: centre of the first pixel at 0.5
    return K


def undistort(img: np.ndarray, camera, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a distorted image (H, W, C) to the pinhole camera ``K`` (bilinear), with
    pycolmap's projection as the distortion model. Returns the image and its validity mask."""
    H, W = img.shape[:2]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    src = camera.img_from_cam(np.stack([x.ravel(), y.ravel(), np.ones(x.size)], 1)) - 0.5
    return remap(img, src[:, 0].reshape(H, W), src[:, 1].reshape(H, W))


class ColmapScene(Scene):
    """Images + a COLMAP sparse model.

    Args:
        root: scene folder.  model: model folder inside it.  image_dir: images folder.
        inlier_quantile / margin: robust bounding sphere of the sparse points.
    """

    def __init__(
        self,
        root: str,
        model: str = "sparse/0",
        image_dir: str = "images",
        downscale: int = 1,
        test_every: int = 8,
        inlier_quantile: float = 0.95,
        margin: float = 1.1,
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        device: str = "auto",
    ) -> None:
        rootp = Path(root).expanduser()
        rec = read_model(rootp / model)
        images, valid, Ks, poses = [], [], [], []

        # By file name first: prepare groups photos in per-size folders, the order stays theirs.
        def order(i: int) -> tuple[str, str]:
            return Path(rec.images[i].name).name, rec.images[i].name

        for image_id in sorted(rec.images, key=order):
            im = rec.images[image_id]
            if not im.has_pose:
                continue
            cam = rec.cameras[im.camera_id]
            if cam.model_name not in SUPPORTED:
                raise DatasetError(
                    f"{rootp / model}: camera {im.camera_id} model {cam.model_name} is not "
                    f"supported ({', '.join(SUPPORTED)})"
                )
            path = rootp / image_dir / im.name
            if not path.is_file():
                raise DatasetError(f"{path} (image {image_id} of the COLMAP model) is missing")
            img = load_rgb(path)
            if img.shape[:2] != (cam.height, cam.width):
                raise DatasetError(
                    f"{path}: size {img.shape[:2]} but camera {im.camera_id} is "
                    f"{cam.height}x{cam.width}"
                )
            K = pinhole_K(cam)
            ok = None
            if not cam.model_name.endswith("PINHOLE"):
                img, ok = undistort(img, cam, K)
            if downscale > 1:
                img = downscale_image(img, downscale)
                ok = None if ok is None else downscale_valid(ok, downscale)
                K = resized_intrinsics(K, (cam.height, cam.width), img.shape[:2])  # exact
            w2c = np.eye(4)
            w2c[:3] = np.asarray(im.cam_from_world().matrix())
            images.append(img)  # sizes may differ: one camera per size (or per image)
            valid.append(ok)
            Ks.append(K)
            poses.append(np.linalg.inv(w2c))
        if len(images) < 2:
            raise DatasetError(f"{rootp / model}: fewer than 2 registered images")
        pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
        centre, radius = robust_sphere(
            pts, inlier_quantile, margin, f"COLMAP model {rootp / model}"
        )
        to_world = similarity(centre, radius)
        check_cameras(np.stack(Ks), np.stack(poses), to_world, f"COLMAP model {rootp / model}")
        train, test = split_ids(len(images), test_every)
        super().__init__(
            images=images,
            valid=valid,
            K=np.stack(Ks),
            c2w=normalise_poses(np.stack(poses), to_world),
            to_world=to_world,
            train_ids=train,
            test_ids=test,
            background_color=background_color,
            name=rootp.name,
            device=device,
        )
        self.set_sfm_points(pts)
