"""The results store of a grid: one JSON record per cell, each written atomically the moment it ends.

Layout of a results directory::

    grid.yaml              the spec the grid ran with
    selected.yaml          a copy of the settings its ``selected:`` names (grid.yaml names the copy)
    cells/<cell id>.json   one record per cell: config, status, metrics, timings, versions
    attempts/<cell id>     attempts started for the cell (one line each; Ray retries included)
    runs/<cell id>-<hash>/ the trained run (resumable checkpoint)
    refs/                  cached reference returns at evaluation N
    datasets/              datasets (unless the spec names another directory)
    summary.json           counts of the last ``run_grid`` call
    sweeps.jsonl           per ``run_grid`` call that ran cells: a line when its cells start, and one
                           when it ends with its wall time, CPUs and counts

A record's ``status`` is ``done``, ``skipped`` (the method declined the cell within its budget, e.g.
MADiff at large N) or ``failed`` (with the error); a rerun skips ``done`` and ``skipped`` cells whose
fingerprint matches the current spec and runs the others again. A rerun also adds the run's own
training time to records written before they carried it (``ResultStore.fill_train_times``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from mfdiffuser.algos.base import write_json
from mfdiffuser.utils import UTC_FORMAT, utc_timestamp

FINISHED = ("done", "skipped")
SWEEPS = "sweeps.jsonl"
STARTED = "started"
"""``state`` of the sweep-log line written when a sweep's cells start (its end line has no ``state``)."""
RECORD_KEYS = ("id", "status")
"""Keys every cell record has (string-valued); a file without one of them is unreadable as a record."""


VOLATILE = frozenset({"timings", "host", "pid", "written_at", "attempt", "run_dir", "path", "trained_by"})
"""Keys of a record, at any depth, that a rerun changes without changing the result: what measures
time, names places (host, process, paths) or counts the sweep's own work (attempts; which of the
cells sharing a run happened to train it)."""
VOLATILE_METRICS = frozenset({"act_ms", "act_ms_max", "peak_mem_mb", "wall_s"})
"""Keys of one N's metrics (a mapping with ``n_agents``) that measure latency or memory."""


def stable(obj: Any) -> Any:
    """A record (or any part of one) without its :data:`VOLATILE` and :data:`VOLATILE_METRICS` keys.

    What remains must repeat exactly when a cell is run again from its config with the same code.
    """
    if isinstance(obj, dict):
        drop = VOLATILE | (VOLATILE_METRICS if "n_agents" in obj else frozenset())
        return {k: stable(v) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


class Unreadable(NamedTuple):
    """A file under ``cells/`` that is no cell record, and why."""

    path: Path
    reason: str


class RecordScan(NamedTuple):
    """The records of a store and the files under ``cells/`` that could not be read as records."""

    records: list[dict[str, Any]]
    unreadable: list[Unreadable]


def read_record(path: Path, keys: tuple[str, ...] = RECORD_KEYS) -> dict[str, Any] | str:
    """The cell record in ``path``, or a short reason why it is none (not JSON, not an object, a key missing).

    Args:
        path: the record's file.
        keys: keys whose values must be strings (a record has at least :data:`RECORD_KEYS`).
    """
    try:
        rec = json.loads(path.read_text())
    except OSError as exc:
        return f"cannot read ({exc.strerror or type(exc).__name__})"
    except UnicodeDecodeError:
        return "not text"
    except json.JSONDecodeError as exc:
        return f"not JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in keys if not isinstance(rec.get(k), str)]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)}"
    return rec


def versions() -> dict[str, str]:
    """Versions of the library, Python and the main dependencies (stored in every record)."""
    import numpy
    import torch

    from mfdiffuser import __version__

    out = {
        "mfdiffuser": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
    }
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is an optional extra
        pass
    commit = source_commit()
    if commit is not None:
        out["commit"] = commit
    return out


def source_commit() -> str | None:
    """Git commit of the checkout the package runs from (with ``+dirty`` for local edits), else None."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` (created with its directory); a short O_APPEND write is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _measured_from_records(
    start: dict[str, Any], starts: list[str], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """A sweep with no end line, from the records written between its start and the next sweep's."""
    since = str(start["started_at"])
    until = next((s for s in starts if s > since), None)
    written = [
        r
        for r in records
        if since <= str(r.get("written_at", "")) and (until is None or str(r["written_at"]) < until)
    ]
    last = max((str(r["written_at"]) for r in written), default=since)
    seconds = (datetime.strptime(last, UTC_FORMAT) - datetime.strptime(since, UTC_FORMAT)).total_seconds()
    counts = {k: sum(r.get("status") == k for r in written) for k in ("done", "skipped", "failed")}
    return {**{k: v for k, v in start.items() if k != "state"}, **counts, "seconds": seconds, "ended": False}


class ResultStore:
    """Reads and writes the per-cell records of a results directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def record_path(self, cell_id: str) -> Path:
        """Path of a cell's record."""
        return self.cells_dir / f"{cell_id}.json"

    def run_dir(self, name: str) -> Path:
        """Run directory of a training (``Cell.run_name``: shared by cells that train the same)."""
        return self.root / "runs" / name

    def read(self, cell_id: str) -> dict[str, Any] | None:
        """The record of a cell, or None if absent (an unreadable record counts as absent)."""
        path = self.record_path(cell_id)
        if not path.is_file():
            return None
        rec = read_record(path)
        return None if isinstance(rec, str) else rec

    def is_finished(self, cell_id: str, fingerprint: str) -> bool:
        """True if the cell has a ``done``/``skipped`` record made with the same fingerprint."""
        rec = self.read(cell_id)
        return rec is not None and rec.get("status") in FINISHED and rec.get("fingerprint") == fingerprint

    def write(self, record: dict[str, Any]) -> Path:
        """Write a record atomically (a reader never sees half a file)."""
        if "id" not in record or "status" not in record:
            raise ValueError("a record needs 'id' and 'status'")
        record = {**record, "written_at": utc_timestamp()}
        path = self.record_path(record["id"])
        write_json(path, record)
        return path

    def start_attempt(self, cell_id: str) -> int:
        """Note that an attempt of the cell starts; return its number (1 for the first)."""
        path = self.root / "attempts" / cell_id
        _append_line(path, f"{time.time():.3f} pid={os.getpid()}")  # concurrent attempts lose no count
        return len(path.read_text().splitlines())

    def log_sweep(self, entry: dict[str, Any]) -> None:
        """Append one line to the store's sweep log (``sweeps.jsonl``)."""
        _append_line(self.root / SWEEPS, json.dumps(entry, sort_keys=True))

    def sweeps(self) -> list[dict[str, Any]]:
        """The sweeps that ran cells in this store, oldest first.

        A sweep whose end was never logged (killed with its machine, or still running) is measured from
        the records written after it started and before the next sweep started: its ``seconds`` run to
        the last of them (work in flight when it stopped is not counted) and it carries ``ended: False``.
        Stores written before the sweep log existed give their last sweep from ``summary.json``, when
        it ran cells; unreadable lines are left out.
        """
        path = self.root / SWEEPS
        if not path.is_file():
            try:
                last = json.loads((self.root / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                return []
            ran = sum(int(last.get(k, 0)) for k in ("done", "skipped", "failed"))
            return [last] if isinstance(last, dict) and ran else []
        entries = []
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        ends = [e for e in entries if e.get("state") != STARTED]
        ended = {e.get("started_at") for e in ends}
        unended = [e for e in entries if e.get("state") == STARTED and e.get("started_at") not in ended]
        if unended:
            starts = sorted(str(e.get("started_at")) for e in entries if e.get("started_at"))
            records = self.records()
            ends += [_measured_from_records(e, starts, records) for e in unended]
        return sorted(ends, key=lambda e: str(e.get("started_at") or ""))

    def fill_train_times(self) -> int:
        """Add the run's own training time to records written before they carried it; return how many.

        ``timings.train_run_s`` comes from the run's training log (see
        :func:`~mfdiffuser.algos.trainer.logged_train_seconds`), found at the record's ``run_dir`` or
        under this store's ``runs/``; records whose run is gone stay as they are.
        """
        from mfdiffuser.algos.trainer import METRICS, logged_train_seconds

        filled = 0
        for rec in self.records():
            timings = rec.get("timings") or {}
            if "train" not in rec or "total_s" not in timings or "train_run_s" in timings:
                continue
            run = Path(rec["train"].get("run_dir", ""))
            run = run if (run / METRICS).is_file() else self.root / "runs" / run.name
            if not (run / METRICS).is_file():
                continue
            rec["timings"] = {**timings, "train_run_s": logged_train_seconds(run)}
            write_json(self.record_path(rec["id"]), rec)  # keeps written_at: the cell did not rerun
            filled += 1
        return filled

    def scan(self, keys: tuple[str, ...] = RECORD_KEYS) -> RecordScan:
        """All readable records, sorted by cell id, and the files under ``cells/`` that are no record.

        Args:
            keys: keys a record must have with string values (see :func:`read_record`).
        """
        if not self.cells_dir.is_dir():
            return RecordScan([], [])
        records, unreadable = [], []
        for path in sorted(self.cells_dir.glob("*.json")):
            rec = read_record(path, keys)
            if isinstance(rec, str):
                unreadable.append(Unreadable(path, rec))
            else:
                records.append(rec)
        return RecordScan(records, unreadable)

    def records(self) -> list[dict[str, Any]]:
        """All readable records, sorted by cell id (see :meth:`scan` for the others)."""
        return self.scan().records
