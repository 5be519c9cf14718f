"""Experiment grids on Ray (benchmark x quality x N x method x seed), the results store and reports.

``run_grid(spec, results_dir, address=None)`` runs a grid; ``build_report(results_dir, out_dir)``
writes its tables and plots.
"""

from pathlib import Path
from typing import Any

from mfdiffuser.experiments.grid import Cell, Grid, parse_grid
from mfdiffuser.experiments.runner import GridSummary, run_grid
from mfdiffuser.experiments.store import ResultStore

__all__ = ["Cell", "Grid", "GridSummary", "ResultStore", "build_report", "parse_grid", "run_grid"]


def build_report(results_dir: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """Write the Markdown/LaTeX tables and PNG plots of a results store; return the Markdown path.

    Imported lazily so that running a grid does not load matplotlib; ``options`` (``skip_unreadable``,
    ``preface``, ``page``) are those of :func:`mfdiffuser.experiments.report.build_report`.
    """
    from mfdiffuser.experiments.report import build_report as _build

    return _build(results_dir, out_dir, **options)
