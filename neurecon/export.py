"""Export from a finished (or interrupted) run folder: a coloured, cleaned mesh at any
resolution, depth and normal maps of the test views, a turntable video.

    python -m neurecon.export outputs/2026-11-26/10-00-00 --resolution 512 --keep-largest
    python -m neurecon.export RUN --format glb --maps --video

It reads the run's newest checkpoint on whatever device is here (``--device``), whatever device
trained it; the saved config is untrusted and built through the allow-list
(:mod:`neurecon.runs`). Everything is written under ``RUN/export/`` (or ``--out``), atomically;
the run's own ``mesh.ply`` and ``metrics.json`` are never touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from neurecon.atomic import check_inside, write_json, writes_inside
from neurecon.errors import MeshExtractionError, NeuReconError
from neurecon.eval.outputs import (
    MESH_FORMATS,
    MeshOptions,
    depth_normal_maps,
    export_mesh,
    turntable_video,
    write_mesh,
)
from neurecon.metrics.dtu import PROTOCOLS

log = logging.getLogger("neurecon.export")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m neurecon.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("run", type=Path, help="a run folder (with .hydra/ and checkpoints/)")
    ap.add_argument("--out", type=Path, help="output folder (default: RUN/export)")
    ap.add_argument("--resolution", type=int, default=512, help="grid points per side (512)")
    ap.add_argument("--block", type=int, default=128, help="grid points per block side (128)")
    ap.add_argument("--format", default="ply", choices=MESH_FORMATS, help="mesh file format")
    ap.add_argument("--no-colors", action="store_true", help="no vertex colours")
    ap.add_argument(
        "--keep-largest",
        nargs="?",
        const=-1.0,
        type=float,
        metavar="FRACTION",
        help="keep the largest connected component; with FRACTION, every component with at "
        "least that fraction of the largest one's faces",
    )
    ap.add_argument("--cull-unseen", action="store_true", help="drop faces no training camera sees")
    ap.add_argument(
        "--cull-masks", action="store_true", help="DTU-style culling by the dilated masks"
    )
    ap.add_argument(
        "--dtu-protocol", default="neus", choices=sorted(PROTOCOLS),
        help="whose mesh culling --cull-masks applies: " + "; ".join(
            p.describe() for p in PROTOCOLS.values()),
    )  # fmt: skip
    ap.add_argument(
        "--mask-dilate", type=float, default=None,
        help="override the protocol's mask dilation (pixels of the full-size photos)",
    )  # fmt: skip
    ap.add_argument(
        "--maps", action="store_true", help="depth (.npy, world) + normal maps of test views"
    )
    ap.add_argument("--video", action="store_true", help="turntable video (turntable.mp4)")
    ap.add_argument("--frames", type=int, default=48, help="video frames (48)")
    ap.add_argument("--video-size", type=int, default=192, help="video panel width (192)")
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--device", default=None, help="cpu | cuda | auto (default: the run's)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.resolution < 8 or args.block < 2 or args.frames < 1:
        ap.error("need --resolution >= 8, --block >= 2 and --frames >= 1")
    return args


def export_run(args: argparse.Namespace) -> dict:
    """Do what ``args`` asks; return a summary of the files written (also ``export.json``)."""
    import torch

    from neurecon.device import resolve_device
    from neurecon.runs import load_trained_run

    device = None if args.device is None else resolve_device(args.device)
    run, settings, step, ckpt = load_trained_run(args.run, device)
    settings.progress = not args.no_progress
    out = args.out or args.run / "export"
    # Writes stay inside the run folder (or --out): a symlinked RUN/export is refused up front.
    with writes_inside(args.run if args.out is None else args.out):
        check_inside(out / "export.json")
        log.info("exporting %s (step %d, %s) on %s to %s", args.run, step, ckpt.name,
                 settings.device, out)  # fmt: skip
        opts = MeshOptions(
            resolution=args.resolution,
            block=args.block,
            colors=not args.no_colors,
            keep_largest=args.keep_largest is not None,
            min_component=args.keep_largest if (args.keep_largest or -1) > 0 else None,
            cull_unseen=args.cull_unseen,
            cull_masks=args.cull_masks,
            mask_protocol=args.dtu_protocol,
            mask_dilate=args.mask_dilate,
        )
        summary: dict = {"run": str(args.run), "checkpoint": ckpt.name, "step": step}
        if args.cull_masks:  # which paper's culling made this mesh
            summary["dtu_protocol"] = PROTOCOLS[args.dtu_protocol].describe()
        t0 = time.time()
        with torch.no_grad():
            mesh = export_mesh(run.scene, run.field, settings, opts)
        path = write_mesh(mesh, out / f"mesh_{args.resolution}.{args.format}")
        summary.update(mesh=path.name, vertices=len(mesh.vertices), faces=len(mesh.faces),
                       mesh_time_s=round(time.time() - t0, 2))  # fmt: skip
        log.info("mesh: %s (%d vertices, %d faces, %.1f s)", path, len(mesh.vertices),
                 len(mesh.faces), summary["mesh_time_s"])  # fmt: skip
        if args.maps:
            views = run.scene.test_ids.tolist()
            depth_normal_maps(run.scene, run.field, run.renderer, views, settings, out)
            summary["maps"] = {"depth": "depth/", "normal": "normal/", "views": views}
            log.info("depth and normal maps of %d test views: %s/{depth,normal}/", len(views), out)
        if args.video:
            t1 = time.time()
            video = turntable_video(
                run.scene, run.field, run.renderer, mesh, settings, out / "turntable.mp4",
                frames=args.frames, size=args.video_size, fps=args.fps,
            )  # fmt: skip
            summary.update(video=video.name, video_time_s=round(time.time() - t1, 2))
            log.info("video: %s (%d frames, %.1f s)", video, args.frames, summary["video_time_s"])
        write_json(out / "export.json", summary)
        return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        summary = export_run(args)
    except (NeuReconError, MeshExtractionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
