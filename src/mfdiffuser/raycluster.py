"""Starting or joining Ray for the grid runner and dataset generation.

A local Ray by default (no dashboard, a watchdog that ends its processes with ours); ``--address``
joins a cluster, and ``auto`` only one of this user's. Joining fails with one line rather than hang.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from mfdiffuser.errors import MfdError, first_line


def check_ray_address(address: str, what: str = "--address") -> str:
    """Return ``address`` if it has a form Ray can join: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.

    HOST is a name or an IPv4 address, or an IPv6 address in brackets (``[::1]:6379``); PORT lies in
    1..65535. Checked before Ray sees it: Ray logs its own complaints about a malformed address to
    the terminal before it fails.

    Raises:
        MfdError: naming ``what`` and the address.
    """
    import re

    if address == "auto":
        return address
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    plain = re.fullmatch(r"[A-Za-z0-9_.-]+", host) is not None
    bracketed = re.fullmatch(r"\[[0-9A-Fa-f:.]+\]", host) is not None
    if not sep or not (plain or bracketed) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise MfdError(
            f"{what} {address!r} is not a Ray address: give auto or HOST:PORT (a port in 1..65535, "
            "an IPv6 host in brackets)"
        )
    return address


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with one line if a ``host:port`` (or ``ray://host:port``) address does not answer.

    Ray itself retries an unreachable address for minutes before it gives up; ``auto`` and other
    forms are left to Ray.
    """
    import socket

    from mfdiffuser.errors import MfdError

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        msg = f"cannot join the Ray cluster at {address!r}: nothing answers there ({reason})"
        raise MfdError(msg) from exc


RAY_CONNECT_TIMEOUT_S = 30.0
"""How long joining a Ray cluster may take before the command gives up with one line."""


def _ray_address_file() -> Path:
    """Ray's record of the cluster last started with ``ray start`` on this machine."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        import tempfile

        return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def resolve_ray_address(address: str) -> str:
    """The ``host:port`` that ``--address`` names; ``auto`` must find a cluster of this user's.

    ``auto`` means ``RAY_ADDRESS`` when it is set, else the cluster recorded by ``ray start`` in Ray's
    temporary directory, and only when that record belongs to the user running this command. Ray's own
    ``auto`` also attaches to any Ray process it finds on the machine (another user's included);
    this does not.

    Raises:
        MfdError: ``auto`` finds no cluster of this user's.
    """
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    record = _ray_address_file()
    hint = "start one with `ray start --head` or pass --address HOST:PORT"
    try:
        st = record.stat()
        text = record.read_text().strip() if st.st_uid == os.getuid() else ""
    except OSError:
        msg = f"--address auto: no Ray cluster of this user's is running (no {record}); {hint}"
        raise MfdError(msg) from None
    if st.st_uid != os.getuid():
        raise MfdError(f"--address auto: the Ray cluster recorded in {record} is another user's; {hint}")
    if not text:
        raise MfdError(f"--address auto: {record} names no Ray cluster; {hint}")
    return text


def check_cluster(address: str) -> str:
    """The ``host:port`` of ``--address``, checked before anything is written.

    It must be well formed and something must answer there (``auto`` is resolved as
    :func:`resolve_ray_address` does).

    Raises:
        MfdError: a malformed address, no cluster of this user's for ``auto``, or nothing answering.
    """
    target = resolve_ray_address(check_ray_address(address))
    if target != address:
        check_ray_address(target, "the Ray cluster recorded for auto,")
    _check_reachable(target)
    return target


_abandoned: list[Any] = []
"""Join attempts given up on that may still be running (their threads cannot be stopped)."""


def join_abandoned() -> bool:
    """Whether a join attempt given up on is still running in this process.

    Such a process must end with ``os._exit``: while the interpreter shuts down, Ray's C++ threads
    of the hanging attempt can abort the process (``std::bad_alloc``) after its error was printed.
    """
    return any(t.is_alive() for t in _abandoned)


def _join_ray(ray: Any, address: str, kwargs: dict[str, Any], timeout: float) -> None:
    """``ray.init(address=...)``, giving up after ``timeout`` seconds (Ray itself waits for minutes).

    The attempt runs in a daemon thread: one that hangs (an address that accepts connections but
    never answers) does not keep the command from exiting with its error.
    """
    import threading

    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            ray.init(address=address, **kwargs)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, name="ray-join", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _abandoned.append(thread)
        raise MfdError(f"cannot join the Ray cluster at {address!r}: no answer within {timeout:g} s")
    exc = outcome["error"]
    if exc is None:
        return
    if isinstance(exc, (ConnectionError, RuntimeError, ValueError, TimeoutError)):
        raise MfdError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)}") from exc
    raise exc


_watchdogs: list[Any] = []


def _start_watchdog() -> None:
    """Start :mod:`mfdiffuser.watchdog` on this process: it kills our descendants once we are gone.

    Ray's GCS server and raylet die with the driver (parent-death signal), but its workers and agents
    only notice that the raylet is gone after tens of seconds.
    """
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdiffuser.watchdog", str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _watchdogs.append(proc)  # its pipe must stay open as long as this process lives


def init_ray(
    address: str | None, num_cpus: int | None = None, *, timeout: float = RAY_CONNECT_TIMEOUT_S
) -> bool:
    """Start or join Ray; return True if this call started it (and must shut it down).

    ``address`` is None for a local Ray (``num_cpus`` CPUs, default all), or a cluster to join
    (``auto`` as :func:`resolve_ray_address` reads it, ``host:port``); joining fails with one line
    when nothing answers at once, or the cluster does not answer within ``timeout`` seconds.

    A local Ray shares the fate of this process: Ray starts its GCS server and raylet with Linux's
    parent-death signal, and its workers and agents exit once the raylet is gone, which they take
    tens of seconds to notice; a watchdog (:func:`_start_watchdog`) ends them within about a second
    of a ``kill -9``.
    """
    from mfdiffuser.errors import require

    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    # Ray's own log lines (its start, token notices, worker warnings) stay in its session logs: on
    # the terminal they would come before, or instead of, the command's one-line messages.
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    if address is not None:
        target = check_cluster(address)
        _join_ray(ray, target, kwargs, timeout)
    else:
        try:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its node does not start
            with contextlib.suppress(Exception):
                ray.shutdown()
            hint = (
                " (Ray gives its node 30 s: a busy machine, or a command started under `nice`, can "
                "miss that; start it at normal priority, `mfd sweep --nice` lowers only the cells')"
                if "timed out during startup" in str(exc)
                else ""
            )
            raise MfdError(f"cannot start a local Ray: {first_line(exc)}{hint}") from exc
        _start_watchdog()
    return True
