"""Metric tables from finished runs (see ``neurecon/eval/cli.py``; installed: ``neurecon-eval``)."""

from __future__ import annotations

import sys

from neurecon.eval.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
