"""Photometric consistency maths (neurecon/geometry/photo.py) against analytic answers: a
textured plane seen by two cameras, whose every pixel is known in closed form."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurecon.data.cameras import pixel_rays
from neurecon.geometry.photo import (
    ncc,
    patch_offsets,
    plane_homography,
    sample_image,
    source_views,
    warp_pixels,
)

F64 = torch.float64  # closed-form checks to 1e-9

H, W = 60, 80
K = torch.tensor([[70.0, 0.0, 39.5], [0.0, 70.0, 29.5], [0.0, 0.0, 1.0]], dtype=F64)
# The plane n·X = c, tilted, 3 units in front of both cameras.
N = torch.tensor([0.2, -0.3, 1.0], dtype=F64) / math.sqrt(0.04 + 0.09 + 1.0)
C = 0.5


def look_at(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(4, 4) OpenCV c2w at ``eye`` looking at ``target`` (y down)."""
    z = (target - eye) / (target - eye).norm()
    x = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0], dtype=F64), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=F64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


REF = look_at(torch.tensor([0.0, 0.0, -2.5], dtype=F64), torch.tensor([0.0, 0.0, 0.5], dtype=F64))
SRC = look_at(torch.tensor([0.9, -0.4, -2.3], dtype=F64), torch.tensor([0.05, 0.0, 0.5], dtype=F64))
ORIGIN = torch.zeros(3, dtype=F64)


def hit(c2w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 3) where the rays through pixels (u, v) meet the plane."""
    o, d = pixel_rays(K, c2w, u, v)
    t = (C - o @ N) / (d @ N)
    return o + t[:, None] * d


def texture(X: torch.Tensor) -> torch.Tensor:
    """(B,) a smooth grey texture painted on the plane."""
    return 0.5 + 0.2 * torch.sin(6 * X[:, 0]) * torch.cos(5 * X[:, 1]) + 0.1 * X[:, 0]


def photo(c2w: torch.Tensor) -> torch.Tensor:
    """(H, W, 1) the plane's picture by the camera ``c2w``, each pixel in closed form."""
    v, u = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    return texture(hit(c2w, u.reshape(-1), v.reshape(-1))).reshape(H, W, 1)


def test_plane_homography_maps_a_patch_onto_the_plane_points_exactly():
    """Reference pixels warped by the plane's homography are the projections of their own
    plane points into the source camera, and the source rays through them meet the plane at
    those same points (so they see the same texture), to 1e-9."""
    centre = torch.tensor([[30.0, 25.0], [52.0, 40.0]], dtype=F64)
    pix = centre[:, None] + patch_offsets(5).double()[None]  # (2, 121, 2)
    X = hit(REF, centre[:, 0], centre[:, 1])
    Hm = plane_homography(K, REF, K, SRC, X, N.expand(2, 3) * 3.0)  # the normal's norm is free
    warped = warp_pixels(Hm, pix)
    flat = pix.reshape(-1, 2)
    P = hit(REF, flat[:, 0], flat[:, 1])
    cam = (torch.linalg.inv(SRC) @ torch.cat([P, torch.ones(len(P), 1, dtype=F64)], 1).T).T[:, :3]
    proj = (K @ cam.T).T
    assert torch.allclose(warped.reshape(-1, 2), proj[:, :2] / proj[:, 2:], atol=1e-9)
    again = hit(SRC, warped.reshape(-1, 2)[:, 0], warped.reshape(-1, 2)[:, 1])
    assert torch.allclose(again, P, atol=1e-9)
    assert torch.allclose(texture(again), texture(P), atol=1e-12)


def test_warped_patches_of_the_true_plane_correlate_and_a_wrong_plane_does_not():
    """Through the rendered photos (bilinear taps), the true plane's warped patch has NCC
    near 1 with the reference patch; the homography of a plane tilted by 35° does not."""
    ref_img, src_img = photo(REF), photo(SRC)
    centre = torch.tensor([[30.0, 25.0], [45.0, 33.0], [50.0, 20.0]], dtype=F64)
    pix = centre[:, None] + patch_offsets(5).double()[None]
    X = hit(REF, centre[:, 0], centre[:, 1])
    ref_patch, _ = sample_image(ref_img, pix)
    good = warp_pixels(plane_homography(K, REF, K, SRC, X, N.expand(3, 3)), pix)
    src_patch, inside = sample_image(src_img, good)
    assert inside.all()
    score = ncc(ref_patch[..., 0], src_patch[..., 0])
    assert (score > 0.995).all(), score
    a = math.radians(35)
    tilted = torch.tensor(
        [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=F64
    )
    bad = warp_pixels(plane_homography(K, REF, K, SRC, X, (tilted @ N).expand(3, 3)), pix)
    bad_patch, _ = sample_image(src_img, bad)
    assert (ncc(ref_patch[..., 0], bad_patch[..., 0]) < score - 0.05).all()


@settings(max_examples=40, deadline=None)
@given(gain=st.floats(0.05, 20.0), offset=st.floats(-5.0, 5.0), seed=st.integers(0, 10_000))
def test_ncc_is_one_on_equal_patches_and_invariant_to_gain_and_offset(gain, offset, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(4, 49, generator=g)
    assert torch.allclose(ncc(a, a), torch.ones(4), atol=1e-4)
    assert torch.allclose(ncc(a, gain * a + offset), torch.ones(4), atol=1e-4)
    assert torch.allclose(ncc(a, -gain * a + offset), -torch.ones(4), atol=1e-4)
    b = torch.rand(4, 49, generator=g)
    s = ncc(a, b)
    assert torch.allclose(ncc(gain * a + offset, b), s, atol=1e-4)  # either side
    assert (s.abs() < 0.6).all()  # independent patches: far from +-1


def test_ncc_of_a_flat_patch_is_zero_with_a_finite_gradient():
    """A source patch on a flat background: NCC 0, and no NaN in the gradient (sqrt(0) had an
    infinite derivative under the clamp, which made every step's gradient NaN)."""
    a = torch.rand(3, 49, generator=torch.Generator().manual_seed(0), requires_grad=True)
    flat = torch.full((3, 49), 0.25, requires_grad=True)  # exactly flat: 0.25 is binary
    s = ncc(a, flat)
    s.sum().backward()
    assert s.detach().abs().max() < 1e-6
    assert torch.isfinite(a.grad).all() and torch.isfinite(flat.grad).all()


def test_sample_image_hits_pixel_centres_and_flags_taps_outside():
    img = torch.arange(12.0).reshape(3, 4, 1)
    vals, inside = sample_image(img, torch.tensor([[2.0, 1.0], [0.5, 0.0], [3.5, 0.0]]))
    assert torch.allclose(vals[:2, 0], torch.tensor([6.0, 0.5]))
    assert inside.tolist() == [True, True, False]
    _, inside = sample_image(img, torch.tensor([[math.nan, 1.0]]))
    assert not inside.any()


def test_source_views_are_the_nearest_in_angle_within_the_range():
    """Twelve cameras on a circle, 10° apart, looking at its centre: the two sources of a view
    are its neighbours at ±10° (the view itself, at 0°, is below min_deg and never picked)."""
    c2w = torch.stack(
        [look_at(3 * torch.tensor([math.sin(a), 0.0, math.cos(a)], dtype=F64), ORIGIN)
         for a in torch.deg2rad(torch.arange(12) * 10.0).tolist()]
    )  # fmt: skip
    picked = source_views(c2w, torch.arange(12), k=2)
    assert sorted(picked[5].tolist()) == [4, 6]
    assert sorted(picked[0].tolist()) == [1, 2]  # one side only: the next nearest in range
    wide = source_views(c2w, torch.arange(12), k=3, min_deg=15.0)
    assert sorted(wide[5].tolist()) == [3, 7, 8] or sorted(wide[5].tolist()) == [2, 3, 7]
    assert (source_views(c2w[:2], torch.arange(2), k=2)[:, 1] == -1).all()
