"""A picture of a mesh without a display or an OpenGL context: shaded point splatting.

Every vertex is projected orthographically from three directions around the mesh's own
bounding sphere (so the object is framed whatever its world position and scale), kept where
it is nearest to the viewer (a z-buffer), and shaded by its normal. Marching-cubes meshes
are dense, so splatting vertices (one pixel each, plus a one-pixel dilation to close gaps)
gives a faithful picture in a fraction of a second, with numpy alone.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import trimesh

from neurecon.io import atomic_write


def _basis(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(3, 3) rows: image right, image down, view direction (towards the object)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    eye = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    fwd = -eye
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def render_mesh_view(
    mesh: trimesh.Trimesh, azimuth_deg: float, elevation_deg: float, size: int = 512
) -> np.ndarray:
    """(size, size, 3) uint8: the shaded mesh seen from a direction, framed on its bounds."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-12)
    B = _basis(azimuth_deg, elevation_deg)
    p = (v - centre) @ B.T  # (N, 3): right, down, depth
    px = ((p[:, :2] / radius) * 0.47 + 0.5) * size
    return _splat(px, p[:, 2], np.asarray(mesh.vertex_normals), B, size, size, _colors(mesh))


def _colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """(V, 3) vertex colours in [0, 1], or None for a mesh without them."""
    if mesh.visual.kind != "vertex":
        return None
    return np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0


def render_mesh_camera(
    mesh: trimesh.Trimesh, P: np.ndarray, c2w_rot: np.ndarray, H: int, W: int
) -> np.ndarray:
    """(H, W, 3) uint8: the shaded mesh through a pinhole camera.

    Args:
        P: (3, 4) projection of the mesh's (world) points to pixels.
        c2w_rot: (3, 3) camera axes (right, down, forward) as columns, in the mesh's frame.
    """
    v = np.c_[np.asarray(mesh.vertices, dtype=np.float64), np.ones(len(mesh.vertices))]
    p = v @ np.asarray(P)[:3].T
    z = p[:, 2]
    front = z > 1e-9
    px = p[front, :2] / z[front, None] + 0.5  # pixel centres at integers → cell [u, u + 1)
    B = np.asarray(c2w_rot, dtype=np.float64).T
    B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return _splat(px, z[front], np.asarray(mesh.vertex_normals)[front], B, H, W)


def _splat(
    px: np.ndarray,
    depth: np.ndarray,
    normals: np.ndarray,
    B: np.ndarray,
    H: int,
    W: int,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """Z-buffered, shaded vertex splats. Shapes: px (N, 2) continuous (x, y) pixel positions,
    depth (N,), normals (N, 3), B (3, 3) rows right / down / view direction, colors (N, 3) in
    [0, 1] or None (a light grey) → (H, W, 3) uint8."""
    inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    px, depth, n = px[inside].astype(np.int64), depth[inside], normals[inside]
    if colors is None:
        colors = np.broadcast_to(np.array([0.85, 0.87, 0.92]), (len(px), 3))
    else:
        colors = colors[inside]
    zbuf = np.full((H, W), np.inf)
    flat = px[:, 1] * W + px[:, 0]
    np.minimum.at(zbuf.reshape(-1), flat, depth)
    front = depth <= zbuf.reshape(-1)[flat] + 1e-9
    light = -B[2] + 0.5 * B[0] - 0.7 * B[1]  # from the viewer, a little right and above
    light /= np.linalg.norm(light)
    shade = 0.15 + 0.85 * np.abs(n[front] @ light)  # two-sided: inside-out faces still show
    img = np.zeros((H, W, 3), np.float64)
    img.reshape(-1, 3)[flat[front]] = shade[:, None] * colors[front]
    hit = np.zeros((H, W), bool)
    hit.reshape(-1)[flat[front]] = True
    # Close the one-pixel gaps between splats with a neighbour's value.
    covered = hit.copy()
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        moved = np.roll(np.roll(img, dy, 0), dx, 1)
        moved_hit = np.roll(np.roll(hit, dy, 0), dx, 1)
        fill = ~hit & moved_hit
        img[fill] = moved[fill]
        covered |= fill
    rgb = np.where(covered[..., None], img, 1.0)
    return (rgb * 255 + 0.5).clip(0, 255).astype(np.uint8)


def mesh_picture(
    mesh: trimesh.Trimesh,
    path: str | Path,
    views: tuple[tuple[float, float], ...] = ((30.0, 20.0), (150.0, 20.0), (270.0, 60.0)),
    size: int = 512,
) -> Path:
    """Write the shaded mesh from ``views`` ((azimuth, elevation) in degrees, world z up)
    side by side to ``path`` (PNG, atomically)."""
    if len(mesh.vertices) == 0:
        raise ValueError("the mesh is empty: nothing to draw")
    panel = np.concatenate([render_mesh_view(mesh, a, e, size) for a, e in views], axis=1)
    return atomic_write(path, lambda p: iio.imwrite(p, panel, extension=".png"))
