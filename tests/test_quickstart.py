"""The README's Python API, as ``examples/quickstart.py`` runs it, and the lazy top-level names."""

from __future__ import annotations

import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import mfdiffuser

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"




def test_quickstart_runs_end_to_end(tmp_path, capsys, one_torch_thread):
    main = runpy.run_path(str(EXAMPLE))["main"]
    result = main(tmp_path)
    out = capsys.readouterr().out
    assert "acted for 10,000 agents" in out
    assert set(result["results"]) == {"100", "10000"}
    for metrics in result["results"].values():
        assert metrics["status"] == "done" and math.isfinite(metrics["score"]["mean"])
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_api_names_resolve_to_the_library_functions():
    from mfdiffuser.algos.run import load_run, make_policy, train
    from mfdiffuser.data import load_dataset
    from mfdiffuser.envs import make
    from mfdiffuser.eval.evaluate import evaluate_run

    assert mfdiffuser.make is make and mfdiffuser.load_dataset is load_dataset
    assert mfdiffuser.train is train and mfdiffuser.load_run is load_run
    assert mfdiffuser.make_policy is make_policy and mfdiffuser.evaluate is evaluate_run
    assert set(mfdiffuser.__all__) <= set(dir(mfdiffuser))
    with pytest.raises(AttributeError):
        mfdiffuser.no_such_name  # noqa: B018


def test_import_stays_cheap():
    """``import mfdiffuser`` loads neither torch nor the envs (the API is imported on first use)."""
    code = "import sys, mfdiffuser; print([m for m in ('torch', 'mfdiffuser.envs') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
