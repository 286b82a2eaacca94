"""The hash grid's kernel backends against the PyTorch backend: forward, both gradients, and the
double backward of the eikonal term.

- ``encoder.backend=triton``: on a CPU the kernels run under Triton's interpreter
  (``TRITON_INTERPRET=1``, set in conftest.py before neurecon is imported);
- ``encoder.backend=cpu``: the C kernels, built on first use with the system's C compiler.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from neurecon.encoders import HashGridEncoder, hashgrid_cpu
from neurecon.encoders.hashgrid_ops import TorchCorners, hash_encode
from neurecon.encoders.hashgrid_triton import interpreting, triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = pytest.param(
    "triton",
    marks=[
        pytest.mark.skipif(triton is None, reason="triton is not installed (pip install triton)"),
        pytest.mark.skipif(
            triton is not None and not (torch.cuda.is_available() or interpreting()),
            reason="no CUDA, and TRITON_INTERPRET=1 was not set before neurecon was imported",
        ),
    ],
)
CPU = pytest.param(
    "cpu",
    marks=pytest.mark.skipif(
        DEVICE != "cpu" or not hashgrid_cpu.cpu_kernels_available(),
        reason="the C kernels run on CPU tensors and need a C compiler",
    ),
)
BACKENDS = [TRITON, CPU]


def _pair(backend: str, **kw):
    """A torch and a ``backend`` encoder with the same table; dense and hashed levels both."""
    kw = {"n_levels": 4, "n_features": 2, "log2_table_size": 10, "base_resolution": 4,
          "max_resolution": 64, "include_input": False, **kw}  # fmt: skip
    torch.manual_seed(0)
    ref = HashGridEncoder(backend="torch", **kw).to(DEVICE)
    fast = HashGridEncoder(backend=backend, **kw).to(DEVICE)
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.embeddings.copy_(ref.embeddings)
    assert fast.backend == backend and bool(ref.dense.any()) and not bool(ref.dense.all())
    return ref, fast


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_features", [1, 2, 4, 8])
def test_forward_and_both_gradients_match_torch(backend, n_features):
    ref, fast = _pair(backend, n_features=n_features)
    x = torch.rand(120, 3, device=DEVICE) * 2.2 - 1.1  # some points outside: clamped
    w = torch.randn(120, ref.out_dim, device=DEVICE)
    outs, grads = [], []
    for enc in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y = enc(xi)
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append((xi.grad, enc.embeddings.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-4)  # input
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-5)  # table
    assert grads[0][1].abs().sum() > 0 and grads[0][0].abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_torch_for_an_eikonal_loss(backend):
    """``field.gradient=analytic``: the eikonal term differentiates the SDF's spatial gradient,
    so the table and the MLP get gradients through the encoder's backward."""
    ref, fast = _pair(backend)
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(ref.out_dim, 16), torch.nn.Softplus(beta=10), torch.nn.Linear(16, 1)
    ).to(DEVICE)
    x = torch.rand(120, 3, device=DEVICE) * 1.8 - 0.9
    results = []
    for enc in (ref, fast):
        mlp.zero_grad()
        xi = x.clone().requires_grad_(True)
        sdf = mlp(enc(xi))
        (g,) = torch.autograd.grad(sdf.sum(), xi, create_graph=True)
        loss = ((g.norm(dim=-1) - 1) ** 2).mean() + sdf.square().mean()
        loss.backward()
        results.append((g.detach(), enc.embeddings.grad.clone(), mlp[0].weight.grad.clone()))
    (g0, t0, m0), (g1, t1, m1) = results
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t1, t0, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-3, atol=1e-6)
    assert t0.abs().sum() > 0 and m0.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_handles_no_points(backend):
    _, fast = _pair(backend)
    x = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    y = fast(x)
    assert y.shape == (0, fast.out_dim)
    y.sum().backward()
    assert fast.embeddings.grad.abs().sum() == 0


class _Counting(TorchCorners):
    """TorchCorners that counts its primitive calls."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    def encode(self, src, direction=None):
        self.calls.append("encode" + ("_dir" if direction is not None else ""))
        return super().encode(src, direction)

    def source_grad(self, g_out, src, direction=None):
        self.calls.append("source_grad" + ("_dir" if direction is not None else ""))
        return super().source_grad(g_out, src, direction)

    def input_grad(self, src, g_out):
        self.calls.append("input_grad")
        return super().input_grad(src, g_out)


def test_each_backward_pass_runs_only_the_primitives_it_needs():
    """The SDF's spatial gradient needs ∂out/∂u alone (no scatter into the table); the loss's
    backward for the parameters needs the table's gradients alone (no ∂out/∂u for the
    sample positions): one plain scatter for the loss, and the directional scatter and
    encoding for the eikonal term."""
    enc = HashGridEncoder(n_levels=3, log2_table_size=8, max_resolution=32, backend="torch",
                          include_input=False)  # fmt: skip
    mlp = torch.nn.Sequential(torch.nn.Linear(enc.out_dim, 8), torch.nn.Softplus(beta=10),
                              torch.nn.Linear(8, 1))  # fmt: skip
    x = torch.rand(50, 3).requires_grad_(True)
    c = _Counting(x, enc.levels())
    sdf = mlp(hash_encode(x, c.gather(enc.embeddings), c))
    (g,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
    assert c.calls == ["encode", "input_grad"]
    loss = ((g.norm(dim=-1) - 1) ** 2).mean() + sdf.square().mean()
    loss.backward(inputs=[enc.embeddings, *mlp.parameters()])
    assert sorted(c.calls[2:]) == ["encode_dir", "source_grad", "source_grad_dir"]
    assert x.grad is None and enc.embeddings.grad.abs().sum() > 0


def test_auto_takes_the_c_kernels_on_a_cpu():
    if not hashgrid_cpu.cpu_kernels_available() or torch.cuda.is_available():
        pytest.skip("no C compiler here, or a CUDA machine (auto takes tcnn/triton)")
    assert HashGridEncoder(backend="auto").backend == "cpu"


def test_a_failed_build_warns_and_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    """A compiler that fails (here ``false``): one warning naming the compiler, the PyTorch
    backend, the same encoding; nothing half-built is left in the cache folder."""
    monkeypatch.setenv("NEURECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")
    hashgrid_cpu.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            enc = HashGridEncoder(n_levels=2, log2_table_size=8, max_resolution=16,
                                  backend="cpu")  # fmt: skip
            assert enc.backend == "torch"
            x = torch.rand(30, 3)
            ref = HashGridEncoder(n_levels=2, log2_table_size=8, max_resolution=16,
                                  backend="torch")  # fmt: skip
            ref.load_state_dict(enc.state_dict())
            torch.testing.assert_close(enc(x), ref(x))
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("C kernels" in m and "false" in m for m in warned), warned
        assert any("encoder.backend=cpu" in m for m in warned), warned
        assert not list((tmp_path / "cache").glob("*.so"))
    finally:
        hashgrid_cpu.library.cache_clear()


def test_the_kernels_are_built_once_into_the_cache_folder(tmp_path, monkeypatch):
    if hashgrid_cpu._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("NEURECON_CACHE", str(tmp_path))
    stale = tmp_path / "hashgrid_cpu_0123456789abcdef_omp.so"  # an earlier source's build
    stale.write_bytes(b"")
    hashgrid_cpu.library.cache_clear()
    try:
        assert hashgrid_cpu.library() is not None
        (so,) = tmp_path.glob("hashgrid_cpu_*.so")  # the stale build is gone
        built = so.stat().st_mtime_ns
        hashgrid_cpu.library.cache_clear()
        assert hashgrid_cpu.library() is not None
        assert so.stat().st_mtime_ns == built and len(list(tmp_path.iterdir())) == 1
    finally:
        hashgrid_cpu.library.cache_clear()


def test_a_cached_library_others_could_write_is_not_loaded(tmp_path, monkeypatch):
    """Loading a library runs its code: a cached one that others could have written is rebuilt
    before loading, and in a folder others can write, the kernels are built in a private
    temporary folder instead."""
    if hashgrid_cpu._compiler() is None or not hasattr(os, "getuid"):
        pytest.skip("no C compiler, or no file owners on this OS")
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEURECON_CACHE", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the private build goes
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(hashgrid_cpu.tempfile, "tempdir", None)  # re-read TMPDIR
    hashgrid_cpu.library.cache_clear()
    try:
        (so,) = [Path(hashgrid_cpu.library()._name)]
        assert so.parent == cache
        so.chmod(0o666)  # writable by anyone: rebuilt (replaced) before it is loaded
        built = so.stat().st_mtime_ns
        hashgrid_cpu.library.cache_clear()
        assert hashgrid_cpu.library() is not None
        assert not so.stat().st_mode & 0o022 and so.stat().st_mtime_ns != built
        cache.chmod(0o777)  # a shared folder: its files are not trusted either
        hashgrid_cpu.library.cache_clear()
        lib = hashgrid_cpu.library()
        assert lib is not None and Path(lib._name).parent.parent == tmp_path / "tmp"
        assert not list((tmp_path / "tmp").iterdir())  # removed once loaded
        _, fast = _pair("cpu")  # and the kernels built elsewhere work
        assert torch.isfinite(fast(torch.rand(10, 3))).all()
    finally:
        cache.chmod(0o755)
        hashgrid_cpu.library.cache_clear()


HOSTILE_U = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38, 1.0, 0.0, -0.0, 0.5]


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
def test_nan_inf_and_huge_positions_stay_inside_the_table(backend):
    """Positions straight into each backend's primitives, past the encoder's clamp: a NaN, ±inf
    or huge coordinate is sanitised inside (NaN → 0, the rest clamped to [0, 1]), so the
    encoding equals the reference on the sanitised points and the table's gradient lands in
    range. (Before, ``(int64_t)NaN % size`` was a negative row: an out-of-bounds write.)"""
    from neurecon.encoders import hashgrid_triton
    from neurecon.encoders.hashgrid_ops import safe_unit

    ref = _pair("torch")[0] if backend == "torch" else _pair(backend)[0]
    vals = torch.tensor(HOSTILE_U)
    u = torch.cartesian_prod(vals, vals, vals).to(DEVICE)  # (1000, 3), every mix of axes
    lv = ref.levels()

    def torch_encode(u, table):
        c = TorchCorners(u, lv)
        return hash_encode(u, c.gather(table), c)

    encode = {"torch": torch_encode,
              "triton": lambda u, t: hashgrid_triton.hash_encode(u, t, lv),
              "cpu": lambda u, t: hashgrid_cpu.hash_encode(u, t, lv)}[backend]  # fmt: skip
    table = ref.embeddings.detach().clone().requires_grad_(True)
    out = encode(u, table)
    out.square().sum().backward()
    want_t = ref.embeddings.detach().clone().requires_grad_(True)
    want = torch_encode(safe_unit(u), want_t)
    want.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(table.grad).all()
    torch.testing.assert_close(out, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table.grad, want_t.grad, rtol=1e-4, atol=1e-4)


def _sanitizer_runtime() -> list[str] | None:
    """The compiler's ASan and UBSan runtimes (to preload into Python), or None."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
        path = out.stdout.strip()
        if out.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
            return None
        libs.append(path)
    return libs


def test_the_kernel_table_runs_clean_under_address_and_undefined_sanitizers(tmp_path):
    """The C kernels built with -fsanitize=address,undefined, and this file's equivalence table
    plus the hostile-position test run against them in a child process (ASan preloaded)."""
    import subprocess
    import sys

    libs = _sanitizer_runtime()
    if libs is None:
        pytest.skip("the C compiler has no AddressSanitizer/UBSan runtime")
    env = {
        **os.environ,
        "NEURECON_CFLAGS": "-fsanitize=address,undefined -fno-sanitize-recover=all -g",
        "NEURECON_CACHE": str(tmp_path / "cache"),
        "LD_PRELOAD": " ".join(libs),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-k", "cpu and (match_torch or stay_inside or no_points)", "-o", "addopts="],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert "AddressSanitizer" not in tail and "runtime error" not in tail, tail
    assert list((tmp_path / "cache").glob("hashgrid_cpu_*.so")), "no sanitized build was made"
    assert " passed" in done.stdout and "skipped" not in done.stdout, tail  # the table ran


def test_the_backend_is_chosen_for_the_fields_device(monkeypatch):
    """With CUDA and tinycudann present, a field that runs on the CPU (trainer.device=cpu)
    gets no tcnn (which then raised at the first forward) nor compiled Triton."""
    from neurecon.encoders import hashgrid

    monkeypatch.setattr(hashgrid, "tcnn_available", lambda: True)
    monkeypatch.setattr(hashgrid, "triton_available", lambda: True)
    monkeypatch.setattr(hashgrid.torch.cuda, "is_available", lambda: True)
    assert hashgrid.select_backend("auto", "cuda") == "tcnn"
    assert hashgrid.select_backend("auto", "auto") == "tcnn"
    assert hashgrid.select_backend("auto", "cpu") in ("cpu", "torch")
    assert hashgrid.select_backend("tcnn", "cpu") == "torch"  # warned, not raised later
    from conftest import compose_cfg

    cfg = compose_cfg(["encoder=hashgrid", "trainer.device=cpu"])
    assert cfg.encoder.device == "cpu"  # the config passes the trainer's device on


def test_compiled_graphs_trace_the_plain_torch_ops_even_with_the_triton_backend(monkeypatch):
    """Under torch.compile the encoder must take ``_encode_torch`` (compiled graphs cannot
    trace the hand-written autograd), also when ``encoder.backend=triton`` (which used to be
    checked first). Runs under TRITON_INTERPRET=1 on a CPU."""
    if not interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest.py without CUDA)")
    enc = HashGridEncoder(n_levels=2, log2_table_size=8, max_resolution=16, backend="triton",
                          include_input=False).to(DEVICE)  # fmt: skip
    x = torch.rand(10, 3, device=DEVICE) * 2 - 1
    eager = enc(x)
    assert enc.ran == "triton"
    calls = []
    real = enc._encode_torch
    monkeypatch.setattr(enc, "_encode_torch", lambda u: calls.append(1) or real(u))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = enc(x)
    assert calls == [1]
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
