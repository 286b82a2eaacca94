import numpy as np
from scipy.spatial.distance import cdist
from skimage.metrics import peak_signal_noise_ratio

from neurecon.metrics import chamfer, psnr, ssim


def test_psnr_matches_skimage_and_masks():
    rng = np.random.default_rng(0)
    gt = rng.random((32, 40, 3))
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    assert np.isclose(psnr(pred, gt), peak_signal_noise_ratio(gt, pred, data_range=1.0))
    mask = np.zeros((32, 40), bool)
    mask[:10] = True
    pred2 = pred.copy()
    pred2[~mask] = 1 - gt[~mask]  # errors outside the mask must not count
    assert np.isclose(
        psnr(pred2, gt, mask), peak_signal_noise_ratio(gt[mask], pred[mask], data_range=1.0)
    )


def test_ssim_identity_and_order():
    rng = np.random.default_rng(1)
    gt = rng.random((48, 48, 3))
    assert np.isclose(ssim(gt, gt), 1.0)
    assert ssim(np.clip(gt + 0.05 * rng.normal(size=gt.shape), 0, 1), gt) > ssim(
        np.clip(gt + 0.2 * rng.normal(size=gt.shape), 0, 1), gt
    )


def test_chamfer_matches_brute_force():
    rng = np.random.default_rng(2)
    a, b = rng.random((300, 3)), rng.random((200, 3)) + 0.1
    d = cdist(a, b)
    res = chamfer(a, b, threshold=0.1)
    assert np.isclose(res["accuracy"], d.min(1).mean())
    assert np.isclose(res["completeness"], d.min(0).mean())
    assert np.isclose(res["mean"], 0.5 * (d.min(1).mean() + d.min(0).mean()))
    p, r = (d.min(1) < 0.1).mean(), (d.min(0) < 0.1).mean()
    assert np.isclose(res["fscore"], 2 * p * r / (p + r))
