"""Turn a folder of photos into a NeuS-format scene with structure-from-motion (pycolmap).

    python -m neurecon.data.prepare IMAGES_DIR OUT_DIR
    python train.py dataset=neus dataset.root=OUT_DIR

Runs SIFT feature extraction, exhaustive matching and incremental mapping, keeps the largest
reconstruction, undistorts the registered images to pinhole cameras and writes ``image/``,
``cameras_sphere.npz`` (``world_mat_i``, ``scale_mat_i`` from a robust bounding sphere of the
sparse points) and the COLMAP model under ``colmap/``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from tqdm.auto import tqdm

from neurecon.data.colmap import ColmapScene, _pycolmap
from neurecon.data.io import list_images
from neurecon.errors import DatasetError, NeuReconError
from neurecon.io import atomic_write

log = logging.getLogger("neurecon.prepare")


def run_sfm(images_dir: Path, work: Path, min_registered: int = 3) -> Path:
    """COLMAP SfM into ``work``; returns the folder of the largest model."""
    pycolmap = _pycolmap()
    n_images = len(list_images(images_dir))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    db.unlink(missing_ok=True)
    steps = tqdm(total=3, desc="structure from motion")
    log.info("extracting features from %d images in %s", n_images, images_dir)
    pycolmap.extract_features(db, images_dir, camera_mode=pycolmap.CameraMode.SINGLE)
    steps.update(1)
    log.info("matching features (exhaustive)")
    pycolmap.match_exhaustive(db)
    steps.update(1)
    log.info("incremental mapping")
    sparse = work / "sparse"
    shutil.rmtree(sparse, ignore_errors=True)
    sparse.mkdir()
    recs = pycolmap.incremental_mapping(db, images_dir, sparse)
    steps.update(1)
    steps.close()
    if not recs:
        raise DatasetError(
            f"structure from motion registered 0 of {n_images} images in {images_dir}: "
            "the photos need more overlap and texture"
        )
    best_id = max(recs, key=lambda k: recs[k].num_reg_images())
    n_reg = recs[best_id].num_reg_images()
    if n_reg < min_registered:
        raise DatasetError(
            f"structure from motion registered only {n_reg} of {n_images} images in "
            f"{images_dir} (need {min_registered}); take more overlapping photos"
        )
    log.info("registered %d of %d images (model %d)", n_reg, n_images, best_id)
    return sparse / str(best_id)


def write_neus(scene: ColmapScene, out: Path) -> None:
    """``image/000000.png …`` and ``cameras_sphere.npz`` in the NeuS/IDR convention."""
    (out / "image").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(scene.num_views), desc="writing images"):
        img = scene.images[i].numpy()
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
    model = run_sfm(images, out / "colmap", min_registered)
    scene = ColmapScene(
        str(out), model=str(model.relative_to(out)), image_dir=str(images.resolve()), test_every=0
    )
    write_neus(scene, out)
    log.info(
        "wrote %s: %d views; train with: python train.py dataset=neus dataset.root=%s",
        out,
        scene.num_views,
        out,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("images_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--min-registered", type=int, default=3)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        prepare(args.images_dir, args.out_dir, args.min_registered, args.overwrite)
    except NeuReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
