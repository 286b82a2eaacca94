import numpy as np
import pytest
import torch

from neurecon.data.cameras import (
    CameraError,
    compose_projection,
    decompose_projection,
    look_at,
    pixel_rays,
    sphere_near_far,
)
from neurecon.data.neus import downscale_intrinsics


def _random_camera(rng):
    K = np.array(
        [
            [rng.uniform(300, 900), rng.uniform(-2, 2), rng.uniform(200, 400)],
            [0, rng.uniform(300, 900), rng.uniform(150, 300)],
            [0, 0, 1],
        ]
    )
    eye = rng.normal(size=3) * 3
    return K, look_at(eye, rng.normal(size=3) * 0.2)


def test_projection_decomposition_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        K, c2w = _random_camera(rng)
        P = compose_projection(K, c2w) * rng.uniform(0.1, 10)  # projections are up to scale
        K2, c2w2 = decompose_projection(P)
        assert np.allclose(K2, K, atol=1e-6 * K.max())
        assert np.allclose(c2w2, c2w, atol=1e-8)
        assert np.isclose(np.linalg.det(c2w2[:3, :3]), 1.0)


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.full((3, 4), np.nan), np.eye(3)])
def test_bad_projection_matrices_are_named(bad):
    with pytest.raises(CameraError, match="world_mat_7"):
        decompose_projection(bad, "world_mat_7")


def test_rays_project_back_to_their_pixels():
    rng = np.random.default_rng(1)
    K, c2w = _random_camera(rng)
    u = torch.tensor([0.0, 10.5, 333.0])
    v = torch.tensor([0.0, 200.0, 17.25])
    o, d = pixel_rays(torch.tensor(K), torch.tensor(c2w), u, v)
    pts = (o + 2.0 * d).numpy()
    proj = (compose_projection(K, c2w) @ np.c_[pts, np.ones(3)].T)[:3]
    assert np.allclose(proj[:2] / proj[2], np.stack([u, v]), atol=1e-6)


def test_downscaled_intrinsics_match_resampled_pixel_centres():
    K = np.array([[1000.0, 0, 799.5], [0, 1000.0, 599.5], [0, 0, 1]])
    K4 = downscale_intrinsics(K, 4.0)
    # Image centre stays the image centre of the 400x300 image; focal scales by 1/4.
    assert np.allclose(K4[:2, 2], [199.5, 149.5]) and np.isclose(K4[0, 0], 250.0)


def test_sphere_near_far():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = sphere_near_far(o, d)
    assert hit.tolist() == [True, False]
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert near[1] == far[1]
