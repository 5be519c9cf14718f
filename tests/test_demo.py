import os
import subprocess
import sys

import pytest

from mfdiffuser.commands.demo import preset_path
from mfdiffuser.experiments.grid import parse_grid


def test_packaged_demo_preset_parses_and_covers_the_pipeline():
    grid = parse_grid(preset_path("demo"))
    methods = {c.method for c in grid.cells}
    assert "mf-diffuser" in methods and len(methods - {"mf-diffuser"}) >= 2  # two baselines
    ns = {p.n_agents for c in grid.cells for p in c.eval_points}
    assert {100, 10000} <= ns
    assert all(c.dataset is not None for c in grid.cells)


def test_demo_rejects_a_missing_preset(tmp_path, capsys):
    from mfdiffuser.cli import main

    assert main(["demo", "--preset", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


TINY_DEMO = """
name: tiny-demo
seeds: [0]
data: {episodes: 2, ref_episodes: 2}
eval: {episodes: 1}
trainer: {steps: 5}
benchmarks:
  gs:
    env: gaussian-squeeze
    train: 100
    eval: [100]
    qualities: [medium]
methods:
  bc: {algo: bc, options: {hidden: 16}}
  expert: {behaviour: expert}
"""


@pytest.mark.slow
def test_demo_prints_its_progress_line_by_line_when_piped(tmp_path):
    """``mfd demo`` with its output to a pipe: stage lines and grid progress lines (Ray, about 30 s)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_DEMO)
    proc = subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", "demo", "--preset", str(spec), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("demo: 1/2 running the grid tiny.yaml")
    assert any(ln.startswith("grid tiny-demo: 0/2 (0%)") for ln in lines)
    assert any(ln.startswith("grid tiny-demo: 2/2 (100%), done 2 skipped 0 failed 0") for ln in lines)
    assert any(ln.startswith("demo: 2/2 building the report") for ln in lines)
    assert "\x1b[" not in proc.stdout  # no terminal control sequences in piped output
