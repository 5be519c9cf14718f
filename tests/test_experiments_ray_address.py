"""``mfd sweep --address``: ``auto`` only joins this user's cluster, and a silent cluster is given up on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grid_specs import TINY_GRID
from mfdiffuser import raycluster as runner
from mfdiffuser.cli import main
from mfdiffuser.errors import MfdError
from mfdiffuser.watchdog import descendants, is_running

pytest.importorskip("ray")

@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(TINY_GRID))
    return path


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No RAY_ADDRESS, and Ray's record of the current cluster points into an empty directory."""
    record = tmp_path / "ray" / "ray_current_cluster"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runner, "_ray_address_file", lambda: record)
    return record


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_auto_without_a_cluster_fails_at_once(spec, no_cluster, tmp_path, capsys):
    t0 = time.perf_counter()
    code = main(["sweep", str(spec), "--results", str(tmp_path / "res"), "--address", "auto"])
    assert code == 2
    line = _one_error_line(capsys)
    assert line.startswith("mfd sweep: error: --address auto: no Ray cluster of this user's is running")
    assert str(no_cluster) in line
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "res").exists(), "nothing is written before the cluster is found"


def test_auto_with_an_empty_record(spec, no_cluster, tmp_path, capsys):
    no_cluster.parent.mkdir()
    no_cluster.write_text("\n")
    assert main(["sweep", str(spec), "--results", str(tmp_path / "res"), "--address", "auto"]) == 2
    assert "names no Ray cluster" in _one_error_line(capsys)


@pytest.mark.skipif(os.getuid() != 0, reason="giving the record to another user needs root")
def test_auto_ignores_another_users_cluster(spec, no_cluster, tmp_path, capsys):
    no_cluster.parent.mkdir()
    no_cluster.write_text("127.0.0.1:6379\n")
    os.chown(no_cluster, 54321, 54321)
    assert main(["sweep", str(spec), "--results", str(tmp_path / "res"), "--address", "auto"]) == 2
    assert "is another user's" in _one_error_line(capsys)


def test_auto_reads_ray_address_then_this_users_record(no_cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert runner.resolve_ray_address("auto") == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    no_cluster.parent.mkdir()
    no_cluster.write_text("10.0.0.2:6380\n")
    assert runner.resolve_ray_address("auto") == "10.0.0.2:6380"
    assert runner.resolve_ray_address("10.0.0.3:1") == "10.0.0.3:1"
    no_cluster.unlink()
    with pytest.raises(MfdError, match="no Ray cluster"):
        runner.resolve_ray_address("auto")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_connect_timeout(value, spec, tmp_path, capsys):
    argv = ["sweep", str(spec), "--results", str(tmp_path / "r"), "--address", "auto"]
    argv += ["--connect-timeout", value]
    assert main(argv) == 2
    assert "--connect-timeout" in _one_error_line(capsys)


@pytest.mark.parametrize("value", ["-1", "20"])
def test_bad_nice(value, spec, tmp_path, capsys):
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r"), "--nice", value, "--dry-run"]) == 2
    assert _one_error_line(capsys) == f"mfd sweep: error: --nice must be in 0-19, got {value}"
    assert not (tmp_path / "r").exists()


def test_a_cluster_that_never_answers_is_given_up_on(spec, tmp_path):
    """An address that accepts connections but never answers (a stopped GCS): one line, in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nothing ever reads or writes
        port = silent.getsockname()[1]
        env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "mfdiffuser.cli", "sweep", str(spec), "--results", str(tmp_path / "res"),
             "--address", "auto", "--connect-timeout", "3", "--no-progress"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
        seconds = time.perf_counter() - t0
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    cause = f"cannot join the Ray cluster at '127.0.0.1:{port}': no answer within 3 s"
    assert err == [f"mfd sweep: error: {cause}"], proc.stderr  # none of Ray's own log lines above it
    assert seconds < 60


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and parent-death signals")
def test_local_ray_dies_with_its_driver():
    """kill -9 of a driver that started a local Ray: every Ray process is gone within 15 seconds."""
    code = (
        "import ray, time\n"
        "from mfdiffuser.raycluster import init_ray\n"
        "init_ray(None, 1)\n"
        "print(ray.get(ray.remote(lambda: 1).remote()), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"1"
        assert descendants(proc.pid)
        time.sleep(1.5)  # the watchdog notes the workers twice a second
        kids = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(is_running(k) for k in kids):
            time.sleep(0.2)
        assert not [k for k in kids if is_running(k)]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_local_ray_that_does_not_start_is_one_line(spec, tmp_path, monkeypatch, capsys):
    import ray

    def no_node(*args, **kwargs):  # what Ray raises when its node does not come up in time
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", no_node)
    code = main(["sweep", str(spec), "--results", str(tmp_path / "res"), "--num-cpus", "1"])
    assert code != 0
    line = _one_error_line(capsys)
    assert line.startswith("mfd sweep: error: cannot start a local Ray: The current node timed out")
    assert "start it at normal priority, `mfd sweep --nice` lowers only the cells'" in line
