"""Rerun finished cells of a results store from its ``grid.yaml`` and compare the new records.

A store's records claim to be reproducible: a cell run again from the stored grid with the same code
gives the same record, apart from what measures time or memory or names places
(:func:`mfdiffuser.experiments.store.stable`). :func:`reproduce_store` reruns records chosen at random
(or by filters) from scratch, dataset, training and evaluation, through the sweep's own code
(:func:`~mfdiffuser.experiments.cell.prepare_dataset`, :func:`~mfdiffuser.experiments.cell.run_cell`)
and lists every field that differs.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdiffuser.experiments.grid import CELL_KEYS, Cell, Grid, parse_grid, select_cells
from mfdiffuser.experiments.store import ResultStore, stable

ABSENT = "<absent>"
"""Stands for a field one of two compared records does not have."""
PROVENANCE = ("versions",)
"""Record keys naming the software that ran: shown apart, not compared. A rerun at a later commit
names that commit; whether its result is the same is what the other fields say."""
FILTER_KEYS = (*CELL_KEYS, "budget")
"""Keys of ``only`` filters: a cell's (as for ``mfd sweep --only``) and a record's training budget."""
FIRST = ("dataset.checksum",)
"""Differences listed first: a different dataset explains every other difference."""


@dataclass(frozen=True)
class Target:
    """A finished record of a store, with the grid cell and training budget that write it."""

    record: dict[str, Any]
    cell: Cell
    budget: int | None
    """The record's training budget (``__b<steps>`` records), None for a cell without budgets."""

    @property
    def id(self) -> str:
        """The record's id (its file name under ``cells/``)."""
        return str(self.record["id"])


@dataclass(frozen=True)
class StoreTargets:
    """What a store holds that can be rerun."""

    grid: Grid
    targets: tuple[Target, ...]
    """Finished (``done``) records that cells of the stored grid write, sorted by id."""
    outside: tuple[str, ...]
    """Ids of finished records that no cell of the stored grid writes (left by an earlier spec)."""


@dataclass(frozen=True)
class Difference:
    """One field whose value differs between the stored record and the rerun's."""

    path: str
    """Where in the record, e.g. ``metrics.1000.score.values[3]``."""
    recorded: Any
    now: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "recorded": self.recorded, "now": self.now}


@dataclass(frozen=True)
class Outcome:
    """The rerun of one record and how the new record compares with the stored one."""

    id: str
    differences: tuple[Difference, ...]
    """Fields that differ, the dataset's checksum first; empty when the record is reproduced."""
    versions: tuple[Difference, ...]
    """Software versions that differ between the two runs (not counted as differences)."""
    dataset_checksum: str | None
    """Checksum of the regenerated dataset (None for a cell that trains nothing, or a failed rerun)."""
    error: str | None = None
    """Why the rerun wrote no record (it then reproduces nothing)."""
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        """Whether the rerun reproduced the record."""
        return self.error is None and not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identical": self.identical,
            "differences": [d.as_dict() for d in self.differences],
            "versions": [d.as_dict() for d in self.versions],
            "dataset_checksum": self.dataset_checksum,
            "error": self.error,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Reproduction:
    """The result of :func:`reproduce_store`."""

    store: str
    seed: int
    candidates: int
    """Finished records the choice was made from (after the filters)."""
    outcomes: tuple[Outcome, ...]
    work: str | None
    """The kept work directory (None: a temporary one, removed)."""

    @property
    def reproduced(self) -> bool:
        """Whether every chosen record was reproduced."""
        return all(o.identical for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "seed": self.seed,
            "candidates": self.candidates,
            "chosen": [o.id for o in self.outcomes],
            "reproduced": self.reproduced,
            "cells": [o.as_dict() for o in self.outcomes],
            "work": self.work,
        }


def load_targets(store_dir: str | Path) -> StoreTargets:
    """The finished records of a results store, each with the cell of its ``grid.yaml`` that writes it.

    Raises:
        ValueError: not a directory, no ``grid.yaml``, an invalid grid, or no finished record that
            a cell of the grid writes.
    """
    root = Path(store_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a results store (not a directory)")
    spec = root / "grid.yaml"
    if not spec.is_file():
        raise ValueError(f"{root} is not a results store: it has no grid.yaml")
    grid = parse_grid(spec)
    writers = {
        rid: (c, b) for c in grid.cells for rid, b in zip(c.record_ids, c.budgets or (None,), strict=True)
    }
    done = [r for r in ResultStore(root).records() if r.get("status") == "done"]
    if not done:
        raise ValueError(f"{root} has no finished records (status done) under cells/")
    targets = tuple(Target(r, *writers[r["id"]]) for r in done if r["id"] in writers)
    outside = tuple(r["id"] for r in done if r["id"] not in writers)
    if not targets:
        raise ValueError(f"none of the {len(done)} finished records of {root} is a cell of its grid.yaml")
    return StoreTargets(grid, targets, outside)


def filter_targets(targets: Sequence[Target], only: Sequence[str]) -> list[Target]:
    """The targets matching every ``KEY=V1,V2`` filter (KEY in :data:`FILTER_KEYS`), sorted by id.

    Raises:
        ValueError: a malformed filter, a value no target has, or filters that together match nothing.
    """
    pool = sorted(targets, key=lambda t: t.id)
    cell_filters, budgets = [], []
    for item in only:
        key, sep, values = item.partition("=")
        if not sep or key not in FILTER_KEYS or not values:
            raise ValueError(
                f"--only {item!r}: expected KEY=VALUE[,VALUE...] with KEY in {', '.join(FILTER_KEYS)}"
            )
        if key == "budget":
            budgets.append((item, {v.strip() for v in values.split(",")}))
        else:
            cell_filters.append(item)
    if cell_filters:  # the cells' filters as for a sweep, each value checked against every record
        keep = {c.id for c in select_cells(tuple({t.cell.id: t.cell for t in pool}.values()), cell_filters)}
        pool = [t for t in pool if t.cell.id in keep]
    known = {str(t.budget) for t in targets if t.budget is not None}
    for item, wanted in budgets:
        if not wanted & known:
            raise ValueError(
                f"--only {item!r}: no finished record has budget in {sorted(wanted)}; "
                f"the store has {sorted(known, key=int) or 'no budgets'}"
            )
        pool = [t for t in pool if str(t.budget) in wanted]
    if not pool:
        raise ValueError(f"--only {' '.join(only)}: no finished record matches every filter")
    return pool


def choose(targets: Sequence[Target], count: int | None, seed: int) -> list[Target]:
    """``count`` of the targets drawn at random without replacement (all when None or more), by id.

    Each record's rank in the draw is the sha256 of ``"<seed>/<record id>"``: the draw depends on
    ``seed`` and the records only (not on the order they are listed in), and stays the same across
    Python and NumPy versions, so a draw named by its seed can be made again later.

    Raises:
        ValueError: ``count`` below 1 or a negative ``seed``.
    """
    import hashlib

    if count is not None and count < 1:
        raise ValueError(f"--cells must be >= 1, got {count}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    pool = sorted(targets, key=lambda t: t.id)
    if count is None or count >= len(pool):
        return pool

    def rank(target: Target) -> str:
        return hashlib.sha256(f"{seed}/{target.id}".encode()).hexdigest()

    picked = {t.id for t in sorted(pool, key=rank)[:count]}
    return [t for t in pool if t.id in picked]


def compare_records(recorded: dict[str, Any], now: dict[str, Any]) -> list[Difference]:
    """Every field of two records that differs, apart from volatile ones and :data:`PROVENANCE`.

    Values compare exactly (a reproduced record is the same bit for bit); lists of equal length
    compare element by element. The fields in :data:`FIRST` come first, then the recorded order.
    """
    a, b = ({k: v for k, v in stable(r).items() if k not in PROVENANCE} for r in (recorded, now))
    found = list(_differences(a, b, ""))
    return [d for d in found if d.path in FIRST] + [d for d in found if d.path not in FIRST]


def version_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[Difference]:
    """The :data:`PROVENANCE` fields (software versions, commit) that differ between two records."""
    out: list[Difference] = []
    for key in PROVENANCE:
        out.extend(_differences(recorded.get(key, ABSENT), now.get(key, ABSENT), key))
    return out


def _differences(a: Any, b: Any, path: str) -> Iterator[Difference]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else str(key)
            yield from _differences(a.get(key, ABSENT), b.get(key, ABSENT), sub)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}[{i}]")
    elif not _same(a, b):
        yield Difference(path, a, b)


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type (1 and 1.0 differ in a record); NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


Echo = Callable[[str], None]
"""Where progress lines go (``print`` in the command)."""


def rerun(target: Target, work: Path, *, progress: bool = False, echo: Echo = print) -> Outcome:
    """Rerun one record from scratch under ``work`` and compare the new record with the stored one.

    The dataset is generated into ``work/datasets`` (shared by the targets of one work directory:
    same spec, same file) and its checksum checked against the record's first; the cell then runs
    with the cell's ``num_cpus`` torch threads, as in a sweep, into its own store ``work/<id>``.
    A rerun that raises is an outcome with its ``error``, not an exception.
    """
    import torch

    from mfdiffuser.data import load_dataset
    from mfdiffuser.experiments.cell import one_line, prepare_dataset, run_cell

    t0 = time.perf_counter()
    cell = target.cell
    threads = torch.get_num_threads()
    torch.set_num_threads(max(int(cell.resources.get("num_cpus", 1)), 1))
    checksum: str | None = None
    try:
        if target.record.get("fingerprint") != cell.fingerprint:
            echo(f"{target.id}: note: the grid's cell has another fingerprint than the record "
                 "(this code reads the config differently)")
        dataset_path = None
        if cell.dataset is not None:
            reused = cell.dataset.path(work / "datasets").is_file()
            echo(f"{target.id}: {'dataset' if reused else 'generating dataset'} {cell.dataset.key}"
                 f"{' (generated for an earlier record)' if reused else ''}")
            dataset_path = prepare_dataset(cell.dataset, work / "datasets", progress=progress)
            checksum = load_dataset(dataset_path, verify=False).meta.checksum
            recorded = (target.record.get("dataset") or {}).get("checksum")
            if checksum == recorded:
                echo(f"{target.id}: dataset checksum {checksum[:12]} as recorded")
            else:
                echo(f"{target.id}: the dataset differs: checksum {recorded} recorded, {checksum} now")
        if cell.algo is None:
            echo(f"{target.id}: evaluating")
        else:
            steps = target.budget or cell.trainer.get("steps")
            echo(f"{target.id}: training{f' to {steps:,} steps' if steps else ''}, then evaluating")
        run_cell(cell, dataset_path, work / target.id, progress=progress, only_budget=target.budget)
        new = ResultStore(work / target.id).read(target.id)
        if new is None:
            raise RuntimeError(f"the rerun wrote no record {target.id}")
    except Exception as exc:  # noqa: BLE001 - a failed rerun is reported as such, with its error
        return Outcome(target.id, (), (), checksum, one_line(exc), time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    diffs = tuple(compare_records(target.record, new))
    versions = tuple(version_differences(target.record, new))
    return Outcome(target.id, diffs, versions, checksum, None, time.perf_counter() - t0)


def check_work_dir(work: str | Path) -> Path:
    """A ``--work`` directory: new or empty, so that nothing in it is reused (every rerun starts afresh).

    Raises:
        ValueError: ``work`` is a file or a directory with something in it.
    """
    from mfdiffuser.utils import check_dir_target

    path = Path(work)
    check_dir_target(path, "--work")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"--work {path} is not empty: give a new or empty directory (reruns start afresh)")
    return path


@dataclass(frozen=True)
class Plan:
    """The records a reproduction reruns, and what they were chosen from."""

    found: StoreTargets
    pool: tuple[Target, ...]
    """The finished records matching the filters."""
    chosen: tuple[Target, ...]


def plan(store_dir: str | Path, *, cells: int | None = 3, seed: int = 0, only: Sequence[str] = ()) -> Plan:
    """Choose the records to rerun (arguments as for :func:`reproduce_store`); runs nothing.

    Raises:
        ValueError: see :func:`load_targets`, :func:`filter_targets` and :func:`choose`.
    """
    found = load_targets(store_dir)
    pool = filter_targets(found.targets, only)
    return Plan(found, tuple(pool), tuple(choose(pool, cells, seed)))


def reproduce_store(
    store_dir: str | Path,
    *,
    cells: int | None = 3,
    seed: int = 0,
    only: Sequence[str] = (),
    work: str | Path | None = None,
    progress: bool = False,
    echo: Echo = print,
    on_outcome: Callable[[int, int, Outcome], None] | None = None,
) -> Reproduction:
    """Rerun records of a store chosen at random (or by filters) and compare each with its rerun.

    Args:
        store_dir: the results store (``grid.yaml``, ``cells/``).
        cells: records to draw at random; None: every record the filters match.
        seed: seed of the draw.
        only: ``KEY=V1,V2`` filters (benchmark, quality, method, seed, budget) applied before the draw.
        work: directory to rerun in and keep (new or empty); None: a temporary one, removed after.
        progress: show the progress of generation, training and evaluation.
        echo: where progress lines go.
        on_outcome: called with ``(i, n, outcome)`` as each rerun ends (``i`` from 1).

    Raises:
        ValueError: bad input (see :func:`load_targets`, :func:`filter_targets`, :func:`choose`,
            :func:`check_work_dir`), before anything runs.
    """
    chosen = plan(store_dir, cells=cells, seed=seed, only=only)
    keep = check_work_dir(work) if work is not None else None
    if chosen.found.outside:
        outside = chosen.found.outside
        echo(f"note: {len(outside)} finished records are no cell of grid.yaml (not rerun), e.g. {outside[0]}")
    n, pool = len(chosen.chosen), len(chosen.pool)
    echo(f"rerunning {n} of {pool} finished records of {store_dir} (seed {seed})")
    outcomes: list[Outcome] = []
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="mfd-reproduce-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i, target in enumerate(chosen.chosen, 1):
            outcome = rerun(target, root, progress=progress, echo=echo)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(i, len(chosen.chosen), outcome)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    work_kept = None if keep is None else str(keep)
    return Reproduction(str(store_dir), seed, len(chosen.pool), tuple(outcomes), work_kept)
