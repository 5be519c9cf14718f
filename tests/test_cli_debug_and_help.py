"""``MFD_DEBUG`` switches, and the examples that ``--help`` texts give work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfdiffuser.cli import debug_enabled, main
from mfdiffuser.commands.bench import find_dir
from mfdiffuser.errors import MfdError


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), (" Yes ", True),
     ("0", False), ("", False), ("false", False), ("no", False), ("off", False), ("2", False)],
)
def test_debug_values(value, on, monkeypatch):
    monkeypatch.setenv("MFD_DEBUG", value)
    assert debug_enabled() is on


def test_debug_unset_is_off(monkeypatch):
    monkeypatch.delenv("MFD_DEBUG", raising=False)
    assert not debug_enabled()


def test_debug_zero_gives_the_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MFD_DEBUG", "0")
    assert main(["data", "info", str(tmp_path / "missing.h5")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_debug_one_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("MFD_DEBUG", "1")
    with pytest.raises((OSError, MfdError)):
        main(["data", "info", str(tmp_path / "missing.h5")])


def test_bench_help_example_names_an_option_the_script_has(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    examples = re.findall(r"mfd bench (\w+) -- (--[\w-]+)", text)
    assert examples, text
    bench_dir = find_dir(None)
    for name, option in examples:
        script = bench_dir / f"bench_{name}.py"
        proc = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert option in proc.stdout, f"{Path(script).name} has no {option}"
