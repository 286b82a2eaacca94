"""Reading scene files (images, camera arrays) with errors that name the file, on one line.

Scene files come from anywhere (a download, a colleague's capture), so every reader here
treats them as untrusted: sizes declared in headers are checked before anything is allocated,
arrays never unpickle, and whatever goes wrong while interpreting a file's contents
(:func:`parsing`) is reported as a :class:`DatasetError` naming it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.transform import resize

from neurecon.errors import DatasetError, NeuReconError, one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".exr"}
# Larger images are refused from their header, before decoding: a 16k x 8k photo is 128 Mpx;
# a crafted PNG header may claim 2^31 x 2^31.
MAX_PIXELS = 2**27
MAX_ARRAY_BYTES = 2**28  # a camera file's array (DTU's are a few kB)

# What interpreting a malformed file raises, from numpy, json, zipfile and our own indexing.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, EOFError,
              ArithmeticError, zipfile.BadZipFile, np.linalg.LinAlgError)  # fmt: skip


@contextmanager
def parsing(path: Path) -> Iterator[None]:
    """Errors raised while interpreting ``path``'s contents become one :class:`DatasetError`
    naming it (with the cause's type and message): a wrong type in a JSON field, an array of
    the wrong shape, a truncated zip. Our own errors pass through unchanged."""
    try:
        yield
    except NeuReconError:
        raise
    except _MALFORMED as e:
        raise DatasetError(f"{path}: malformed ({type(e).__name__}: {one_line(e)})") from None


def _check_array_header(fp, size: int, where: str) -> None:
    """The .npy header's declared shape must fit the bytes that are there (no huge allocation
    from a crafted header) and its dtype must hold no Python objects."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(fp)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if dtype.hasobject:
        raise DatasetError(f"{where}: holds Python objects (pickles are never loaded)")
    if need > MAX_ARRAY_BYTES or need > size:
        raise DatasetError(
            f"{where}: header declares {shape} {dtype} ({need} bytes); the file holds {size}"
        )


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` (no pickles), each header checked before it is read."""
    with parsing(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as fp:
                    _check_array_header(fp, info.file_size, f"{path}:{info.filename}")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array (no pickles), its header checked before it is read."""
    with parsing(path):
        with open(path, "rb") as fp:
            _check_array_header(fp, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False)


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted by name (pairs images and masks by order)."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"image folder {folder} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return files


def read_image(path: Path) -> np.ndarray:
    """An image file's pixels as stored (any dtype, 2 or 3 dims); errors name the file. The
    size in the header is checked first (:data:`MAX_PIXELS`), so a crafted header cannot make
    the decoder allocate gigabytes."""
    h, w = image_size(path)
    if h * w > MAX_PIXELS:
        raise DatasetError(f"{path}: image header claims size {h}x{w}; refusing to decode it")
    try:
        img = iio.imread(path)
    except Exception as e:  # imageio raises many types for undecodable files
        raise DatasetError(f"{path}: cannot decode image ({one_line(e)})") from None
    if img.ndim not in (2, 3):
        raise DatasetError(f"{path}: unsupported image shape {img.shape}")
    return img


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (no decoding)."""
    try:
        shape = iio.improps(path).shape
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode image ({one_line(e)})") from None
    if len(shape) < 2:
        raise DatasetError(f"{path}: unsupported image shape {shape}")
    return int(shape[0]), int(shape[1])


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    raise DatasetError(f"{path}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)")


def downscale_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (exact block mean when the size divides)."""
    if factor == 1:
        return img
    h, w = img.shape[0] // factor, img.shape[1] // factor
    if h < 1 or w < 1:
        raise DatasetError(f"downscale {factor} leaves no pixels of a {img.shape[:2]} image")
    x = img.astype(np.float32)
    if img.shape[0] % factor == 0 and img.shape[1] % factor == 0:
        x = x.reshape(h, factor, w, factor, *img.shape[2:]).mean(axis=(1, 3))
    else:
        x = resize(x, (h, w, *img.shape[2:]), anti_aliasing=True, preserve_range=True)
    return (x + 0.5).clip(0, 255).astype(np.uint8)


def load_rgb(path: Path, downscale: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale is repeated, an alpha channel is dropped."""
    img = _to_uint8(read_image(path), path)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[-1] == 4:
        img = img[..., :3]
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] != 3:
        raise DatasetError(f"{path}: {img.shape[-1]} channels; expected 1, 3 or 4")
    return downscale_image(img, int(downscale))


def load_mask(path: Path, downscale: int = 1) -> np.ndarray:
    """(H, W) uint8 mask in {0, 255}; multi-channel masks (DTU stores 3) use the first channel."""
    m = _to_uint8(read_image(path), path)
    if m.ndim == 3:
        m = m[..., 0]
    m = downscale_image(m, int(downscale))
    return np.where(m > 127, 255, 0).astype(np.uint8)


def load_rgba(path: Path, downscale: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB and (H, W) uint8 alpha (None when the file has no alpha)."""
    img = _to_uint8(read_image(path), path)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = downscale_image(img, int(downscale))
        return img[..., :3], img[..., 3]
    return load_rgb(path, downscale), None


def composite(rgb: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """``rgb * a + background * (1 - a)`` in uint8 (background as RGB floats in [0, 1])."""
    a = alpha[..., None].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32) * 255.0
    return (rgb.astype(np.float32) * a + bg * (1 - a) + 0.5).clip(0, 255).astype(np.uint8)
