"""The wheel holds every package and the benchmark scripts; the version has one source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mfdiffuser

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M)
    assert block is not None, "pyproject.toml lists no packages"
    return set(re.findall(r'"([\w.]+)"', block.group(1)))


def test_every_package_under_src_is_listed():
    found = {
        ".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")
    }
    assert found | {"mfdiffuser.benchmarks"} == _listed_packages()


def test_version_has_one_source():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mfdiffuser.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(mfdiffuser.__version__)}\]", changelog, re.M)
    assert f"version: {mfdiffuser.__version__}" in (ROOT / "CITATION.cff").read_text()


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel (no build isolation: setuptools of this venv) and unpacked."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist")],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp / "dist").glob("mfdiffuser-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"mfdiffuser-{mfdiffuser.__version__}.dist-info/METADATA" in names
    assert "mfdiffuser/benchmarks/bench_train.py" in names and "mfdiffuser/presets/demo.yaml" in names
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_bench_runs_from_the_installed_wheel(installed_wheel: Path, tmp_path: Path):
    """From a directory without benchmarks/, ``mfd bench`` finds the scripts inside the wheel."""
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    code = "import mfdiffuser, sys; print(mfdiffuser.__file__); sys.argv[0] = 'mfd'; "
    code += "from mfdiffuser.cli import main; sys.exit(main(['bench', '--list']))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0].startswith(str(installed_wheel))  # the wheel's copy, not the source tree
    assert {"envs", "battle", "data", "planner", "train"} <= set(lines[1:]) and "(missing)" not in proc.stdout
