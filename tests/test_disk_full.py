"""A dataset write that the file system refuses (disk full, file too large) is a one-line error."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from mfdiffuser.cli import main
from mfdiffuser.data.dataset import hdf5_write_error

GENERATE = ["data", "generate", "--env", "gaussian-squeeze", "--n-agents", "100", "--quality", "medium",
            "--episodes", "4", "--workers", "1", "--quiet", "--ref-episodes", "1", "--out", "o.h5"]


def test_generate_onto_a_full_disk_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys):
    """h5py reports a failed write as a RuntimeError naming the errno (as on a full tmpfs)."""

    def full(self, key, value):
        raise RuntimeError("Can't write data (file write failed: time = x, filename = 'o.h5', "
                           "file descriptor = 3, errno = 28, error message = 'No space left on device')")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    assert main(GENERATE) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["mfd data generate: error: o.h5: No space left on device"]
    # no dataset and no temporary file; the finished episodes stay in o.h5.partial for a rerun
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5.partial"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(GENERATE) == 0 and (tmp_path / "o.h5").is_file()


def test_hdf5_write_error_takes_the_errno_of_the_message():
    exc = RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = 'x')")
    err = hdf5_write_error(exc, "d.h5")
    assert err is not None
    assert (err.errno, err.strerror, err.filename) == (errno.ENOSPC, "No space left on device", "d.h5")
    assert hdf5_write_error(RuntimeError("power cut"), "d.h5") is None  # not a failed write: raised as is


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- real refusals, in a child process: a file size limit (RLIMIT_FSIZE) and a tiny tmpfs --------
GENERATE_8 = GENERATE[:9] + ["8"] + GENERATE[10:]
"""Eight episodes: a dataset file above the 20 kB limit below."""
TRAIN = ["train", "--algo", "bc", "--dataset", "{gs}", "--steps", "2", "--batch-size", "4", "--no-progress",
         "--set", "hidden=16", "--out", "r"]
REPORT = ["report", "{store}", "--out", "rep"]
EVALUATE = ["evaluate", "--behaviour", "random", "--env", "gs-100", "--episodes", "1", "--seeds", "1",
            "--ref-episodes", "1", "--no-progress", "--out", "r.json"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results store with one behaviour cell (no training)."""
    from grid_specs import TINY_GRID, with_changes
    from mfdiffuser.experiments.cell import run_cell
    from mfdiffuser.experiments.grid import parse_grid

    root = tmp_path_factory.mktemp("store") / "results"
    for cell in parse_grid(with_changes(TINY_GRID, methods={"random": {"behaviour": "random"}})).cells:
        run_cell(cell, None, root)
    return root


def _mfd(argv: list[str], cwd: Path, limit: int | None = None, prefix: tuple[str, ...] = ()):
    import resource

    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [*prefix, sys.executable, "-m", "mfdiffuser.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, preexec_fn=limited,
                          env=env)


def _one_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # never a death by signal (HDF5 at exit)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("argv", "limit", "pattern", "left"),
    [
        # the finished episodes stay in o.h5.partial: rerunning the command resumes from them
        (GENERATE_8, 20_000, r"mfd data generate: error: o\.h5: File too large",
         ["o.h5.partial"]),
        (TRAIN, 3_000, r"mfd train: error: r/checkpoint\.pt: File too large", []),
        (REPORT, 100, r"mfd report: error: rep/\w+\.png: File too large", []),
        (EVALUATE, 10, r"mfd evaluate: error: r\.json: File too large", []),
    ],
    ids=["generate", "train", "report", "evaluate"],
)
def test_file_size_limit(argv, limit, pattern, left, gs_dataset, store, tmp_path):
    argv = [a.format(gs=gs_dataset, store=store) for a in argv]
    _one_line(_mfd(argv, tmp_path, limit), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == left


def test_failed_train_keeps_a_run_dir_that_existed(gs_dataset, tmp_path):
    (tmp_path / "r").mkdir()
    proc = _mfd([a.format(gs=gs_dataset) for a in TRAIN], tmp_path, 3_000)
    _one_line(proc, r"mfd train: error: r/checkpoint\.pt: File too large")
    assert (tmp_path / "r").is_dir() and not (tmp_path / "r" / "checkpoint.pt").exists()
    assert not list((tmp_path / "r").glob(".*.tmp")), "no temporary file left"


def _tiny_tmpfs_prefix(tmp_path: Path) -> tuple[str, ...]:
    """``unshare`` + ``mount`` of a 16 KiB tmpfs at ``tmp_path/tiny`` in a private mount namespace."""
    import shutil

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs unshare and root")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    script = 'mount -t tmpfs -o size=16k tmpfs "$0" && cd "$0" && "$@"; rc=$?; echo "LEFT:$(ls -A)"; exit $rc'
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(tiny),
                            "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(tiny))


@pytest.mark.slow  # the file size limit above covers the same paths in the default suite
@pytest.mark.parametrize(
    ("argv", "pattern", "left"),
    [
        (GENERATE_8, r"mfd data generate: error: o\.h5\.partial/ep-\d+-\d+\.npz: No space left on device",
         "o.h5.partial"),
        (TRAIN, r"mfd train: error: r/(checkpoint\.pt|metrics\.jsonl): No space left on device", ""),
        (REPORT, r"mfd report: error: rep/\w+\.png: No space left on device", ""),
    ],
    ids=["generate", "train", "report"],
)
def test_full_tmpfs(argv, pattern, left, gs_dataset, store, tmp_path):
    prefix = _tiny_tmpfs_prefix(tmp_path)
    proc = _mfd([a.format(gs=gs_dataset, store=store) for a in argv], tmp_path, prefix=prefix)
    _one_line(proc, pattern)
    assert proc.stdout.strip().splitlines()[-1] == f"LEFT:{left}"
