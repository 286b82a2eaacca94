"""Sparse points for a posed scene without any (DTU's NeuS release): SIFT features matched
across the training views and triangulated with the scene's *known* cameras (pycolmap's
``triangulate_points``, COLMAP's ``point_triangulator``), as COLMAP's FAQ reconstructs a sparse
model from known poses. The points feed the sparse-point SDF term
(:class:`~neurecon.losses.terms.SparsePointsLoss`).

    python -m neurecon.data.prepare --triangulate SCENE [--points-out PLY] [--downscale N]

writes ``SCENE/points3D.ply`` (world frame), which the NeuS loader reads (``dataset.points``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy.spatial.transform import Rotation

from neurecon.data.colmap import _pycolmap
from neurecon.data.scene import Scene
from neurecon.errors import DatasetError

log = logging.getLogger("neurecon.triangulate")

# A point kept is seen in at least this many views, within this reprojection error (pixels):
# a 2-view track is a single match, whose outliers are not caught by any other view.
MIN_TRACK, MAX_REPROJ_PX = 3, 2.0


def _num(*xs: float) -> str:
    """Numbers as COLMAP's text reader takes them, at full precision."""
    return " ".join(f"{float(x):.17g}" for x in xs)


def _write_model(model: Path, scene: Scene, views: list[int], ids: dict[str, tuple[int, int]]):
    """A COLMAP text model of the known cameras (PINHOLE, COLMAP's pixel centres at +0.5) and
    poses (``cam_from_world`` in the scene's normalised frame), with the database's ids."""
    model.mkdir(parents=True, exist_ok=True)
    cams, imgs = ["# camera list"], ["# image list"]
    for v in views:
        image_id, camera_id = ids[f"{v:06d}.png"]
        K = scene.K[v].double().numpy()
        H, W = (int(n) for n in scene.size(v))
        params = (K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5)
        cams.append(f"{camera_id} PINHOLE {W} {H} {_num(*params)}")
        w2c = np.linalg.inv(scene.c2w[v].double().numpy())
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        imgs += [f"{image_id} {_num(qw, qx, qy, qz, *t)} {camera_id} {v:06d}.png", ""]
    (model / "cameras.txt").write_text("\n".join(cams) + "\n")
    (model / "images.txt").write_text("\n".join(imgs) + "\n")
    (model / "points3D.txt").write_text("")


def triangulate(scene: Scene, work: Path, views: list[int] | None = None) -> np.ndarray:
    """(N, 3) float64 points in the scene's NORMALISED frame, triangulated from SIFT matches
    between ``views`` (default: the training views) with the scene's cameras held fixed; only
    points seen in :data:`MIN_TRACK` views or more, within :data:`MAX_REPROJ_PX`. ``work``
    holds COLMAP's images, database and models."""
    pycolmap = _pycolmap()
    views = [int(v) for v in (scene.train_ids if views is None else views)]
    if len(views) < 2:
        raise DatasetError(f"scene {scene.name!r}: triangulation needs 2 views or more")
    shutil.rmtree(work, ignore_errors=True)
    images, model, out = work / "images", work / "known", work / "triangulated"
    images.mkdir(parents=True)
    for v in views:  # the images the loader gives (undistorted, downscaled): K matches them
        iio.imwrite(images / f"{v:06d}.png", scene.image_u8(v))
    db = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                              reader_options=reader)  # fmt: skip
    pycolmap.match_exhaustive(db)
    with pycolmap.Database.open(db) as d:
        ids = {im.name: (im.image_id, im.camera_id) for im in d.read_all_images()}
    missing = [f"{v:06d}.png" for v in views if f"{v:06d}.png" not in ids]
    if missing:
        raise DatasetError(f"feature extraction skipped {len(missing)} view(s): {missing[:3]}")
    _write_model(model, scene, views, ids)
    out.mkdir()
    rec = pycolmap.triangulate_points(pycolmap.Reconstruction(model), db, images, out)
    pts = [p.xyz for p in rec.points3D.values()
           if p.track.length() >= MIN_TRACK and p.error <= MAX_REPROJ_PX]  # fmt: skip
    log.info(
        "triangulated %d points in %d views (%d with a track >= %d and error <= %.1f px)",
        rec.num_points3D(), len(views), len(pts), MIN_TRACK, MAX_REPROJ_PX,
    )  # fmt: skip
    return np.asarray(pts, dtype=np.float64).reshape(-1, 3)
