"""Fuzz: one flipped byte anywhere in a dataset or a checkpoint is a clean one-line error.

A tiny dataset and a tiny run's checkpoint get one byte flipped at many seeded offsets (their
digest headers, the HDF5 superblock and metadata, the torch zip's records and central directory,
and spread over the rest), plus truncations. Each damaged file goes to ``mfd data info``,
``mfd train`` and ``mfd evaluate``: every case must exit 2 with exactly one line on stderr and no
traceback. The cases run inside one child process (so a crash in C code, e.g. a segfault in HDF5,
kills the child and fails the test instead of the test session), and a few also as separate
``python -m mfdiffuser.cli`` processes to check the real exit path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mfdiffuser.cli import main
from mfdiffuser.integrity import HEADER_SIZE

SEED = 20
TRAIN = ["--algo", "bc", "--steps", "2", "--batch-size", "4", "--no-progress", "--set", "hidden=8"]
EVALUATE = ["--n-agents", "8", "--episodes", "1", "--seeds", "1", "--ref-episodes", "1", "--no-progress"]

# Runs every case with the CLI's main in this child process; prints one JSON result per case.
_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback

    from mfdiffuser.cli import main

    results = []
    for argv in json.load(open(sys.argv[1])):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                code = "raised"
                err.write(traceback.format_exc())
        results.append({"argv": argv, "code": code, "stderr": err.getvalue()})
    json.dump(results, open(sys.argv[2], "w"))
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset and a tiny trained run."""
    root = tmp_path_factory.mktemp("fuzz")
    dataset = root / "gs.h5"
    assert main(["data", "generate", "--env", "gaussian-squeeze", "--n-agents", "8", "--quality", "mixed",
                 "--episodes", "3", "--ref-episodes", "1", "--workers", "1", "--quiet",
                 "--out", str(dataset)]) == 0
    run = root / "run"
    assert main(["train", "--dataset", str(dataset), "--out", str(run), *TRAIN]) == 0
    return {"root": root, "dataset": dataset, "run": run}


def _offsets(size: int, rng: np.random.Generator, regions: list[tuple[int, int, int]], spread: int
             ) -> list[int]:
    """``spread`` offsets over the whole file plus ``n`` in each ``(start, stop, n)`` region."""
    picks = [rng.integers(max(0, a), min(size, b), n) for a, b, n in regions]
    picks.append(rng.integers(0, size, spread))
    return sorted({int(o) for o in np.concatenate(picks)})


def _flipped(src: Path, dst: Path, offset: int, rng: np.random.Generator) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= int(rng.integers(1, 256))
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def cases(files: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` of every damaged-file case (the damaged files are written here)."""
    rng = np.random.default_rng(SEED)
    root, dataset, run = files["root"], files["dataset"], files["run"]
    cases: list[tuple[str, list[str]]] = []
    # datasets: the digest header, the HDF5 superblock and root group (metadata), the rest
    size = dataset.stat().st_size
    regions = [(0, HEADER_SIZE, 4), (HEADER_SIZE, HEADER_SIZE + 96, 8), (HEADER_SIZE + 96, 4096, 8)]
    damaged = []
    for offset in _offsets(size, rng, regions, spread=16):
        path = root / f"flip-{offset}.h5"
        _flipped(dataset, path, offset, rng)
        damaged.append((f"dataset byte {offset}", path))
    for cut in (0, 100, HEADER_SIZE + 8, size // 2, size - 1):
        path = root / f"cut-{cut}.h5"
        path.write_bytes(dataset.read_bytes()[:cut])
        damaged.append((f"dataset cut to {cut} bytes", path))
    for i, (label, path) in enumerate(damaged):
        cases.append((f"{label}: data info", ["data", "info", str(path)]))
        if i % 2 == 0:  # train reads datasets with the same loader: every other case is enough
            cases.append((f"{label}: train", ["train", "--dataset", str(path), "--out", str(root / "never"),
                                              *TRAIN]))
    # checkpoints: the header, the torch zip's first records, its central directory at the end, the rest
    ckpt = run / "checkpoint.pt"
    size = ckpt.stat().st_size
    regions = [(0, HEADER_SIZE, 4), (HEADER_SIZE, HEADER_SIZE + 200, 6), (size - 400, size, 8)]
    damaged = []
    for offset in _offsets(size, rng, regions, spread=14):
        damaged.append((f"checkpoint byte {offset}", f"flip-{offset}", offset))
    for cut in (0, HEADER_SIZE, size // 2, size - 1):
        damaged.append((f"checkpoint cut to {cut} bytes", f"cut-{cut}", -cut - 1))
    for i, (label, name, where) in enumerate(damaged):
        run_copy = root / f"run-{name}"
        shutil.copytree(run, run_copy)
        if where >= 0:
            _flipped(ckpt, run_copy / "checkpoint.pt", where, rng)
        else:
            (run_copy / "checkpoint.pt").write_bytes(ckpt.read_bytes()[: -where - 1])
        cases.append((f"{label}: train", ["train", "--dataset", str(files["dataset"]), "--out", str(run_copy),
                                          *TRAIN]))
        if i % 2 == 0:
            cases.append((f"{label}: evaluate", ["evaluate", "--run", str(run_copy), *EVALUATE]))
    return cases


def _check(label: str, code: object, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, f"{label}: exit {code}, stderr {stderr[-2000:]!r}"
    assert "Traceback" not in stderr, f"{label}: {stderr[-2000:]}"
    assert len(lines) == 1 and ": error: " in lines[0], f"{label}: {stderr!r}"


def test_every_damaged_file_is_a_one_line_error(files, cases, tmp_path):
    assert len(cases) >= 80
    (tmp_path / "cases.json").write_text(json.dumps([argv for _, argv in cases]))
    (tmp_path / "runner.py").write_text(_RUNNER)
    args = [str(tmp_path / name) for name in ("runner.py", "cases.json", "out.json")]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    # a negative code is death by a signal (a segfault in a parser would be -11)
    assert proc.returncode == 0, f"runner exit {proc.returncode}: {proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(cases)
    for (label, _), res in zip(cases, results, strict=True):
        _check(label, res["code"], res["stderr"])
    messages = " ".join(r["stderr"] for r in results)
    assert "digest mismatch" in messages and "truncated" in messages
    assert not (files["root"] / "never").exists()  # a refused dataset leaves no run behind


@pytest.mark.parametrize("which", range(4))
def test_damaged_files_through_the_real_exit_path(cases, which):
    """A few cases as their own ``python -m mfdiffuser.cli`` process: exit 2, not a signal."""
    info = [c for c in cases if c[1][0] == "data"]
    picks = [info[0], info[len(info) // 3], info[-1], [c for c in cases if c[1][0] == "train"][-1]]
    label, argv = picks[which]
    proc = subprocess.run([sys.executable, "-m", "mfdiffuser.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    _check(label, proc.returncode, proc.stderr)
