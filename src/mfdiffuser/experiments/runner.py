"""Run a grid as Ray tasks: datasets first (once each), then one task per cell, every result stored.

A local Ray is started by default (``num_cpus`` from the machine, no dashboard); ``address`` joins a
cluster (``"auto"`` or ``host:port``). Cells that already have a finished record with the current
fingerprint are skipped, so a killed grid resumes where it stopped. Each task has
``max_retries`` retries, used when its worker dies or it raises an unexpected exception; a user error
(``ValueError``, ``MfdError``: bad input that fails the same way every time) is recorded at once,
without retries. A cell whose attempts all fail is recorded as ``failed`` and the grid goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mfdiffuser.algos.base import write_json
from mfdiffuser.errors import MfdError
from mfdiffuser.experiments.cell import failed_record, one_line, prepare_dataset, run_cell
from mfdiffuser.experiments.grid import Cell, DatasetSpec, Grid, parse_grid, select_cells, selected_path
from mfdiffuser.experiments.store import STARTED, ResultStore
from mfdiffuser.progress import ProgressBar
from mfdiffuser.raycluster import RAY_CONNECT_TIMEOUT_S, check_cluster, init_ray
from mfdiffuser.utils import (
    atomic_path,
    check_dir_target,
    check_nice,
    lower_priority,
    removed_on_failure,
    utc_timestamp,
)

CellHook = Callable[[Cell, str], None]
"""Called in the worker before a cell runs, with the cell and the results directory."""


@dataclass
class GridSummary:
    """What a ``run_grid`` call did."""

    results_dir: Path
    total: int
    skipped_existing: int = 0
    """Cells already finished before this call (not run again)."""
    done: int = 0
    skipped: int = 0
    """Cells the method declined within its budget (``BudgetExceeded``)."""
    failed: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    """UTC time the call started."""
    cpus: float | None = None
    """CPUs of the Ray cluster the cells ran on (None if no cell ran)."""
    interrupted: bool = False
    """The call was stopped before its cells were all finished."""
    nice: int | None = None
    """Niceness the cells ran at (``run_grid``'s ``nice``); None: the workers' own."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "results_dir": str(self.results_dir),
            "total": self.total,
            "skipped_existing": self.skipped_existing,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": self.seconds,
            "failures": self.failures,
            "started_at": self.started_at,
            "cpus": self.cpus,
            "interrupted": self.interrupted,
            "nice": self.nice,
        }


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, MfdError)
"""Deterministic errors of bad input: retrying them would fail the same way, so they are not retried."""


@dataclass(frozen=True)
class DatasetFailure:
    """What a dataset task returns instead of a path when its input is rejected (a user error)."""

    key: str
    error: str


def _remote_dataset(spec: DatasetSpec, data_dir: str, nice: int | None) -> str | DatasetFailure:
    """Generate a dataset; a user error is returned (not raised) so that Ray does not retry it."""
    lower_priority(nice)
    try:
        return prepare_dataset(spec, data_dir)
    except USER_ERRORS as exc:
        return DatasetFailure(spec.key, one_line(exc))


def _remote_cell(
    cell: Cell,
    dataset_path: str | DatasetFailure | None,
    results_dir: str,
    hook: CellHook | None,
    nice: int | None,
) -> dict:
    """Run a cell; a user error is recorded as ``failed`` and returned (not raised: no Ray retry)."""
    lower_priority(nice)
    store = ResultStore(results_dir)
    if isinstance(dataset_path, DatasetFailure):
        attempts = store.start_attempt(cell.id)
        rec = failed_record(cell, f"dataset {dataset_path.key}: {dataset_path.error}", attempts=attempts)
        store.write(rec)
        return rec
    try:
        return run_cell(cell, dataset_path, results_dir, hook=hook)
    except USER_ERRORS as exc:
        rec = failed_record(cell, exc, attempts=_attempts(Path(results_dir), cell.id))
        store.write(rec)
        return rec


def run_grid(
    spec: str | Path | Mapping[str, Any],
    results_dir: str | Path | None = None,
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    hook: CellHook | None = None,
    only: list[str] | None = None,
    connect_timeout: float = RAY_CONNECT_TIMEOUT_S,
    nice: int | None = None,
) -> GridSummary:
    """Run every unfinished cell of a grid on Ray and store one record per cell.

    Args:
        spec: path of a YAML grid spec or the spec as a dict (see :mod:`mfdiffuser.experiments.grid`).
        results_dir: results store; default ``results/<grid name>`` (or the spec's ``results``).
        address: Ray cluster to join (``"auto"``, ``"host:port"``); None starts a local Ray.
        num_cpus: CPUs of the local Ray (default: all of the machine's).
        data_dir: where datasets live; default the spec's ``datasets_dir`` or ``<results>/datasets``.
        progress: show a progress bar over cells.
        hook: called in the worker before each cell (fault injection in tests, custom logging).
        only: filters ``KEY=V1,V2`` (benchmark, quality, method, seed) that select a subset of cells.
        connect_timeout: seconds to wait for the ``address`` cluster to answer.
        nice: run the datasets and cells at this niceness or lower priority (0-19), Ray's own
            processes at the priority the sweep started with: a sweep started under ``nice`` on a
            busy machine may find its local Ray too slow to start (Ray gives its node 30 s). A
            worker keeps the lowered priority for the later tasks of its Ray session.

    Raises:
        ValueError: ``nice`` is outside 0-19.

    Returns:
        Counts of finished, skipped and failed cells.
    """
    import ray

    check_nice(nice)
    t0 = time.perf_counter()
    started_at = utc_timestamp()
    if address is not None:
        check_cluster(address)  # a malformed address or no cluster fails before anything is written
    grid: Grid = parse_grid(spec)
    results = Path(results_dir or grid.spec.get("results") or Path("results") / grid.name)
    data = Path(data_dir or grid.spec.get("datasets_dir") or results / "datasets")
    check_dir_target(results, "the results directory")
    check_dir_target(data, "the datasets directory")
    store = ResultStore(results)
    # until the first task runs, a failure (Ray does not start) leaves no new results directory
    with removed_on_failure(results, errors=(BaseException,)):
        results.mkdir(parents=True, exist_ok=True)
        store.fill_train_times()
        write_grid_spec(spec, grid, results)
        cells = select_cells(grid.cells, only)
        summary = GridSummary(results, len(cells), started_at=started_at, nice=nice)
        todo = [c for c in cells if not all(store.is_finished(r, c.fingerprint) for r in c.record_ids)]
        summary.skipped_existing = len(cells) - len(todo)
        if not todo:
            summary.seconds = time.perf_counter() - t0
            write_json(results / "summary.json", summary.as_dict())
            return summary
        started = init_ray(address, num_cpus, timeout=connect_timeout)
    summary.cpus = float(ray.cluster_resources().get("CPU", 0.0))
    # A first line now, so that a sweep killed with its machine still shows in the log.
    store.log_sweep(
        {
            "started_at": started_at,
            "state": STARTED,
            "total": summary.total,
            "skipped_existing": summary.skipped_existing,
            "cpus": summary.cpus,
            "nice": nice,
        }
    )
    bar = ProgressBar(len(todo), f"grid {grid.name}") if progress else None
    pending: dict[Any, Cell] = {}
    try:
        retries = grid.max_retries
        # Datasets first: one task each, which every cell that needs it waits for (Ray dependency).
        data_task = ray.remote(max_retries=retries, retry_exceptions=True)(_remote_dataset)
        datasets: dict[str, Any] = {}
        for cell in todo:
            if cell.dataset is None or cell.dataset.key in datasets:
                continue
            path = cell.dataset.path(data)
            datasets[cell.dataset.key] = (
                str(path)
                if path.is_file()
                else data_task.options(
                    num_cpus=float(cell.resources.get("num_cpus", 1)), name=f"data:{cell.dataset.key}"
                ).remote(cell.dataset, str(data), nice)
            )
        cell_task = ray.remote(max_retries=retries, retry_exceptions=True)(_remote_cell)
        for cell in todo:
            ds = datasets[cell.dataset.key] if cell.dataset is not None else None
            ref = cell_task.options(
                num_cpus=float(cell.resources.get("num_cpus", 1)),
                num_gpus=float(cell.resources.get("num_gpus", 0)),
                memory=cell.resources.get("memory"),
                name=f"cell:{cell.id}",
            ).remote(cell, ds, str(results), hook, nice)
            pending[ref] = cell
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - every failure of a cell is recorded, not raised
                    rec = failed_record(cell, _unwrap(exc), attempts=_attempts(results, cell.id))
                    store.write(rec)
                    summary.failed += 1
                    summary.failures[cell.id] = rec["error"]
                else:
                    if rec.get("status") == "failed":  # a user error, recorded by the task
                        summary.failed += 1
                        summary.failures[cell.id] = rec["error"]
                    elif rec.get("status") == "skipped":
                        summary.skipped += 1
                    else:
                        summary.done += 1
                if bar is not None:
                    bar.update(1, f"done {summary.done} skipped {summary.skipped} failed {summary.failed}")
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        summary.interrupted = True
        raise
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
        summary.seconds = time.perf_counter() - t0
        write_json(results / "summary.json", summary.as_dict())
        store.log_sweep({k: v for k, v in summary.as_dict().items() if k not in ("failures", "results_dir")})
    return summary


STORED_SELECTION = "selected.yaml"
"""Name of the copy of a grid's ``selected:`` file in its results store."""


def write_grid_spec(spec: str | Path | Mapping[str, Any], grid: Grid, results: Path) -> None:
    """Store the grid's spec as ``<results>/grid.yaml``, self-contained.

    A ``selected:`` file is copied next to it (:data:`STORED_SELECTION`) and the stored spec names
    the copy, so that the store's ``grid.yaml`` alone gives the same cells (``mfd reproduce``).
    """
    stored = dict(grid.spec)
    source = selected_path(spec, grid.spec)
    if source is not None:
        text = source.read_text()  # parse_grid has read it: it exists and is valid
        with atomic_path(results / STORED_SELECTION) as tmp:
            tmp.write_text(text)
        stored["selected"] = STORED_SELECTION
    with atomic_path(results / "grid.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(stored, sort_keys=False))


def _unwrap(exc: BaseException) -> BaseException:
    """The application exception inside a Ray task error, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _attempts(results: Path, cell_id: str) -> int:
    path = results / "attempts" / cell_id
    return len(path.read_text().splitlines()) if path.is_file() else 0
