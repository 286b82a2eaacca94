"""Metric tables from finished runs: ``neurecon-eval`` (installed) or ``python evaluate.py``.

python evaluate.py outputs/2026-11-24/12-00-00             # one run
python evaluate.py multirun/2026-11-24/12-00-00            # every run of a sweep
python evaluate.py 'outputs/*/*' --format latex --out table.tex
python evaluate.py runs/ --by-scene chamfer                # scenes as columns (DTU papers)
python evaluate.py multirun/dtu --by-scene dtu/overall     # the papers' 15-scan DTU table
python evaluate.py RUN --recompute --dtu-protocol monosdf  # DTU figures with another culling
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neurecon.errors import NeuReconError
from neurecon.eval.tables import (
    FORMATS,
    build_table,
    find_runs,
    label_runs,
    pivot_table,
    protocol_note,
    read_run_record,
    render,
    write_output,
)
from neurecon.metrics.dtu import PROTOCOLS

log = logging.getLogger("evaluate")


def recompute(run_dir: Path, dtu_protocol: str | None = None) -> None:
    """Re-render the test views and re-extract the mesh from the run's newest checkpoint."""
    from neurecon.eval import evaluate_run
    from neurecon.runs import load_trained_run
    from neurecon.train.lock import run_folder_lock

    # The saved config is untrusted: only allow-listed targets are built (neurecon.runs).
    run, settings, step, ckpt = load_trained_run(run_dir)
    if dtu_protocol is not None:
        dtu = settings.dtu()
        if dtu is None:
            raise NeuReconError(f"{run_dir}: --dtu-protocol, but the run has no eval.metrics.dtu")
        dtu.protocol = dtu_protocol
    old = run_dir / "metrics.json"
    base = json.loads(old.read_text()) if old.is_file() else {"scene": run.scene.name}
    base.update({"status": base.get("status", "completed"), "steps": step})
    log.info("recomputing %s from %s", run_dir, ckpt.name)
    with run_folder_lock(run_dir):  # never write beside a live run
        evaluate_run(run.scene, run.field, run.renderer, run_dir, settings, base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run directories, sweep directories or globs")
    ap.add_argument("--format", default="markdown", choices=FORMATS)
    ap.add_argument("--out", help="write the table to this file (atomically) instead of stdout")
    ap.add_argument(
        "--recompute",
        action="store_true",
        help="recompute metrics from each run's newest checkpoint",
    )
    ap.add_argument(
        "--by-scene",
        metavar="COLUMN",
        help="paper-style table of one column (e.g. chamfer, psnr, dtu/overall) per scene",
    )
    ap.add_argument(
        "--dtu-protocol", choices=sorted(PROTOCOLS), default=None,
        help="with --recompute: whose mesh culling the DTU figures follow (default: the run's "
        "eval.metrics.dtu.protocol); " + "; ".join(p.describe() for p in PROTOCOLS.values()),
    )  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        dirs = find_runs(args.paths)
        if args.recompute:
            for d in dirs:
                recompute(d, args.dtu_protocol)
        runs = [r for r in (read_run_record(d) for d in dirs) if r is not None]
        if not runs:
            raise NeuReconError(
                f"none of the {len(dirs)} run(s) found has metrics.json; "
                "finish them or use --recompute"
            )
        label_runs(runs)
        table = pivot_table(runs, args.by_scene) if args.by_scene else build_table(runs)
        text = render(*table, args.format)
        note = protocol_note(runs)  # the papers' figures differ by culling: say which
        if note and args.format == "markdown":
            text += f"\n{note}\n"
        elif note and args.format == "latex":
            text += f"% {note}\n"
        write_output(text, args.out)
    except NeuReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
