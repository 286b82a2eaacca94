"""neurecon.data.pack: a JPEG copy of a NeuS-format scene that loads as the original does."""

import os
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from test_data import write_neus_scene

from neurecon.data import DatasetError, NeuSScene
from neurecon.data.pack import main, pack_scene


def _smooth_images(root, n=4, h=24, w=32):
    """Replace the scene's noise images with smooth ones (JPEG's case: photos, not noise)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        img = np.stack([u / w, v / h, 0.5 + 0.3 * np.sin(0.3 * u + 0.2 * v + i)], -1)
        iio.imwrite(root / "image" / f"{i:06d}.png", (img * 255).astype(np.uint8))


def test_packed_scene_loads_like_the_original(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out" / "packed"
    write_neus_scene(src)
    _smooth_images(src)
    assert main([str(src), str(dst), "--quality", "95"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert sorted(p.name for p in (dst / "image").iterdir()) == [f"{i:06d}.jpg" for i in range(4)]
    a, b = NeuSScene(str(src), test_every=0), NeuSScene(str(dst), test_every=0)
    assert np.array_equal(a.K.numpy(), b.K.numpy()) and np.array_equal(a.c2w.numpy(), b.c2w.numpy())
    assert np.array_equal(a.to_world, b.to_world)
    for i in range(4):
        assert np.array_equal(a.mask(i), b.mask(i))  # masks stay lossless
        err = np.abs(a.image(i) - b.image(i))
        assert err.mean() < 0.01 and err.max() < 0.1, (i, err.mean(), err.max())
    # Lower quality is a smaller, worse copy: the flag reaches the encoder.
    low = pack_scene(src, tmp_path / "low", quality=10)
    size = lambda d: sum(p.stat().st_size for p in (d / "image").iterdir())  # noqa: E731
    assert size(low) < size(dst)
    c = NeuSScene(str(low), test_every=0)
    assert np.abs(a.image(0) - c.image(0)).mean() > np.abs(a.image(0) - b.image(0)).mean()


def test_pack_never_replaces_a_folder_and_leaves_nothing_half_written(tmp_path):
    src = tmp_path / "src"
    write_neus_scene(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("earlier output")
    with pytest.raises(DatasetError, match="dst exists"):
        pack_scene(src, dst)
    assert (dst / "keep.txt").read_text() == "earlier output"

    # A bad image half-way: the error names it, and no partial copy is left behind.
    (src / "image" / "000002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"000002\.png: cannot decode"):
        pack_scene(src, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("rgba", r"000000.png: shape \(24, 32, 4\); packing takes RGB or grey"),
        ("no_cameras", r"no camera file \(\*.npz"),
        ("no_images", r"image folder .* holds no images"),
        ("quality", r"JPEG quality must be in 1..100, got 0"),
        ("no_folder", r"scene folder .*src does not exist"),
    ],
)
def test_pack_rejects_bad_input_by_name(tmp_path, case, message):
    src = tmp_path / "src"
    write_neus_scene(src)
    quality = 95
    if case == "rgba":
        iio.imwrite(src / "image" / "000000.png", np.zeros((24, 32, 4), np.uint8))
    elif case == "no_cameras":
        (src / "cameras_sphere.npz").unlink()
    elif case == "no_folder":
        shutil.rmtree(src)
    elif case == "no_images":
        for p in (src / "image").iterdir():
            p.unlink()
    else:
        quality = 0
    with pytest.raises(DatasetError, match=message):
        pack_scene(src, tmp_path / "dst", quality=quality)
    assert not (tmp_path / "dst").exists()
    assert main([str(src), str(tmp_path / "dst2"), "--quality", str(quality)]) == 2
