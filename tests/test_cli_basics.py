import subprocess
import sys

from mfdiffuser.cli import main


def test_envs_lists_registered(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "gaussian-squeeze" in out and "ising-32x32" in out


def test_unknown_command_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "mfdiffuser.cli", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
