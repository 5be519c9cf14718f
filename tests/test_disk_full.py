"""A dataset write that the file system refuses (disk full, file too large) is a one-line error."""

from __future__ import annotations

import errno
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
