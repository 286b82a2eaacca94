"""Every loader, fuzzed: a corrupt file gives one error naming it, never a traceback, a hang,
a crash or a huge allocation, and nothing already written is lost.

Each format starts from a small valid scene (the writers of the format tests); Hypothesis then
replaces one of its files with random bytes, a truncation, bit flips, or a structured
mutation (NaN / inf / wrong shapes in camera arrays, wrong types in JSON, absurd sizes in image
headers). The loader must either load or raise :class:`neurecon.errors.NeuReconError` naming
the file. Fixed seeds here; ``-m slow`` runs ten times as many. The command-line path (one
line on stderr, exit code 2) is checked for one case per format below.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import REPO, compose_cfg
from test_colmap import write_colmap
from test_data import write_neus_scene
from test_formats import write_llff, write_ngp

from neurecon.build import instantiate_node
from neurecon.errors import NeuReconError

pytest.importorskip("hypothesis")  # not on every machine the GPU suite runs on
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

SEED = 20261201


def fuzzed(n: int):
    """Hypothesis at a fixed seed, ``n`` examples, no deadline (CI machines are slow) and no
    example database (runs are reproducible from the seed alone)."""

    def wrap(test):
        settings_ = settings(max_examples=n, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))  # fmt: skip
        return seed(SEED)(settings_(test))

    return wrap


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w`` x ``h`` (a decompression bomb's header) and no data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@st.composite
def corrupt_bytes(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "empty", "bomb"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=512))
    if kind == "truncate":
        return original[: draw(st.integers(0, max(0, len(original) - 1)))]
    if kind == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "bomb":
        w, h = draw(st.sampled_from([(100000, 100000), (2**31 - 1, 2**31 - 1), (1, 2**31 - 1)]))
        return _png_header(w, h)
    return b""


ODD_VALUES = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e308, "x", None, [], {}]


@st.composite
def corrupt_json(draw, original: bytes) -> bytes:
    """transforms.json with one value replaced at a random place."""
    meta = json.loads(original)
    paths = [("frames",), ("fl_x",), ("w",), ("h",), ("cx",)]
    paths += [("frames", 0, k) for k in ("transform_matrix", "file_path")]
    paths += [("frames", 0, "transform_matrix", 1), ("frames", 0, "transform_matrix", 2, 3)]
    path = draw(st.sampled_from(paths))
    node = meta
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = draw(st.sampled_from(ODD_VALUES))
    return json.dumps(meta).encode()


@st.composite
def corrupt_array(draw, arr: np.ndarray) -> np.ndarray:
    kind = draw(st.sampled_from(["nan", "inf", "shape", "dtype", "zero", "huge"]))
    out = arr.astype(np.float64).copy()
    flat = out.reshape(-1)
    if kind in ("nan", "inf", "huge"):
        i = draw(st.integers(0, flat.size - 1))
        flat[i] = {"nan": np.nan, "inf": np.inf, "huge": 1e300}[kind]
        return out
    if kind == "zero":
        return np.zeros_like(out)
    if kind == "dtype":
        return np.array(["x"] * flat.size).reshape(out.shape)
    return flat[: draw(st.integers(0, flat.size - 1))]  # a wrong shape


def _mutate_npz(path: Path, draw_array) -> None:
    cams = dict(np.load(path))
    key = sorted(cams)[0]
    cams[key] = draw_array(cams[key])
    np.savez(path, **cams)


def write_colmap_bin(root: Path) -> None:
    """The COLMAP text model of test_colmap, converted to COLMAP's binary files by pycolmap."""
    import pycolmap

    write_colmap(root / "text")
    shutil.copytree(root / "text" / "images", root / "images")
    (root / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(root / "text" / "sparse" / "0")).write_binary(
        str(root / "sparse" / "0")
    )
    shutil.rmtree(root / "text")


# format → (writer, config overrides, files to corrupt (relative), structured mutation)
FORMATS = {
    "neus": (lambda r: write_neus_scene(r), ["dataset=neus"], ["cameras_sphere.npz",
             "image/000001.png", "mask/001.png"], "npz"),
    "ngp": (lambda r: write_ngp(r), ["dataset=ngp"], ["transforms.json", "images/0001.png"],
            "json"),
    "llff": (lambda r: write_llff(r), ["dataset=llff", "dataset.factor=4"],
             ["poses_bounds.npy", "images_4/IMG_001.JPG"], "npy"),
    "colmap": (lambda r: write_colmap(r), ["dataset=colmap"], ["sparse/0/cameras.txt",
               "sparse/0/images.txt", "sparse/0/points3D.txt", "images/img_01.png"], None),
    # pycolmap trusts a .bin file's counts: a flipped bit once made it allocate without bound
    "colmap_bin": (write_colmap_bin, ["dataset=colmap"], ["sparse/0/cameras.bin",
                   "sparse/0/images.bin", "sparse/0/points3D.bin"], None),
}  # fmt: skip
# COLMAP models are read in a child process first (about a second each): fewer examples.
EXAMPLES = {"colmap": 15, "colmap_bin": 15}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for name, (write, overrides, _, _) in FORMATS.items():
        write(root / name)
        out[name] = (root / name, compose_cfg(overrides).dataset)
    return out


def _fuzz_format(name: str, templates, n: int) -> dict[str, int]:
    template, node = templates[name]
    _, _, files, structured = FORMATS[name]
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    counts = {"loaded": 0, "refused": 0}

    @fuzzed(n)
    @given(data=st.data())
    def one(data) -> None:
        scene = work / "scene"
        shutil.rmtree(scene, ignore_errors=True)
        shutil.copytree(template, scene)
        rel = data.draw(st.sampled_from(files))
        target = scene / rel
        original = target.read_bytes()
        if structured == "json" and rel.endswith(".json") and data.draw(st.booleans()):
            target.write_bytes(data.draw(corrupt_json(original)))
        elif structured == "npz" and rel.endswith(".npz") and data.draw(st.booleans()):
            _mutate_npz(target, lambda a: data.draw(corrupt_array(a)))
        elif structured == "npy" and rel.endswith(".npy") and data.draw(st.booleans()):
            np.save(target, data.draw(corrupt_array(np.load(target))))
        else:
            target.write_bytes(data.draw(corrupt_bytes(original)))
        try:
            loaded = instantiate_node(node, "dataset", root=str(scene))  # as build() does
        except NeuReconError as e:
            counts["refused"] += 1
            msg = str(e)
            assert "\n" not in msg.strip(), msg
            names = {rel, target.name, str(scene), Path(rel).parent.name}
            assert any(s in msg for s in names), (rel, msg)
            return
        counts["loaded"] += 1  # a flip the format tolerates: then the scene must be sane
        assert torch.isfinite(loaded.c2w).all() and torch.isfinite(loaded.K).all()

    one()
    shutil.rmtree(work, ignore_errors=True)
    return counts


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_corrupt_scene_files_are_named_never_crash(templates, name):
    counts = _fuzz_format(name, templates, EXAMPLES.get(name, 80))
    print(name, counts)
    assert counts["refused"] >= EXAMPLES.get(name, 80) // 4, counts


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_corrupt_scene_files_long_run(templates, name):
    print(name, _fuzz_format(name, templates, 10 * EXAMPLES.get(name, 80)))


@st.composite
def image_bytes(draw, suffix: str) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    ext = {".exr": ".png"}.get(suffix, suffix)  # no EXR writer here: corrupt a PNG's bytes
    return draw(corrupt_bytes(iio.imwrite("<bytes>", img, extension=ext)))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".exr"])
def test_corrupt_images_are_named_never_crash(tmp_path, suffix):
    from neurecon.data.io import load_mask, load_rgb

    path = tmp_path / f"img{suffix}"

    @fuzzed(120)
    @given(data=image_bytes(suffix))
    def one(data: bytes) -> None:
        path.write_bytes(data)
        for load in (load_rgb, load_mask):
            try:
                img = load(path)
            except NeuReconError as e:
                assert str(path) in str(e) and "\n" not in str(e)
                continue
            assert img.dtype == np.uint8 and img.size <= 2**26

    one()


@pytest.mark.parametrize("size", [(100000, 100000), (2**31 - 1, 2**31 - 1), (70000, 1)])
def test_absurd_header_sizes_are_refused_before_decoding(tmp_path, size):
    from neurecon.data.io import read_image

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(*size))
    with pytest.raises(NeuReconError, match=r"bomb\.png"):
        read_image(path)


@st.composite
def checkpoint_bytes(draw, original: bytes) -> bytes:
    return draw(corrupt_bytes(original))


def test_corrupt_checkpoints_are_named_never_crash(tmp_path):
    from neurecon.train.checkpoint import load_checkpoint, save_checkpoint

    good = tmp_path / "good.ckpt"
    save_checkpoint(good, {"step": 3, "field": {"w": torch.ones(4, 4)}, "renderer": {}})
    original = good.read_bytes()
    path = tmp_path / "step_000003.ckpt"

    @fuzzed(150)
    @given(data=checkpoint_bytes(original))
    def one(data: bytes) -> None:
        path.write_bytes(data)
        try:
            state = load_checkpoint(path)
        except NeuReconError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return
        assert isinstance(state, dict) and isinstance(state["step"], int)

    one()
    assert good.read_bytes() == original  # nothing already written is lost


def _train_cli(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={out}", "trainer.max_steps=1",
         "trainer.progress=false", "logger=none", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "rel", "data"),
    [
        ("neus", "cameras_sphere.npz", b"PK\x03\x04 truncated"),
        ("ngp", "transforms.json", b'{"frames": 5}'),
        ("llff", "poses_bounds.npy", b"\x93NUMPY garbage"),
        ("colmap", "sparse/0/cameras.txt", b"1 PINHOLE -5 x\n"),
    ],
)
def test_the_command_line_gives_one_line_and_exit_2(templates, tmp_path, fmt, rel, data):
    template, _ = templates[fmt]
    scene = tmp_path / "scene"
    shutil.copytree(template, scene)
    (scene / rel).write_bytes(data)
    extra = ["dataset.factor=4"] if fmt == "llff" else []
    res = _train_cli(tmp_path / "run", f"dataset={fmt}", f"dataset.root={scene}", *extra)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    # pycolmap reads the model folder as a whole and does not say which file failed
    named = str(scene / Path(rel).parent) if fmt == "colmap" else Path(rel).name
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
