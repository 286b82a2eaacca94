"""Turn a folder of photos into a NeuS-format scene with structure-from-motion (pycolmap).

    python -m neurecon.data.prepare IMAGES_DIR OUT_DIR
    python train.py dataset=neus dataset.root=OUT_DIR

    python -m neurecon.data.prepare --triangulate SCENE [--points-out PLY] [--downscale N]

    python -m neurecon.data.prepare --builtin OUT_DIR [shape=mug texture=noise resolution=192]

Runs SIFT feature extraction, exhaustive matching and incremental mapping, keeps the largest
reconstruction, undistorts the registered images to pinhole cameras and writes ``image/``,
``cameras_sphere.npz`` (``world_mat_i``, ``scale_mat_i`` from a robust bounding sphere of the
sparse points) and the COLMAP model under ``colmap/``.

``--builtin`` writes the built-in scene (``dataset=synthetic``; its arguments as ``key=value``)
in the NeuS format with masks, e.g. to triangulate its sparse points from larger renders than
training uses, for ``dataset.points``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import trimesh
from tqdm.auto import tqdm

from neurecon.atomic import atomic_write
from neurecon.data.colmap import ColmapScene, _pycolmap
from neurecon.data.io import list_images
from neurecon.errors import DatasetError, NeuReconError

log = logging.getLogger("neurecon.prepare")


@contextmanager
def _native_stderr(path: Path) -> Iterator[None]:
    """Capture what COLMAP's C++ logging writes to file descriptor 2 into ``path`` (so the
    cause of a failure can be reported), then pass it on to stderr unchanged."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    sys.stderr.write(path.read_text(errors="replace"))
    sys.stderr.flush()


_GLOG = re.compile(r"^(?P<level>[EWF])\d{8} [\d:.]+\s+\d+\s+(?P<where>\S+)\] (?P<msg>.*)$")


def _colmap_cause(log_file: Path, limit: int = 3) -> str:
    """COLMAP's own words for a failure: its last distinct error lines (warnings when there
    are none), without glog's time stamps, for the error message."""
    if not log_file.is_file():
        return ""
    found: dict[str, list[str]] = {"E": [], "W": []}
    for line in log_file.read_text(errors="replace").splitlines():
        m = _GLOG.match(line.strip())
        if m and "threads" not in m["msg"]:  # the advice about extraction threads is noise
            found["E" if m["level"] in "EF" else "W"].append(m["msg"])
    hits = list(dict.fromkeys(found["E"] or found["W"]))[-limit:]
    return ("; COLMAP said: " + " | ".join(hits)) if hits else ""


def group_by_size(paths: list[Path], folder: Path) -> int:
    """Link each photo into ``folder/<H>x<W>/``; returns the number of distinct sizes.

    COLMAP's ``PER_FOLDER`` camera mode then gives one camera per image size: a single camera
    for all rejects every image whose size differs from the first (``CAMERA_SINGLE_DIM_ERROR``),
    even by a few pixels, and one camera per image leaves the intrinsics less constrained.
    """
    shutil.rmtree(folder, ignore_errors=True)
    sizes = set()
    for p in paths:
        h, w = iio.improps(p).shape[:2]
        sizes.add((h, w))
        dst = folder / f"{h}x{w}" / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.symlink_to(p.resolve())
        except OSError:  # no symlinks here (some filesystems): copy
            shutil.copy2(p, dst)
    return len(sizes)


def run_sfm(images_dir: Path, work: Path, min_registered: int = 3) -> tuple[Path, Path]:
    """COLMAP SfM into ``work`` with one camera per image size; returns the folder of the
    largest model and the images folder its image names are relative to."""
    pycolmap = _pycolmap()
    paths = list_images(images_dir)
    n_images = len(paths)
    work.mkdir(parents=True, exist_ok=True)
    by_size = work / "images"
    n_sizes = group_by_size(paths, by_size)
    db, colmap_log = work / "database.db", work / "colmap.log"
    db.unlink(missing_ok=True)
    steps = tqdm(total=3, desc="structure from motion")
    log.info(
        "extracting features from %d images in %s (%d size(s), one camera per size)",
        n_images,
        images_dir,
        n_sizes,
    )
    with _native_stderr(colmap_log):
        pycolmap.extract_features(db, by_size, camera_mode=pycolmap.CameraMode.PER_FOLDER)
        steps.update(1)
        with sqlite3.connect(db) as con:
            n_extracted = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        log.info("matching features (exhaustive)")
        pycolmap.match_exhaustive(db)
        steps.update(1)
        log.info("incremental mapping")
        sparse = work / "sparse"
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir()
        recs = pycolmap.incremental_mapping(db, by_size, sparse)
        steps.update(1)
    steps.close()
    lost = (
        f"; feature extraction kept {n_extracted} of {n_images} images"
        if n_extracted < n_images
        else ""
    )
    n_reg = max((r.num_reg_images() for r in recs.values()), default=0)
    if n_reg < min_registered:
        raise DatasetError(
            f"structure from motion registered {'only ' if n_reg else ''}{n_reg} of "
            f"{n_images} images in {images_dir} (need {min_registered}){lost}"
            f"{_colmap_cause(colmap_log)} (full log: {colmap_log})"
        )
    best_id = max(recs, key=lambda k: recs[k].num_reg_images())
    log.info("registered %d of %d images (model %d)", n_reg, n_images, best_id)
    return sparse / str(best_id), by_size


def write_neus(scene: ColmapScene, out: Path) -> None:
    """``image/000000.png …`` and ``cameras_sphere.npz`` in the NeuS/IDR convention."""
    (out / "image").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(scene.num_views), desc="writing images"):
        img = scene.image_u8(i)
        atomic_write(out / "image" / f"{i:06d}.png", lambda p, a=img: iio.imwrite(p, a))
    P = scene.world_projections()
    cams = {}
    for i in range(scene.num_views):
        cams[f"world_mat_{i}"] = np.vstack([P[i], [0.0, 0.0, 0.0, 1.0]])
        cams[f"scale_mat_{i}"] = scene.to_world
    atomic_write(out / "cameras_sphere.npz", lambda p: np.savez(p, **cams))


def prepare(
    images_dir: str | Path, out_dir: str | Path, min_registered: int = 3, overwrite: bool = False
) -> Path:
    images, out = Path(images_dir), Path(out_dir)
    if (out / "cameras_sphere.npz").exists() and not overwrite:
        raise NeuReconError(f"{out} already holds a prepared scene; pass --overwrite to redo it")
    model, image_dir = run_sfm(images, out / "colmap", min_registered)
    scene = ColmapScene(
        str(out), model=str(model.relative_to(out)), image_dir=str(image_dir), test_every=0
    )
    write_neus(scene, out)
    log.info(
        "wrote %s: %d views; train with: python train.py dataset=neus dataset.root=%s",
        out,
        scene.num_views,
        out,
    )
    return out


def triangulate_scene(
    scene_dir: str | Path,
    points_out: str | Path | None = None,
    downscale: int = 1,
    test_every: int = 8,
    hull_dilate_px: float = 12.0,
    overwrite: bool = False,
) -> Path:
    """Sparse points for the NeuS-format scene at ``scene_dir`` from its training views (the
    split of ``dataset.test_every``: test views never feed training), written to
    ``points_out`` (default ``SCENE/points3D.ply``) in the world frame. With masks, points
    outside their visual hull (dilated by ``hull_dilate_px`` photo pixels) are dropped: a
    masked run models the object alone."""
    from neurecon.data.neus import POINTS_FILE, NeuSScene
    from neurecon.data.triangulate import triangulate

    root = Path(scene_dir)
    out = Path(points_out) if points_out is not None else root / POINTS_FILE
    if out.exists() and not overwrite:
        raise NeuReconError(f"{out} already exists; pass --overwrite to redo it")
    scene = NeuSScene(str(root), cameras="auto", use_mask="auto", downscale=downscale,
                      test_every=test_every, points=None)  # fmt: skip
    work = out.parent / f".{out.stem}_colmap"
    pts = triangulate(scene, work)
    hull = scene.visual_hull()
    if hull is not None and len(pts):
        inside = ~hull.outside(pts, hull_dilate_px)
        log.info("%d of %d points inside the masks' visual hull", inside.sum(), len(pts))
        pts = pts[inside]
    if not len(pts):
        raise DatasetError(f"no point of {root} could be triangulated (log: {work})")
    cloud = trimesh.PointCloud(scene.to_world_points(pts))
    atomic_write(out, lambda p: cloud.export(p, file_type="ply"))
    log.info("wrote %d points to %s (world frame); train with +loss/sparse_points=typed",
             len(pts), out)  # fmt: skip
    return out


def write_builtin(out_dir: str | Path, args: list[str], overwrite: bool = False) -> Path:
    """The built-in scene with the :class:`~neurecon.data.SyntheticScene` arguments ``args``
    (``key=value``, values parsed as YAML) as a NeuS-format scene with masks in ``out_dir``."""
    import inspect

    from omegaconf import OmegaConf

    from neurecon.data.synthetic import SyntheticScene

    out = Path(out_dir)
    if (out / "cameras_sphere.npz").exists() and not overwrite:
        raise NeuReconError(f"{out} already holds a scene; pass --overwrite to redo it")
    try:
        kwargs = OmegaConf.to_container(OmegaConf.from_dotlist(list(args)))
    except Exception as e:  # OmegaConf's own message names the bad item
        raise NeuReconError(f"--builtin arguments: {e}") from None
    known = set(inspect.signature(SyntheticScene).parameters) - {"device", "points"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise NeuReconError(f"--builtin: unknown argument(s) {unknown}; known: {sorted(known)}")
    try:
        scene = SyntheticScene(**kwargs, device="host")
    except (TypeError, ValueError) as e:  # a value of the wrong type: name the arguments
        raise NeuReconError(f"--builtin {' '.join(args)}: {e}") from None
    write_neus(scene, out)
    (out / "mask").mkdir(exist_ok=True)
    for i in range(scene.num_views):
        mask = scene.mask(i)
        atomic_write(out / "mask" / f"{i:06d}.png", lambda p, a=mask: iio.imwrite(p, a))
    log.info("wrote %s: %d views of %s with masks", out, scene.num_views, scene.name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("images_dir", nargs="?")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--min-registered", type=int, default=3)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--triangulate", metavar="SCENE", help="a posed NeuS-format scene")
    ap.add_argument("--points-out", metavar="PLY", help="default: SCENE/points3D.ply")
    ap.add_argument("--downscale", type=int, default=1, help="as dataset.downscale")
    ap.add_argument("--test-every", type=int, default=8, help="as dataset.test_every")
    ap.add_argument("--builtin", metavar="OUT_DIR", help="write the built-in scene (see above)")
    args, rest = ap.parse_known_args(argv)
    if args.builtin is not None:  # the positionals are its key=value arguments
        rest = [a for a in (args.images_dir, args.out_dir) if a is not None] + rest
        if args.triangulate is not None or any("=" not in a for a in rest):
            ap.error("--builtin OUT_DIR takes key=value arguments only")
    elif rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    elif (args.triangulate is None) != (args.images_dir is not None and args.out_dir is not None):
        ap.error("give IMAGES_DIR OUT_DIR, --triangulate SCENE or --builtin OUT_DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        if args.builtin is not None:
            write_builtin(args.builtin, rest, overwrite=args.overwrite)
        elif args.triangulate is not None:
            triangulate_scene(args.triangulate, args.points_out, args.downscale,
                              args.test_every, overwrite=args.overwrite)  # fmt: skip
        else:
            prepare(args.images_dir, args.out_dir, args.min_registered, args.overwrite)
    except NeuReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
