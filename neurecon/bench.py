"""Speed and memory figures for the current machine: ``python -m neurecon.bench [overrides]``.

Prints a table (and ``--json FILE``) of:
- encoder+field forward/backward samples/s on random points (no renderer, no sampler);
- the full training step's samples/s, steps/s, and the sampler+renderer overhead per sample
  (``field samples/s ÷ step samples/s − 1``);
- training time until the mean test-view PSNR reaches ``--psnr-target`` on the run's scene
  (the built-in one by default; the bench's own validation renders are not counted);
- peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) during training and
  while validating one 1600×1200 view with the trained field, and their ratio;
- the end-of-run evaluation's test-view render time per megapixel (``--test-views``), with the
  occupancy grid's occupied share and the share the masks' visual hull left it.

Any config override works as for ``train.py`` (``encoder=hashgrid renderer.grid=null``). Targets
are printed beside the figures; nothing here asserts.

``--suite gpu --data DTU_SCAN`` is the GPU acceptance run (see README): the ``cuda`` test suite,
then ``experiment=neus_hashgrid`` on a DTU scan under ``trainer.max_time``, reporting wall time,
steps, time to 25 dB masked test PSNR, the final test PSNR, peak GPU memory, the projected time
for 20k steps, and a picture of the mesh. It needs no network and keeps the installed torch.

``--suite dtu`` times the DTU evaluation at full size (``--dtu-points``, 5 million ground-truth
points like one scan's STL) on a synthetic sphere in DTU's file layout: wall time, peak RSS and
the scores (both 0.5 mm by construction).
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from neurecon.atomic import write_json
from neurecon.build import build
from neurecon.cli import config_dir
from neurecon.data.scene import Scene
from neurecon.device import resolve_device
from neurecon.errors import ConfigError, NeuReconError
from neurecon.eval import render_view
from neurecon.memory import PeakMemory
from neurecon.metrics import psnr
from neurecon.metrics.nodes import PSNR, ObjectPSNR
from neurecon.train.callbacks import Callback, SyncCountCallback
from neurecon.train.compile import compile_field

# The bench times training alone: no periodic validation, checkpoints, mesh or LPIPS.
BENCH_OVERRIDES = [
    "logger=none",
    "trainer.progress=false",
    "callbacks.validate.every=0",
    "callbacks.checkpoint.every=0",
    "eval.mesh_resolution=0",
    "eval.metrics.lpips.net=null",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_config(overrides: list[str], base: list[str] = BENCH_OVERRIDES) -> DictConfig:
    """The run's config: ``base`` (timing-only settings by default), then ``overrides``."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])


def bench_field(
    field: torch.nn.Module,
    n: int,
    device: torch.device,
    seconds: float = 3.0,
    amp_dtype: torch.dtype | None = None,
):
    """Forward + backward of the field alone on ``n`` random points in the unit ball.

    SDF fields are differentiated twice as in training (eikonal term, normals in the colour net).
    ``amp_dtype``: the training step's autocast dtype, so both figures use the same precision.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)).to(device)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1).to(device)
    field.to(device).train()
    params = [p for p in field.parameters() if p.requires_grad]

    def step() -> None:
        with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
            out = field(x, d)
            loss = out.color.float().mean()
            grad = getattr(out, "gradient", None)
            if grad is not None:
                loss = loss + ((grad.float().norm(dim=-1) - 1) ** 2).mean()
            if getattr(out, "density", None) is not None:
                loss = loss + out.density.float().mean()
        loss.backward(inputs=params)  # as the trainer: no gradient for the sample positions
        field.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (allocator, lazy init, autotuning)
        step()
    _sync(device)
    t0, iters = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or iters < 3:
        step()
        iters += 1
    _sync(device)
    dt = time.perf_counter() - t0
    return {"field_samples_per_s": n * iters / dt, "field_points": n}


class _TrainProbe(Callback):
    """Trainer callback: timing without the probe's own validation renders, PSNR checks."""

    def __init__(
        self,
        run,
        device,
        target: float,
        budget_s: float,
        every: int,
        warmup: int = 10,
        masked: bool = False,
        stop_at_target: bool = True,
    ):
        self.run, self.device, self.target, self.budget = run, device, target, budget_s
        self.masked, self.stop_at_target = masked, stop_at_target
        self.every, self.warmup = every, warmup
        self.mem = PeakMemory(device)
        self.train_peak = 0.0
        self.t_last = time.perf_counter()
        self.train_s = 0.0  # training wall time, probe excluded
        self.timed_s, self.timed_samples, self.timed_steps = 0.0, 0, 0
        self.time_to_target: float | None = None
        self.steps_to_target: int | None = None
        self.curve: list[dict[str, float]] = []
        self.mem.reset()

    def test_psnr(self) -> float:
        sc = self.run.scene
        vals = []
        for v in sc.test_ids.tolist():
            es = self.run.trainer.eval_settings
            img, es.chunk = render_view(
                sc, self.run.field, self.run.renderer, v, es.chunk, es.device
            )
            m = sc.mask(v) if self.masked else None  # inside the object mask (real scans)
            vals.append(psnr(np.clip(img["color"], 0, 1), sc.image(v), m))
        return float(np.mean(vals))

    def on_step_end(self, ctx: Any, stats: dict[str, Any]) -> bool:
        step = ctx.state.step
        _sync(self.device)
        now = time.perf_counter()
        dt = now - self.t_last
        self.train_s += dt
        if step > self.warmup:
            self.timed_s += dt
            self.timed_samples += int(stats["samples"])
            self.timed_steps += 1
        stop = self.train_s >= self.budget
        if step % self.every == 0 or stop:
            self.train_peak = max(self.train_peak, self.mem.read())
            value = self.test_psnr()
            self.curve.append({"step": step, "train_s": self.train_s, "psnr": value})
            print(f"  step {step:5d}  {self.train_s:6.1f} s  test PSNR {value:5.2f} dB", flush=True)
            if value >= self.target and self.time_to_target is None:
                self.time_to_target, self.steps_to_target = self.train_s, step
                stop = stop or self.stop_at_target
            self.mem.reset()  # the probe's renders do not count as training memory
        self.t_last = time.perf_counter()
        return stop


def bench_training(run, device: torch.device, target: float, budget_s: float, every: int):
    run.renderer.to(device).setup(device)  # a first-use kernel build is not training time
    probe = _TrainProbe(run, device, target, budget_s, every)
    # Host syncs of two untimed warm-up steps and of step 16 (a grid refresh by default).
    syncs = SyncCountCallback(steps=(5, 6, 16))
    with tempfile.TemporaryDirectory() as tmp:
        run.trainer.fit(
            run.scene, run.field, run.renderer, run.optimizer, tmp, callbacks=[syncs, probe]
        )
    probe.train_peak = max(probe.train_peak, probe.mem.read())
    sps = probe.timed_samples / max(probe.timed_s, 1e-9)
    return {
        "step_samples_per_s": sps,
        "steps_per_s": probe.timed_steps / max(probe.timed_s, 1e-9),
        "samples_per_step": probe.timed_samples / max(probe.timed_steps, 1),
        "train_steps": probe.curve[-1]["step"] if probe.curve else 0,
        "train_s": probe.train_s,
        "psnr_target": target,
        "time_to_target_s": probe.time_to_target,
        "steps_to_target": probe.steps_to_target,
        "final_test_psnr": probe.curve[-1]["psnr"] if probe.curve else float("nan"),
        "train_peak_mib": probe.train_peak,
        "psnr_curve": probe.curve,
        "memory_kind": probe.mem.kind,
        "host_syncs_per_step": {k: len(v) for k, v in sorted(syncs.per_step.items())},
    }


def _big_view(scene: Scene, width: int, height: int, rows: int) -> Scene:
    """Test view 0's camera with the same horizontal field of view at ``width``×``height``;
    only the central ``rows`` rows when ``rows < height`` (reported as such)."""
    v = int(scene.test_ids[0])
    K = scene.K[v].clone().double()
    s = width / scene.size(v)[1]
    K[0, 0], K[1, 1] = K[0, 0] * s, K[1, 1] * s
    K[0, 2], K[1, 2] = width / 2, rows / 2
    img = np.zeros((1, rows, width, 3), np.uint8)
    return Scene(
        img, K[None].float().numpy(), scene.c2w[v : v + 1].numpy(), scene.to_world, [0], [0],
        background_color=scene.background_color.tolist(), name=f"{scene.name}_{width}x{height}",
    )  # fmt: skip


def bench_validation(run, device: torch.device, width: int, height: int, rows: int):
    big = _big_view(run.scene, width, height, min(rows, height))
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        es = run.trainer.eval_settings
        _, es.chunk = render_view(big, run.field, run.renderer, 0, es.chunk, es.device)
        _sync(device)
        dt = time.perf_counter() - t0
    return {
        "val_size": f"{width}x{height}",
        "val_rows": big.size(0)[0],
        "val_s": dt,
        "val_peak_mib": pm.mib,
        "val_chunk": run.trainer.eval_settings.chunk,
    }


def bench_test_views(run, device: torch.device, views: int, es=None) -> dict[str, Any]:
    """Render the scene's first ``views`` test views (0: all) with the trained field, as the
    end-of-run evaluation does (its grid, its early termination): seconds per megapixel."""
    es = es or run.trainer.eval_settings
    ids = run.scene.test_ids.tolist()
    ids = ids[:views] if views > 0 else ids
    pixels = sum(int(run.scene.size(v)[0] * run.scene.size(v)[1]) for v in ids)
    run.renderer.ensure_grid(run.field)
    t0 = time.perf_counter()
    for v in ids:
        _, es.chunk = render_view(run.scene, run.field, run.renderer, v, es.chunk, es.device)
    _sync(device)
    dt = time.perf_counter() - t0
    grid = getattr(run.renderer, "grid", None)
    return {
        "test_views": len(ids),
        "test_mpix": pixels / 1e6,
        "test_render_s": dt,
        "test_s_per_mpix": dt / max(pixels / 1e6, 1e-12),
        "grid_occupied": None if grid is None else float(grid.binary.float().mean()),
        "grid_hull": None if grid is None else float(grid.hull.float().mean()),
    }


# What only a GPU can check, beside the ``cuda``-marked tests: the hash grid's kernel table
# (compiled Triton against PyTorch on CUDA tensors; on a CPU it runs under the interpreter) and
# nerfacc's probe against its real estimator.
GPU_TEST_FILES = ["tests/test_hashgrid_kernels.py", "tests/test_occupancy.py::" +
                  "test_the_probe_fills_nerfaccs_empty_grid_and_checks_its_samples"]  # fmt: skip


def run_cuda_tests(extra: list[str] | None = None) -> dict[str, str]:
    """``python -m pytest -m cuda``, then :data:`GPU_TEST_FILES`, in the source checkout;
    test id → outcome."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "tests").is_dir():
        raise ConfigError(f"--suite cuda runs the tests of a source checkout: no {repo / 'tests'}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    outcomes: dict[str, str] = {}
    for selection in (["-m", "cuda"], ["-m", "not slow", *GPU_TEST_FILES]):
        res = subprocess.run([*cmd, *selection, *(extra or [])], cwd=repo, capture_output=True,
                             text=True)  # fmt: skip
        found = 0
        for line in res.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"):
                outcomes[rest.split(" - ")[0].strip()] = word
                found += 1
        if res.returncode not in (0, 5) and not found:
            outcomes[f"pytest {' '.join(selection)}"] = (
                f"exit {res.returncode}: {res.stdout[-500:]}{res.stderr[-500:]}"
            )
    return outcomes


def time_encoder_backends(device: torch.device, n: int = 2**18) -> dict[str, Any]:
    """One forward + backward of the hash grid (neus_hashgrid's size) on ``n`` points, for
    every backend that runs on ``device``; ms per step and the backend that really ran (a
    backend that cannot run falls back to torch, and says so here)."""
    from neurecon.encoders import HashGridEncoder
    from neurecon.encoders.hashgrid import tcnn_available

    if device.type == "cuda":
        names = ["torch", "triton", *(["tcnn"] if tcnn_available() else [])]
    else:  # a dry run on a CPU: the C kernels and torch (Triton's interpreter is no timing)
        names, n = ["torch", "cpu"], min(n, 2**14)
    out: dict[str, Any] = {}
    x = torch.rand(n, 3, device=device) * 2 - 1
    for name in names:
        enc = HashGridEncoder(backend=name, include_input=False, device=str(device)).to(device)
        for i in range(6):  # the first call may compile kernels: not timed
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            enc(x).float().square().mean().backward()
        _sync(device)
        out[f"encoder_step_ms/{name}"] = (time.perf_counter() - t0) / 5 * 1e3
        out[f"encoder_ran/{name}"] = enc.ran
    if "tcnn" not in names:
        out["encoder_step_ms/tcnn"] = "not checked (tinycudann is not importable)"
    return out


def gpu_suite(args: argparse.Namespace) -> dict[str, Any]:
    """The GPU acceptance run (module docstring); returns its figures."""
    import importlib.metadata

    import trimesh

    from neurecon.geometry.picture import mesh_picture

    if args.data is None:
        raise ConfigError("--suite gpu needs --data PATH (a DTU scan in the NeuS format)")
    device = resolve_device("auto")
    if device.type != "cuda" and not args.allow_cpu:
        raise ConfigError("--suite gpu needs a CUDA GPU (--allow-cpu to try the script on a CPU)")
    out = Path(args.out)
    try:
        nerfacc_version = importlib.metadata.version("nerfacc")
    except importlib.metadata.PackageNotFoundError:
        nerfacc_version = "not installed"
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nerfacc": nerfacc_version,
        "budget_s": args.budget,
    }
    print(
        f"GPU acceptance on {res['device']}: torch {res['torch']}, CUDA {res['cuda']}, "
        f"nerfacc {res['nerfacc']}",
        flush=True,
    )
    if not args.skip_cuda_tests:
        t0 = time.perf_counter()
        res["cuda_tests"] = run_cuda_tests()
        print(f"cuda test suite and kernel table ({time.perf_counter() - t0:.0f} s):")
        for test, outcome in res["cuda_tests"].items():
            print(f"  {outcome:8s} {test}")
        if not any("tcnn" in t and o == "PASSED" for t, o in res["cuda_tests"].items()):
            print("  tcnn was not checked (tinycudann is not importable here)")
    res.update(time_encoder_backends(device))
    for k, v in res.items():
        if k.startswith("encoder_step_ms/"):
            name = k.split("/")[1]
            ran = res.get(f"encoder_ran/{name}")
            shown = f"{v:.1f} ms (ran: {ran})" if isinstance(v, float) else v
            print(f"hash grid step, encoder.backend={name}: {shown}", flush=True)
    overrides = [
        "experiment=neus_hashgrid",
        "dataset=dtu",
        f"dataset.root={args.data}",
        f"trainer.max_time={args.budget}",
        "trainer.progress=false",
        "callbacks.validate.every=0",
        "trainer.overwrite=true",  # the bench's own folder: a rerun replaces it
        "logger=none",
        "eval.metrics.lpips.net=null",
        *args.overrides,
    ]
    # Not the speed bench's base: the acceptance run keeps its mesh and checkpoints.
    run = build(compose_config(overrides, base=[]))
    run.renderer.to(device).setup(device)  # a first-use kernel build is not training time
    probe = _TrainProbe(
        run, device, 25.0, math.inf, args.check_every, masked=True, stop_at_target=False
    )
    t0 = time.perf_counter()
    metrics = run.trainer.fit(
        run.scene, run.field, run.renderer, run.optimizer, out / "run", callbacks=[probe]
    )
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    steps_per_s = probe.timed_steps / max(probe.timed_s, 1e-9)
    res.update(
        {
            "wall_s": wall,
            "status": metrics["status"],
            "steps": metrics["steps"],
            "train_s": metrics.get("train_time_s"),
            "steps_per_s": steps_per_s,
            "projected_20k_steps_s": 20000 / max(steps_per_s, 1e-9),
            "time_to_25db_masked_s": probe.time_to_target,
            "steps_to_25db_masked": probe.steps_to_target,
            # the run's own figures, found by their metric objects (neurecon/metrics/nodes.py)
            "test_psnr": PSNR().figures()[0].value(metrics),
            "test_psnr_masked": ObjectPSNR().figures()[0].value(metrics),
            "peak_gpu_mib": peak,
            "backend_march": metrics.get("backend/march"),  # what really ran, not what was asked
            "backend_encoder": metrics.get("backend/encoder"),
            "psnr_curve": probe.curve,
        }
    )
    mesh_file = out / "run" / "mesh.ply"
    if mesh_file.is_file():
        res["mesh_picture"] = str(mesh_picture(trimesh.load(mesh_file), out / "mesh.png"))
    rows = [
        ("wall time (train + eval)", _fmt(wall, " s")),
        ("steps done", f"{res['steps']} ({res['status']})"),
        ("steps/s", _fmt(steps_per_s)),
        ("projected 20k steps", _fmt(res["projected_20k_steps_s"], " s") + "  (target <= 300 s)"),
        ("time to 25 dB (masked)", _fmt(probe.time_to_target, " s")),
        (
            "final test PSNR",
            f"{_fmt(res['test_psnr'], ' dB')} (masked {_fmt(res['test_psnr_masked'], ' dB')})",
        ),
        ("peak GPU memory", _fmt(peak, " MiB") if peak is not None else "n/a (cpu)"),
        ("backends that ran", f"march {res['backend_march']}, encoder {res['backend_encoder']}"),
        ("mesh picture", res.get("mesh_picture", "none (no mesh)")),
    ]
    w = max(len(a) for a, _ in rows)
    print("\n".join(f"{a:<{w}}  {b}" for a, b in rows))
    return res


def bench_dtu(n_points: int) -> dict[str, Any]:
    """The DTU evaluation at full size: ``n_points`` ground-truth points (DTU's STL for one scan
    is about 5 million) on a sphere of radius 80 mm, a mesh 0.5 mm outside it (327,680 faces),
    a partial observability mask and a ground plane, in DTU's file layout. Returns wall time,
    peak memory and the scores (accuracy and completeness should both be 0.5 mm)."""
    import scipy.io
    import trimesh

    from neurecon.metrics.dtu import evaluate_dtu_mesh

    scan = 1
    with tempfile.TemporaryDirectory(prefix="neurecon-dtu-bench-") as tmp:
        root = Path(tmp)
        (root / "ObsMask").mkdir()
        (root / "Points" / "stl").mkdir(parents=True)
        v = np.random.default_rng(0).normal(size=(n_points, 3))
        v = 80.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
        trimesh.PointCloud(v).export(root / "Points" / "stl" / f"stl{scan:03}_total.ply")
        bb, res = np.array([[-150.0] * 3, [150.0] * 3]), 1.0
        obs = np.ones((301, 301, 301), np.uint8)
        obs[:, :, :100] = 0  # the lowest third unobservable: accuracy ignores it there
        scipy.io.savemat(root / "ObsMask" / f"ObsMask{scan}_10.mat",
                         {"ObsMask": obs, "BB": bb, "Res": np.array([[res]])})  # fmt: skip
        plane = np.array([0.0, 0.0, 1.0, 60.0]).reshape(4, 1)  # STL below z = -60 mm dropped
        scipy.io.savemat(root / "ObsMask" / f"Plane{scan}.mat", {"P": plane})
        mesh = trimesh.creation.icosphere(subdivisions=7, radius=80.5)
        with PeakMemory("cpu") as pm:
            t0 = time.perf_counter()
            d = evaluate_dtu_mesh(mesh, root, scan, progress=True)
            wall = time.perf_counter() - t0
    return {
        "dtu_gt_points": n_points,
        "dtu_mesh_faces": len(mesh.faces),
        "dtu_eval_s": wall,
        "dtu_peak_mib": pm.mib,
        **{f"dtu_{k}": v for k, v in d.items() if isinstance(v, int | float)},
    }


def bench_run(args: argparse.Namespace) -> int:
    """``--run DIR``: the test-view render time of a trained run folder (its newest checkpoint,
    loaded as evaluate.py loads it), optionally with its grid carved first (``--carve``)."""
    from neurecon.runs import load_trained_run

    try:
        run, settings, step, _ = load_trained_run(args.run)
        grid = getattr(run.renderer, "grid", None)
        if args.carve:
            hull = run.scene.visual_hull()
            if grid is None or hull is None:
                raise ConfigError(f"--carve: {args.run} has no occupancy grid or no masks")
            grid.carve(hull)
        res = {"run": str(args.run), "step": step, "carved": bool(args.carve)}
        res.update(bench_test_views(run, settings.device, args.test_views, settings))
    except (NeuReconError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.run} (step {step}{', carved here' if args.carve else ''}): "
        f"{res['test_views']} test views, {res['test_mpix']:.2f} MP in {res['test_render_s']:.1f} s"
        f" = {res['test_s_per_mpix']:.0f} s/MP"
        + ("" if res["grid_occupied"] is None else
           f"; grid {res['grid_occupied']:.1%} occupied, {res['grid_hull']:.1%} in the hull")
    )  # fmt: skip
    if args.json:
        write_json(args.json, res)
    return 0


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.3g}{unit}"
    return f"{v}{unit}"


def report(res: dict[str, Any]) -> str:
    overhead = res["field_samples_per_s"] / max(res["step_samples_per_s"], 1e-9) - 1.0
    ratio = res["val_peak_mib"] / max(res["train_peak_mib"], 1e-9)
    res["renderer_overhead"] = overhead
    res["val_train_peak_ratio"] = ratio
    band = "" if res["val_rows"] == int(res["val_size"].split("x")[1]) else (
        f" (central {res['val_rows']} rows)"
    )  # fmt: skip
    rows = [
        ("encoder+field fwd/bwd", _fmt(res["field_samples_per_s"], " samples/s"), ""),
        ("training step", _fmt(res["step_samples_per_s"], " samples/s"), ""),
        ("sampler+renderer overhead", f"{overhead:+.0%} per sample", "<= +50%"),
        ("training steps/s", _fmt(res["steps_per_s"]), ""),
        ("samples per step", _fmt(res["samples_per_step"]), ""),
        (
            "host syncs per step",
            ", ".join(f"{n} (step {k})" for k, n in res.get("host_syncs_per_step", {}).items()),
            "<= 2 (1 guard + 1 march)",
        ),
        (
            f"time to test PSNR {res['psnr_target']:g} dB",
            _fmt(res["time_to_target_s"], " s")
            + (f" ({res['steps_to_target']} steps)" if res["steps_to_target"] else ""),
            "",
        ),
        *[("compilation (first step)", _fmt(res.get("compile_s"), " s"), "")]
        * bool(res.get("compile_s")),
        (f"training peak ({res['memory_kind']})", _fmt(res["train_peak_mib"], " MiB"), ""),
        (
            f"validation {res['val_size']}{band}",
            f"{_fmt(res['val_peak_mib'], ' MiB')} in {res['val_s']:.1f} s",
            "",
        ),
        ("validation / training peak", f"{ratio:.2f}x", "<= 1.2x"),
    ]
    if "test_s_per_mpix" in res:
        grid = "" if res.get("grid_occupied") is None else (
            f"; grid {res['grid_occupied']:.0%} occupied, {res['grid_hull']:.0%} in the hull"
        )  # fmt: skip
        rows.append((
            f"test-view render ({res['test_views']} views, {res['test_mpix']:.2f} MP)",
            f"{_fmt(res['test_s_per_mpix'], ' s/MP')}{grid}", "",
        ))  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{w0}}  {'value':<{w1}}  target", "-" * (w0 + w1 + 12)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m neurecon.bench", description=doc)
    ap.add_argument("overrides", nargs="*", help="config overrides, as for train.py")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--psnr-target", type=float, default=25.0)
    ap.add_argument(
        "--budget", type=float, help="max training seconds (speed: 150; gpu: 240, in 6 min wall)"
    )
    ap.add_argument("--check-every", type=int, default=50, help="steps between PSNR checks")
    ap.add_argument("--points", type=int, default=32768, help="points for the field benchmark")
    ap.add_argument("--val-size", default="1600x1200", help="WIDTHxHEIGHT of the validation view")
    ap.add_argument("--val-rows", type=int, default=0, help="render only the central rows (0: all)")
    ap.add_argument(
        "--test-views", type=int, default=1,
        help="time this many of the scene's test views, s per megapixel (0: all; -1: off)",
    )  # fmt: skip
    ap.add_argument(
        "--run",
        type=Path,
        help="time the test views of this trained run folder instead (no training)",
    )
    ap.add_argument(
        "--carve", action="store_true",
        help="with --run: carve its grid by the scene's masks first (a run saved uncarved)",
    )  # fmt: skip
    ap.add_argument("--suite", choices=("speed", "gpu", "dtu"), default="speed")
    ap.add_argument("--dtu-points", type=int, default=5_000_000, help="--suite dtu: GT points")
    ap.add_argument("--data", help="--suite gpu: a DTU scan folder in the NeuS format")
    ap.add_argument("--out", default="bench_gpu", help="--suite gpu: output folder")
    ap.add_argument("--skip-cuda-tests", action="store_true", help="--suite gpu: train only")
    ap.add_argument("--allow-cpu", action="store_true", help="--suite gpu: try it on a CPU")
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = 240.0 if args.suite == "gpu" else 150.0
    if args.suite == "gpu":
        try:
            res = gpu_suite(args)
        except (NeuReconError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        write_json(Path(args.out) / "gpu_suite.json", res)
        if args.json:
            write_json(args.json, res)
        print(f"wrote {Path(args.out) / 'gpu_suite.json'}")
        failed = [t for t, o in res.get("cuda_tests", {}).items() if o in ("FAILED", "ERROR")]
        return 1 if failed or res["status"] not in ("completed", "time_limit") else 0
    if args.run:
        return bench_run(args)
    if args.suite == "dtu":
        res = bench_dtu(args.dtu_points)
        for k, v in res.items():
            print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
        if args.json:
            write_json(args.json, res)
        return 0
    try:
        width, height = (int(s) for s in args.val_size.lower().split("x"))
        cfg = compose_config(args.overrides)
        device = resolve_device(cfg.trainer.device)
        run = build(cfg)
        res: dict[str, Any] = {
            "overrides": args.overrides,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        }
        print(f"neurecon.bench on {res['device']} ({res['threads']} threads), torch {res['torch']}")
        if run.trainer.compile:  # trainer.compile=true: time the compiled field (warm-up compiles)
            compile_field(run.field)
        res.update(bench_field(run.field, args.points, device, amp_dtype=run.trainer.amp_dtype))
        # The field benchmark touched the parameters' grads only; train from the same init.
        run = build(cfg)
        res.update(bench_training(run, device, args.psnr_target, args.budget, args.check_every))
        res["compile_s"] = run.trainer.compile_s if run.trainer.compiled else None
        res.update(bench_validation(run, device, width, height, args.val_rows or height))
        if args.test_views >= 0:
            res.update(bench_test_views(run, device, args.test_views))
    except (NeuReconError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(res))
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
