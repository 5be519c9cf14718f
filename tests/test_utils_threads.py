"""Thread count chosen on purpose: --threads, then OMP/MKL_NUM_THREADS, then the idle share of the cores."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mfdiffuser.cli import main
from mfdiffuser.utils import ThreadChoice, choose_threads


def test_requested_wins_over_everything():
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, "--threads")


@pytest.mark.parametrize("bad", [0, -2])
def test_requested_below_one(bad):
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        choose_threads(bad)


def test_requested_far_above_the_machine_is_refused():
    assert choose_threads(32, machine_cpus=2) == ThreadChoice(32, "--threads")
    with pytest.raises(ValueError, match="more than 16 per CPU of this machine"):
        choose_threads(33, machine_cpus=2)
    with pytest.raises(ValueError, match="more than 16 per CPU"):
        choose_threads(10**9)


def test_environment_variables_in_order():
    assert choose_threads(environ={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "5"}) == ThreadChoice(
        2, "OMP_NUM_THREADS=2"
    )
    assert choose_threads(environ={"MKL_NUM_THREADS": "5"}) == ThreadChoice(5, "MKL_NUM_THREADS=5")
    # unusable values are ignored, not trusted
    got = choose_threads(environ={"OMP_NUM_THREADS": "0", "MKL_NUM_THREADS": "x"}, usable_cores=4, load=0.0,
                         machine_cpus=4)
    assert got.threads == 4


@pytest.mark.parametrize(
    ("cores", "load", "cpus", "threads"),
    [
        (2, 0.0, 2, 2),  # idle 2-core machine: both cores
        (2, 1.0, 2, 1),  # one core busy: 2 * (1 - 1/2) = 1
        (2, 5.0, 2, 1),  # overloaded: at least 1
        (8, 2.0, 8, 6),  # 8 * (1 - 2/8) = 6
        (2, 16.0, 64, 2),  # a 2-core slice of a 64-CPU host at load 16: 2 * 0.75 = 1.5 -> 2
        (4, 3.0, 4, 1),  # 4 * 0.25 = 1
    ],
)
def test_idle_share_of_usable_cores(cores, load, cpus, threads):
    got = choose_threads(environ={}, usable_cores=cores, load=load, machine_cpus=cpus)
    assert got.threads == threads
    assert got.reason == f"{cores} usable cores, load {load:.1f} of {cpus} CPUs"


def test_commands_say_what_they_chose(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["evaluate", "--behaviour", "random", "--env", "gaussian-squeeze", "--n-agents", "50",
            "--episodes", "1", "--seeds", "1", "--ref-episodes", "1", "--no-progress"]
    assert main(argv) == 0
    assert "torch threads: 1 (OMP_NUM_THREADS=1)" in capsys.readouterr().out
    assert main([*argv, "--threads", "2"]) == 0
    assert "torch threads: 2 (--threads)" in capsys.readouterr().out
    import torch

    torch.set_num_threads(1)


_NICE_SCRIPT = """
import os, threading
from mfdiffuser.utils import lower_priority
started, stop = threading.Event(), threading.Event()
ids = []
def run():
    ids.append(threading.get_native_id())
    started.set()
    stop.wait()
thread = threading.Thread(target=run)
thread.start()
started.wait()
base = os.getpriority(os.PRIO_PROCESS, 0)
lower_priority(base + 2)
after = [os.getpriority(os.PRIO_PROCESS, tid) for tid in (0, ids[0])]
lower_priority(base + 1)  # never lowered again
again = os.getpriority(os.PRIO_PROCESS, 0)
stop.set()
thread.join()
print(base, after, again)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lower_priority_reaches_every_thread_and_never_lowers():
    out = subprocess.run([sys.executable, "-c", _NICE_SCRIPT], capture_output=True, text=True, check=True)
    base, *rest = out.stdout.split(maxsplit=1)
    if int(base) > 17:
        pytest.skip("the test process already runs at a niceness above 17")
    assert rest[0].strip() == f"[{int(base) + 2}, {int(base) + 2}] {int(base) + 2}"
