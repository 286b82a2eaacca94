"""A procedural scene with known geometry, generated at run time (no files, no download).

The shape is an analytic signed distance function defined in the normalised frame (inside the
unit sphere) and placed into a world frame by an off-centre, non-unit-scale ``to_world``
transform — exactly what a NeuS ``scale_mat`` does — so that a mesh exported in the wrong frame
misses the ground truth by a wide margin. Cameras are built in WORLD coordinates and go through
the same projection-matrix decomposition as the DTU loader.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor

from neurecon.data.cameras import compose_projection, look_at, pixel_rays, sphere_near_far
from neurecon.data.neus import cameras_from_neus
from neurecon.data.scene import Scene, split_ids
from neurecon.errors import ConfigError
from neurecon.geometry.mesh import sample_near_surface

log = logging.getLogger(__name__)

SDF = Callable[[Tensor], Tensor]

# Rays sphere-traced at once when a scene renders its views (a few hundred MB at most).
RENDER_CHUNK_RAYS = 1 << 20


def _smooth_min(a: Tensor, b: Tensor, k: float) -> Tensor:
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def sdf_sphere(centre: Sequence[float] = (0.1, -0.05, 0.05), radius: float = 0.5) -> SDF:
    c = torch.tensor(centre, dtype=torch.float32)

    def f(x: Tensor) -> Tensor:
        return (x - c.to(x)).norm(dim=-1) - radius

    return f


def sdf_torus_box() -> SDF:
    """Torus ∪ rotated rounded box (smooth union), with a Gaussian bump on the box's top."""
    t_c = torch.tensor([-0.12, 0.0, -0.15])
    b_c = torch.tensor([0.22, 0.08, 0.16])
    b_half = torch.tensor([0.2, 0.17, 0.19])
    ang = math.radians(30.0)
    rot = torch.tensor(
        [[math.cos(ang), -math.sin(ang), 0.0], [math.sin(ang), math.cos(ang), 0.0], [0, 0, 1.0]]
    )
    bump_c = b_c + torch.tensor([0.0, 0.0, 0.19])

    def f(x: Tensor) -> Tensor:
        p = x - t_c.to(x)
        q = torch.stack([p[..., :2].norm(dim=-1) - 0.4, p[..., 2]], dim=-1)
        torus = q.norm(dim=-1) - 0.13
        pb = (x - b_c.to(x)) @ rot.to(x)  # box frame
        d = pb.abs() - (b_half.to(x) - 0.05)
        box = d.clamp_min(0).norm(dim=-1) + d.max(dim=-1).values.clamp_max(0) - 0.05
        shape = _smooth_min(torus, box, 0.06)
        bump = 0.07 * torch.exp(-((x - bump_c.to(x)) ** 2).sum(-1) / 0.1**2)
        return shape - bump

    return f


def _capped_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:
    """Exact SDF of a solid cylinder along z, centred at the origin."""
    d = torch.stack([p[..., :2].norm(dim=-1) - radius, p[..., 2].abs() - half_height], dim=-1)
    return d.max(dim=-1).values.clamp_max(0) + d.clamp_min(0).norm(dim=-1)


def sdf_mug() -> SDF:
    """A mug: a hollow cup (thin wall, a bottom, open at the top), a handle (half a thin torus)
    and two grooves engraved around the wall — fine detail, thin parts and concavities, for
    checking that settings tuned on ``torus_box`` are not tuned to one shape."""
    R, wall, half_h, z0 = 0.34, 0.05, 0.36, -0.05  # outer radius, wall, half height, centre z
    handle_c = torch.tensor([R + 0.04, 0.0, z0])

    def f(x: Tensor) -> Tensor:
        p = x - torch.tensor([0.0, 0.0, z0]).to(x)
        outer = _capped_cylinder(p, R, half_h)
        # The cavity: from the bottom's top face (z = wall - half_h) up through the open top.
        bottom, top = wall - half_h, half_h + 0.1
        centre = torch.tensor([0.0, 0.0, 0.5 * (bottom + top)]).to(x)
        cavity = _capped_cylinder(p - centre, R - wall, 0.5 * (top - bottom))
        cup = torch.maximum(outer, -cavity)
        h = x - handle_c.to(x)  # handle: a torus in the xz-plane, its outer part
        q = torch.stack([torch.stack([h[..., 0], h[..., 2]], -1).norm(dim=-1) - 0.2, h[..., 1]], -1)
        # Cut just inside the wall, so both ends grow into it: the handle makes a loop.
        handle = torch.maximum(q.norm(dim=-1) - 0.045, -(h[..., 0] + 0.06))
        shape = _smooth_min(cup, handle, 0.02)
        for zg in (-0.12, 0.1):  # grooves: thin tori cut into the outer wall
            g = p - torch.tensor([0.0, 0.0, zg]).to(x)
            qg = torch.stack([g[..., :2].norm(dim=-1) - R, g[..., 2]], -1)
            shape = torch.maximum(shape, -(qg.norm(dim=-1) - 0.025))
        return shape

    return f


SHAPES: dict[str, Callable[[], SDF]] = {
    "torus_box": sdf_torus_box,
    "sphere": sdf_sphere,
    "mug": sdf_mug,
}


def albedo(x: Tensor) -> Tensor:
    """Smooth procedural albedo (N, 3) in [0.15, 0.85] — low frequency so it is learnable."""
    r = 0.5 + 0.35 * torch.sin(3.0 * x[..., 0] + 2.0 * x[..., 2] + 0.5)
    g = 0.5 + 0.35 * torch.sin(2.5 * x[..., 1] - 3.0 * x[..., 0] + 1.7)
    b = 0.5 + 0.35 * torch.cos(3.5 * x[..., 2] + 1.5 * x[..., 1])
    return torch.stack([r, g, b], dim=-1)


def noise_albedo(x: Tensor) -> Tensor:
    """High-frequency procedural texture (N, 3): enough detail for SIFT features to match."""
    out = []
    for c, (a, b, d) in enumerate([(17.0, 23.0, 29.0), (31.0, 13.0, 19.0), (11.0, 37.0, 27.0)]):
        v = (
            torch.sin(a * x[..., 0] + c)
            * torch.sin(b * x[..., 1] + 2 * c)
            * torch.sin(d * x[..., 2])
        )
        v = v + 0.5 * torch.sin(53.0 * x[..., 0] + 41.0 * x[..., 1] + 47.0 * x[..., 2] + c)
        v = v + 0.5 * torch.sin(97.0 * x[..., 1] - 83.0 * x[..., 2] + 3.0 * c)
        v = v + 0.4 * torch.sign(
            torch.sin(71.0 * x[..., 0] + 2.0 * c) * torch.sin(67.0 * x[..., 2])
        )
        out.append(0.5 + 0.22 * v)
    return torch.stack(out, dim=-1).clamp(0, 1)


def environment(d: Tensor) -> Tensor:
    """A sky-like colour (N, 3) of unit directions: gradient plus soft bands."""
    up = d[..., 2:3]
    base = (
        torch.tensor([0.35, 0.45, 0.7]) * (0.6 + 0.4 * up)
        + torch.tensor([0.3, 0.25, 0.1]) * (1 - up) * 0.5
    )
    bands = 0.1 * torch.sin(6.0 * torch.atan2(d[..., 1], d[..., 0]))[..., None]
    return (base + bands).clamp(0, 1)


ROOM_TABLE_Z, ROOM_WALL_Y = -1.05, 1.1  # just outside the unit sphere, as DTU's table and wall


def room_color(o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Colour (B, 3) and hit mask (B,) of rays (normalised frame) on a textured table (the
    plane z = -1.05, a chequered wood) and wall (y = 1.1, window-like stripes): a near,
    detailed background like DTU's, for unmasked training."""
    inf = torch.full_like(d[:, 0], float("inf"))
    t_table = torch.where(d[:, 2] < -1e-6, (ROOM_TABLE_Z - o[:, 2]) / d[:, 2], inf)
    t_wall = torch.where(d[:, 1] > 1e-6, (ROOM_WALL_Y - o[:, 1]) / d[:, 1], inf)
    t_table, t_wall = t_table.where(t_table > 0, inf), t_wall.where(t_wall > 0, inf)  # ahead
    on_table = t_table < t_wall
    t = torch.minimum(t_table, t_wall)
    x = o + d * t.clamp_max(1e3)[:, None]
    check = torch.sign(torch.sin(9.0 * x[:, 0]) * torch.sin(9.0 * x[:, 1]))  # table squares
    grain = 0.08 * torch.sin(40.0 * x[:, 0] + 3.0 * torch.sin(5.0 * x[:, 1]))
    wood = torch.tensor([0.55, 0.38, 0.22]) + (0.12 * check + grain)[:, None]
    stripes = torch.sign(torch.sin(7.0 * x[:, 0] + 0.5)) * 0.5 + 0.5  # window bars
    band = 0.5 + 0.5 * torch.sin(3.0 * x[:, 2])
    wall = torch.tensor([0.75, 0.78, 0.8]) - 0.35 * (stripes * band)[:, None]
    rgb = torch.where(on_table[:, None], wood, wall)
    return rgb.clamp(0, 1), torch.isfinite(t)


TEXTURES: dict[str, Callable[[Tensor], Tensor]] = {"smooth": albedo, "noise": noise_albedo}


def sdf_gradient(sdf: SDF, x: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(sdf(x).sum(), x)
    return g


def sphere_trace(
    sdf: SDF, o: Tensor, d: Tensor, iters: int = 200, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Sphere-trace rays (B, 3) against ``sdf`` inside the unit sphere. Returns points, hit mask."""
    near, far, hit = sphere_near_far(o, d)
    t = near.clone()
    # Only the rays still marching are evaluated: most converge in a few dozen steps, a few
    # grazing ones take up to ``iters`` (about 2x faster a view than stepping every ray).
    idx = hit.nonzero().squeeze(-1)
    for _ in range(iters):
        if idx.numel() == 0:
            break
        ti = t[idx]
        s = sdf(o[idx] + ti[:, None] * d[idx])
        ti = ti + 0.9 * s  # 0.9: the bump makes the SDF slightly inexact
        t[idx] = ti
        idx = idx[(s.abs() > eps) & (ti < far[idx])]
    x = o + t[:, None] * d
    s = sdf(x)
    return x, hit & (s.abs() < 1e-3) & (t < far)


def project_to_surface(sdf: SDF, x: Tensor, iters: int = 5) -> Tensor:
    """Newton-project points near the zero level set onto it."""
    for _ in range(iters):
        g = sdf_gradient(sdf, x)
        x = x - (sdf(x) / (g * g).sum(-1).clamp_min(1e-12))[:, None] * g
    return x


class SyntheticScene(Scene):
    """Renders the analytic shape to ``num_views`` masked views with Lambertian shading.

    Args:
        shape: one of ``torus_box``, ``sphere``, ``mug`` (thin parts, concavities, grooves).
        num_views: total views on a Fibonacci sphere around the object; every ``test_every``-th is
            held out for testing.
        resolution: image height and width in pixels.
        fov_deg: horizontal field of view.   cam_distance: in units of the bounding sphere.
        world_scale / world_offset: the normalised → world transform (a NeuS ``scale_mat``).
        background_color: RGB shown where the object is absent.
        num_gt_points: exact surface points (world frame) kept for Chamfer distance.
        texture: ``smooth`` (learnable albedo) or ``noise`` (detailed, for structure from motion).
        orbit_elevation_deg: null = cameras spread over a sphere; a number = a ring of cameras
            at that elevation (neighbouring views overlap strongly).
        env_background: show a procedural environment (a function of the ray direction, i.e.
            infinitely far away) instead of the constant ``background_color`` — for testing unmasked
            training with a background model.
        room: a textured table and wall just outside the unit sphere (:func:`room_color`), seen
            by cameras on a 140° arc at 25° elevation in front of the wall (as DTU's are):
            a near, detailed background that unmasked training must keep out of the object.
            Rays that miss both show the environment (or ``background_color``).
        image_sizes: null = every view ``resolution``²; else a list of ``[H, W]`` that the views
            cycle through (mixed portrait / landscape captures), each with the focal length
            that gives ``fov_deg`` across its width.
        points: null, or a PLY of sparse world-frame points for ``loss/sparse_points`` (the
            scene renders no points of its own): e.g. what ``prepare --triangulate`` finds in
            this scene written out at a higher resolution.
    """

    def __init__(
        self,
        shape: str = "torus_box",
        num_views: int = 40,
        test_every: int = 8,
        resolution: int = 64,
        fov_deg: float = 45.0,
        cam_distance: float = 2.2,
        world_scale: float = 2.5,
        world_offset: Sequence[float] = (0.7, -0.4, 1.3),
        light_dir: Sequence[float] = (0.4, -0.3, 0.85),
        background_color: Sequence[float] = (0.0, 0.0, 0.0),
        num_gt_points: int = 100_000,
        seed: int = 0,
        texture: str = "smooth",
        orbit_elevation_deg: float | None = None,
        env_background: bool = False,
        image_sizes: Sequence[Sequence[int]] | None = None,
        room: bool = False,
        device: str = "auto",
        points: str | None = None,
    ) -> None:
        if texture not in TEXTURES:
            raise ConfigError(f"dataset.texture={texture!r}; choose from {sorted(TEXTURES)}")
        self.albedo = TEXTURES[texture]
        if shape not in SHAPES:
            raise ConfigError(f"dataset.shape={shape!r} is unknown; choose from {sorted(SHAPES)}")
        if resolution < 8 or num_views < 2 or world_scale <= 0:
            raise ConfigError("dataset: need resolution >= 8, num_views >= 2, world_scale > 0")
        self.sdf = SHAPES[shape]()
        to_world = np.eye(4)
        to_world[:3, :3] *= world_scale
        to_world[:3, 3] = world_offset

        # Cameras on a Fibonacci sphere, built in WORLD coordinates, stored as NeuS world_mats.
        i = np.arange(num_views) + 0.5
        z = 1 - 2 * i / num_views
        phi = math.pi * (1 + 5**0.5) * i
        dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
        if room:  # in front of the wall (y < 0), above the table
            orbit_elevation_deg = 25.0 if orbit_elevation_deg is None else orbit_elevation_deg
        if orbit_elevation_deg is not None:
            el = math.radians(orbit_elevation_deg)
            az = (
                np.linspace(math.radians(-160), math.radians(-20), num_views)
                if room
                else np.linspace(0, 2 * math.pi, num_views + 1)[:-1]
            )
            dirs = np.stack(
                [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full_like(az, math.sin(el))],
                1,
            )
        centre_w = np.asarray(world_offset, dtype=np.float64)
        sizes = [(int(h), int(w)) for h, w in (image_sizes or [(resolution, resolution)])]
        if any(min(hw) < 8 for hw in sizes):
            raise ConfigError(f"dataset.image_sizes: every size needs >= 8 pixels, got {sizes}")
        sizes = [sizes[i % len(sizes)] for i in range(num_views)]

        def intrinsics(H: int, W: int) -> np.ndarray:
            f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
            return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])

        world_mats = [
            compose_projection(
                intrinsics(*hw), look_at(centre_w + world_scale * cam_distance * dv, centre_w)
            )
            for dv, hw in zip(dirs, sizes, strict=True)
        ]
        train, test = split_ids(num_views, test_every)
        K_n, c2w_n, to_world = cameras_from_neus(world_mats, [to_world] * num_views, "synthetic")

        light = torch.tensor(light_dir, dtype=torch.float32)
        bg = torch.tensor(background_color, dtype=torch.float32)
        self.env_background, self.room = env_background, room
        self.light, self.bg = light / light.norm(), bg
        images, masks = self._render(K_n, c2w_n, sizes)
        super().__init__(
            images=images,
            K=K_n,
            c2w=c2w_n,
            to_world=to_world,
            train_ids=train,
            test_ids=test,
            masks=masks,
            background_color=background_color,
            name=f"synthetic_{shape}",
            device=device,
            ground_truth=lambda: self._ground_truth_surface(num_gt_points, seed),
        )
        if points is not None:
            from neurecon.data.posed import read_ply_points

            self.set_sfm_points(read_ply_points(Path(points)))
            n_in = 0 if self.sfm_points is None else len(self.sfm_points)
            log.info("%s: %d sparse points inside the unit sphere", points, n_in)

    def surface_color(self, x: Tensor) -> Tensor:
        """Exact colour (N, 3) of surface points ``x`` (N, 3), normalised frame: the albedo
        under the scene's fixed light (Lambertian: the same from every direction)."""
        n = sdf_gradient(self.sdf, x)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        shade = 0.3 + 0.7 * (n @ self.light).clamp_min(0)
        return (self.albedo(x) * shade[:, None]).clamp(0, 1)

    def render_rays(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Exact colour (B, 3) in [0, 1] and hit mask (B,) of rays (B, 3) in the normalised
        frame: sphere tracing and Lambertian shading (tests render other cameras with it)."""
        x, hit = sphere_trace(self.sdf, o, d)
        rgb = self.surface_color(x)
        back = environment(d) if self.env_background else self.bg.expand_as(rgb)
        if self.room:
            room, on_room = room_color(o, d)
            back = torch.where(on_room[:, None], room, back)
        return torch.where(hit[:, None], rgb, back), hit

    def _render(
        self, K_all: np.ndarray, c2w_all: np.ndarray, sizes: list[tuple[int, int]]
    ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | list[np.ndarray]]:
        """Sphere-trace every view at pixel centres (the same rays the renderer will cast).
        Views are traced together, up to :data:`RENDER_CHUNK_RAYS` rays at a time: a few
        hundred sphere-tracing steps for all of them instead of that many per view."""
        rays = []
        for K, c2w, (H, W) in zip(K_all, c2w_all, sizes, strict=True):
            v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            rays.append(pixel_rays(
                torch.tensor(K, dtype=torch.float32),
                torch.tensor(c2w, dtype=torch.float32),
                u.reshape(-1).float(),
                v.reshape(-1).float(),
            ))  # fmt: skip
        imgs, masks, start = [], [], 0
        while start < len(rays):
            stop, n = start + 1, len(rays[start][0])
            while stop < len(rays) and n + len(rays[stop][0]) <= RENDER_CHUNK_RAYS:
                n, stop = n + len(rays[stop][0]), stop + 1
            o, d = (torch.cat(part) for part in zip(*rays[start:stop], strict=True))
            rgb, hit = self.render_rays(o, d)
            counts = [h * w for h, w in sizes[start:stop]]
            for (H, W), c, h in zip(sizes[start:stop], rgb.split(counts), hit.split(counts),
                                    strict=True):  # fmt: skip
                imgs.append((c.reshape(H, W, 3).numpy() * 255 + 0.5).astype(np.uint8))
                masks.append((h.reshape(H, W).numpy() * 255).astype(np.uint8))
            start = stop
        if len(set(sizes)) == 1:
            return np.stack(imgs), np.stack(masks)
        return imgs, masks

    def _ground_truth_surface(self, n: int, seed: int) -> tuple[np.ndarray, trimesh.Trimesh]:
        """``n`` points uniformly on the exact surface and the surface as a mesh, both in the
        world frame: marching cubes of the SDF at 160³ with its vertices moved onto the zero
        set, and points sampled on it and projected likewise. The flat triangles stray from
        the surface by 0.02-0.03 % of the object's radius on average (0.6 % at most, on the
        mug's sharp rims), far below what Chamfer is asked to resolve; 256³ halves that for
        2.5x the surface to mesh and project in every run that meshes."""
        res = 160
        # Evaluated in full only near the surface (the field mesher's SDF skipping, margin 2:
        # the bump and smooth unions keep the gradient's norm below it): the same mesh as the
        # whole grid's, vertex for vertex, for a fraction of the work.
        g = np.linspace(-1, 1, res, dtype=np.float32)
        vol = sample_near_surface(self.sdf, g, (slice(None),) * 3, 2.0 / (res - 1), 2.0,
                                  chunk=1 << 18, device="cpu")  # fmt: skip
        verts, faces = mcubes.marching_cubes(-vol, 0.0)
        verts = torch.tensor(verts / (res - 1) * 2 - 1, dtype=torch.float32)
        verts = project_to_surface(self.sdf, verts).double().numpy()
        mesh = trimesh.Trimesh(verts, faces, process=False)
        pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
        pts = project_to_surface(self.sdf, torch.tensor(pts, dtype=torch.float32)).double().numpy()
        w = self.to_world
        mesh.apply_transform(w)
        return pts @ w[:3, :3].T + w[:3, 3], mesh
