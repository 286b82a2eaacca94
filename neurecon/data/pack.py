"""A smaller copy of a NeuS-format scene, for machines with a size limit.

    python -m neurecon.data.pack /data/DTU/dtu_scan65 small/dtu_scan65      # JPEG quality 95
    python train.py dataset=dtu dataset.root=small/dtu_scan65

The images are re-encoded as JPEG at full resolution (DTU scan65: 119 MB of PNG become 25 MB
at quality 95, 41 dB PSNR against the PNGs), for carrying a scan to a cluster's quota or a lent
GPU machine. Masks stay lossless PNG, since the mask loss reads their edges, and the camera
files (``*.npz``) are copied unchanged.
The copy is written to a temporary folder beside ``DST`` and renamed into place at the end, so
an interrupted pack leaves no half scene; an existing ``DST`` is never replaced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from neurecon.atomic import fsync_dir, fsync_tree, umask
from neurecon.data.io import list_images, read_image
from neurecon.errors import DatasetError, NeuReconError


def _rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file; grey is widened, alpha is refused (JPEG has
    none, and dropping it would change what the loader composites)."""
    img = read_image(path)  # the loader's reader: an undecodable file is named
    if img.dtype != np.uint8:
        raise DatasetError(f"{path}: {img.dtype} pixels; packing keeps 8-bit images only")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DatasetError(f"{path}: shape {img.shape}; packing takes RGB or grey (no alpha)")
    return img


def pack_scene(
    src: str | Path,
    dst: str | Path,
    quality: int = 95,
    image_dir: str = "image",
    mask_dir: str = "mask",
) -> Path:
    """Copy the NeuS-format scene ``src`` to ``dst`` with its images as JPEG of ``quality``
    (1..100); masks and ``*.npz`` camera files unchanged. Returns ``dst``.

    Raises :class:`DatasetError` naming the file or folder at fault; ``dst`` must not exist."""
    src, dst = Path(src), Path(dst)
    if not 1 <= quality <= 100:
        raise DatasetError(f"JPEG quality must be in 1..100, got {quality}")
    if not src.is_dir():
        raise DatasetError(f"scene folder {src} does not exist")
    cameras = sorted(src.glob("*.npz"))
    if not cameras:
        raise DatasetError(f"{src}: no camera file (*.npz, e.g. cameras_sphere.npz)")
    images = list_images(src / image_dir)  # names the folder when it is missing or empty
    if dst.exists():
        raise DatasetError(f"{dst} exists; packing never replaces a folder (remove it first)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / image_dir).mkdir()
        for path in images:  # same stem, new suffix: the loader pairs images and masks by order
            iio.imwrite(tmp / image_dir / f"{path.stem}.jpg", _rgb(path), quality=quality)
        if (src / mask_dir).is_dir():
            shutil.copytree(src / mask_dir, tmp / mask_dir)
        for cam in cameras:
            shutil.copy2(cam, tmp / cam.name)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; a scan is for sharing
        fsync_tree(tmp)  # the new folder is complete on disk before its name appears
        tmp.rename(dst)
        fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", help="a NeuS-format scene (cameras_sphere.npz, image/, mask/)")
    ap.add_argument("dst", help="the new, smaller copy (must not exist)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality, 1..100 (95)")
    ap.add_argument("--image-dir", default="image")
    ap.add_argument("--mask-dir", default="mask")
    args = ap.parse_args(argv)
    try:
        out = pack_scene(args.src, args.dst, args.quality, args.image_dir, args.mask_dir)
    except NeuReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
