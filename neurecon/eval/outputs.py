"""What a user takes home from a trained field, beyond the metrics: a coloured, cleaned mesh,
depth and normal maps of the test views, and a turntable video. Functions of (scene, field,
renderer); ``python -m neurecon.export`` and the end of training both call them.

Vertex colours are the colour network's output at each vertex seen head-on, along the inverse
vertex normal. That is the colour of the surface where it faces the viewer, with no occlusion
test and no averaging of views that may not see the vertex; for view-dependent effects
(specular highlights) it is one choice of view, as in instant-nsr-pl's and NeuS's exports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh
from torch import nn
from tqdm.auto import tqdm

from neurecon.atomic import atomic_write
from neurecon.data.cameras import look_at
from neurecon.data.scene import Scene
from neurecon.errors import NeuReconError
from neurecon.eval.settings import EvalSettings
from neurecon.eval.views import render_camera, render_view
from neurecon.geometry import extract_mesh
from neurecon.geometry.clean import keep_largest, seen_faces, submesh
from neurecon.geometry.picture import frame_from_cameras, render_mesh_camera
from neurecon.memory import retry_on_oom
from neurecon.metrics.depth import frame_scale
from neurecon.metrics.dtu import cull_by_masks, protocol

log = logging.getLogger(__name__)
MESH_FORMATS = ("ply", "obj", "glb")


def scale_rotation(to_world: np.ndarray) -> tuple[float, np.ndarray]:
    """The uniform scale (:func:`~neurecon.metrics.depth.frame_scale`) and the rotation of a
    similarity ``to_world`` (4, 4)."""
    scale = frame_scale(to_world)
    return scale, to_world[:3, :3] / scale


@torch.no_grad()
def vertex_colors(
    scene: Scene,
    field: nn.Module,
    mesh: trimesh.Trimesh,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(V, 4) uint8 RGBA: the field's colour at each vertex of the world-frame ``mesh``, seen
    along the inverse vertex normal (see the module docstring)."""
    field.eval()
    scale, rot = scale_rotation(scene.to_world)
    x = (np.asarray(mesh.vertices) - scene.to_world[:3, 3]) @ rot / scale  # → normalised frame
    d = -np.asarray(mesh.vertex_normals) @ rot
    out = np.empty((len(x), 3), np.float32)
    for s in range(0, len(x), chunk):
        xs = torch.tensor(x[s : s + chunk], dtype=torch.float32, device=device)
        ds = torch.tensor(d[s : s + chunk], dtype=torch.float32, device=device)
        out[s : s + chunk] = field(xs, ds, create_graph=False).color.float().cpu().numpy()
    rgb = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.c_[rgb, np.full(len(rgb), 255, np.uint8)]


@dataclass
class MeshOptions:
    """How the mesh is made. resolution: grid points per side; block: grid points per block
    side (memory bound); colors: vertex colours; keep_largest: only the largest connected
    component, or with ``min_component`` every component with at least that fraction of its
    faces; cull_unseen: drop faces outside every training camera's view; cull_masks: DTU-style
    culling by the training masks as ``mask_protocol`` does it (``neurecon.metrics.dtu``:
    neus, monosdf, neuralwarp), ``mask_dilate`` overriding its dilation (photo pixels)."""

    resolution: int = 128
    block: int = 128
    colors: bool = True
    keep_largest: bool = False
    min_component: float | None = None
    cull_unseen: bool = False
    cull_masks: bool = False
    mask_protocol: str = "neus"
    mask_dilate: float | None = None


def export_mesh(
    scene: Scene, field: nn.Module, settings: EvalSettings, opts: MeshOptions
) -> trimesh.Trimesh:
    """The world-frame mesh of ``field``'s zero level set, extracted block-wise, cleaned as
    ``opts`` says, with vertex colours. Raises :class:`~neurecon.errors.MeshExtractionError`
    when there is no surface."""
    field.eval()
    # An SDF's value bounds the distance to its surface: far blocks are skipped unevaluated.
    margin = 2.0 if getattr(field, "kind", None) == "sdf" else None
    mesh, points = retry_on_oom(
        lambda chunk: extract_mesh(
            field.geometry, scene.to_world, opts.resolution, chunk=chunk, device=settings.device,
            block=opts.block, skip_margin=margin, progress=settings.progress,
        ),
        settings.chunk * 32,  # points, not rays: no samples along rays here
        "mesh extraction",
    )  # fmt: skip
    train = scene.train_ids.numpy()
    if opts.cull_unseen:
        mesh = submesh(
            mesh, seen_faces(mesh, scene.world_projections()[train], scene.sizes.numpy()[train])
        )
    if opts.cull_masks:
        if scene.masks is None:
            raise ValueError(f"mask culling: scene {scene.name!r} has no masks")
        cull = protocol(opts.mask_protocol)
        radius = cull.dilate_px if opts.mask_dilate is None else opts.mask_dilate
        culled = cull_by_masks(
            mesh, scene.world_projections()[train], [scene.mask(int(v)) for v in train],
            dilate=radius / float(getattr(scene, "downscale", 1)),  # photo pixels → masks'
        )  # fmt: skip
        mesh = submesh(culled, np.ones(len(culled.faces), bool))
    if opts.keep_largest or opts.min_component is not None:
        mesh = keep_largest(mesh, opts.min_component)
    if opts.colors and len(mesh.vertices):
        mesh.visual.vertex_colors = vertex_colors(scene, field, mesh, points, settings.device)
    return mesh


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` atomically; the format comes from the suffix (ply, obj, glb)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"{path}: mesh format {fmt!r} not supported; choose from {MESH_FORMATS}")
    kwargs = {"include_color": True} if fmt == "obj" else {}
    return atomic_write(path, lambda p: mesh.export(p, file_type=fmt, **kwargs))


def depth_normal_maps(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    views: list[int],
    settings: EvalSettings,
    folder: Path,
) -> list[Path]:
    """Per view: ``depth/view_XXX.npy`` (H, W) float32, the distance along each pixel's ray to
    the surface in WORLD units (NaN where the render's opacity is below 0.5), and
    ``normal/view_XXX.png``, world-frame normals as ``(n + 1) / 2`` RGB (white: no surface)."""
    scale, rot = scale_rotation(scene.to_world)
    written = []
    for v in tqdm(views, disable=not settings.progress, desc="depth/normal maps", leave=False):
        img, settings.chunk = render_view(
            scene, field, renderer, v, settings.chunk, settings.device
        )
        opacity = img["opacity"]
        covered = opacity >= 0.5
        depth = np.where(covered, img["depth"] / np.maximum(opacity, 1e-6) * scale, np.nan)
        n = _world_normals(img["normal"], rot)
        rgb = np.where(covered[..., None], (n + 1) * 0.5, 1.0)
        name = f"view_{v:03d}"
        written.append(
            atomic_write(folder / "depth" / f"{name}.npy", lambda p, a=depth: _save_npy(p, a))
        )
        png = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
        written.append(
            atomic_write(
                folder / "normal" / f"{name}.png",
                lambda p, a=png: iio.imwrite(p, a, extension=".png"),
            )
        )
    return written


def _world_normals(normal: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rendered normals (H, W, 3), normalised frame → unit normals in the world frame."""
    n = normal @ rot.T
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8)


def _save_npy(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a.astype(np.float32))


def turntable_cameras(scene: Scene, frames: int) -> list[np.ndarray]:
    """(4, 4) camera-to-world matrices (normalised frame) of a full turn around the scene's
    up axis (the training cameras' mean "up"), at the first training camera's height and
    distance, looking at the origin."""
    c2w = scene.c2w.double().numpy()[scene.train_ids.numpy()]
    up, _ = frame_from_cameras(c2w[:, :3])
    start = c2w[0, :3, 3]
    cams = []
    for k in range(frames):
        a = 2 * np.pi * k / frames
        # Rodrigues: ``start`` rotated by ``a`` about ``up``.
        eye = (
            start * np.cos(a)
            + np.cross(up, start) * np.sin(a)
            + up * np.dot(up, start) * (1 - np.cos(a))
        )
        cams.append(look_at(eye, np.zeros(3), tuple(up)))
    return cams


def turntable_video(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    mesh: trimesh.Trimesh | None,
    settings: EvalSettings,
    path: Path,
    frames: int = 48,
    size: int = 192,
    fps: int = 24,
) -> Path:
    """``path`` (.mp4): a turn around the object, each frame the rendered colour | the rendered
    normals | the shaded mesh (when given), written through imageio's ffmpeg plugin
    (``imageio-ffmpeg`` ships its own ffmpeg binary)."""
    field.eval()
    renderer.eval()
    v0 = int(scene.test_ids[0])
    H0, W0 = scene.size(v0)
    # Even sizes, multiples of 16 (what H.264 encoders want): no resampling by ffmpeg.
    W = max(16, round(min(size, W0) / 16) * 16)  # never finer than the photos
    H = max(16, round(W * H0 / W0 / 16) * 16)
    K = scene.K[v0].double().numpy().copy()
    K[0] *= W / W0
    K[1] *= H / H0
    rot = scale_rotation(scene.to_world)[1]
    out = []
    for c2w in tqdm(turntable_cameras(scene, frames), disable=not settings.progress, desc="video"):
        img, settings.chunk = render_camera(
            field, renderer, K, c2w, (H, W), scene.background_color, settings.chunk,
            settings.device,
        )  # fmt: skip
        color = np.clip(img["color"], 0, 1)
        n = _world_normals(img["normal"], rot)
        a = np.clip(img["opacity"], 0, 1)[..., None]
        normal = ((n + 1) * 0.5) * a + (1 - a)
        panels = [color, np.clip(normal, 0, 1)]
        if mesh is not None and len(mesh.vertices):
            w2c = np.linalg.inv(c2w)
            P = (K @ w2c[:3]) @ np.linalg.inv(scene.to_world)
            panels.append(render_mesh_camera(mesh, P, rot @ c2w[:3, :3], H, W) / 255.0)
        frame = np.concatenate(panels, axis=1)
        out.append((frame * 255 + 0.5).clip(0, 255).astype(np.uint8))
    return atomic_write(path, lambda p: _write_mp4(p, np.stack(out), fps))


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it)
    except ImportError as e:
        raise NeuReconError(
            "writing a video needs imageio-ffmpeg (pip install imageio-ffmpeg; it ships ffmpeg)"
        ) from e
    iio.imwrite(path, frames, plugin="FFMPEG", extension=".mp4", fps=fps, macro_block_size=16)
