import shlex
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["sweep", "grid.yaml"],
         "mfd sweep: interrupted (finished cells are kept); resume with the same command: "),
        (["data", "generate", "--env", "crowd", "--quality", "medium", "--episodes", "2", "--out", "d.h5"],
         "mfd data generate: interrupted (finished episodes are kept in <out>.partial); resume with the "
         "same command: "),
        (["envs"], "mfd: interrupted"),
    ],
)
def test_interrupt_says_how_to_resume(argv, line, monkeypatch, capsys):
    import mfdiffuser.cli as cli

    parser = cli.build_parser()
    args = parser.parse_args(argv)

    def stop(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(args, "func", stop)
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mfd", *argv])
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1
    if "resume" in line:
        assert err.rstrip().endswith(shlex.join(["mfd", *argv]))


class _Fixed:
    """A parser stand-in returning already parsed arguments."""

    def __init__(self, args):
        self.args = args

    def parse_args(self, _argv):
        return self.args
