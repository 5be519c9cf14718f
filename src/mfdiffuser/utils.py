"""Small shared helpers: seeding, devices, atomic writes, fingerprints, child processes, threads."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Format of :func:`utc_timestamp` (``datetime.strptime`` reads a stamp back with it)."""


def utc_timestamp() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the stamp records and datasets carry)."""
    return time.strftime(UTC_FORMAT, time.gmtime())


SEED_LIMIT = 2**64
"""Seeds are integers in ``[0, SEED_LIMIT)``: torch's generators take 64-bit seeds."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global state and torch's global generator.

    Called before anything random is built (a network's initial weights, a cell's rollouts), so
    that nothing depends on what ran earlier in the process (e.g. a Ray worker's previous cells).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def check_device(device: str) -> None:
    """Raise ValueError for a device name torch does not know or this machine does not have."""
    if device == "auto":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:i]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use auto, cpu or cuda[:i]")


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto"`` to ``"cuda"`` when available, else ``"cpu"``; pass other names through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill inside the block never leaves a file at ``path`` that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:  # a failed write names the file the caller asked for, not the temporary one
        if exc.filename in (None, str(tmp_path)) and exc.filename2 is None:
            exc.filename = str(path)  # None: a write() on the open file (disk full) names no file
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` to the file at ``path``; a failed write (disk full) names the file."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def check_not_dangling(path: str | os.PathLike[str], what: str = "--out") -> None:
    """Refuse an output ``path`` that is a symbolic link to nothing.

    Every command refuses it the same way: writing would replace the link with a file (the rename
    of an atomic write) or fail to create a directory there, neither of which a link asks for.

    Raises:
        ValueError: naming the link and its missing target.
    """
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(
            f"{what} {os.fspath(path)} is a symbolic link that leads nowhere (to {os.readlink(path)!r}); "
            f"create its target or choose another {what}"
        )


def check_dir_target(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a directory ``path`` that can never be one: a file, a dangling link, or under a file.

    A missing directory is fine (it is created with its parents when something is written).

    Raises:
        ValueError: naming ``what`` (e.g. ``--results``) and the path at fault.
    """
    check_not_dangling(path, what)
    for candidate in [Path(path), *Path(path).parents]:
        if candidate.exists():
            if not candidate.is_dir():
                at = "" if candidate == Path(path) else f" ({candidate} is a file)"
                raise ValueError(f"{what} {os.fspath(path)} is not a directory{at}")
            return


def outermost_missing(path: str | os.PathLike[str]) -> Path | None:
    """The outermost directory that creating ``path`` with its parents would make; None if it exists.

    A dangling symbolic link counts as existing (it is not ours to remove).
    """
    missing = None
    for candidate in [Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents]:
        if os.path.lexists(candidate):
            break
        missing = candidate
    return missing


@contextlib.contextmanager
def removed_on_failure(
    directory: str | os.PathLike[str],
    *,
    keep: Callable[[], bool] = lambda: False,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> Iterator[None]:
    """Run a block that creates ``directory``; if it raises one of ``errors``, remove what it created.

    Only directories that did not exist when the block started are removed (``directory`` and any
    missing parents): an existing directory and everything in it stay. ``keep()`` is asked after the
    failure: True keeps the new directory too (it holds something worth resuming from).
    """
    created = outermost_missing(directory)
    try:
        yield
    except errors:
        if created is not None and not keep():
            shutil.rmtree(created, ignore_errors=True)
        raise


def save_figure(fig: object, path: str | os.PathLike[str], **savefig_kwargs: object) -> Path:
    """Save a Matplotlib figure as a PNG at ``path``, written atomically; return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)  # type: ignore[attr-defined]
    return Path(path)


def plain(obj: Any) -> Any:
    """``obj`` with dataclass instances turned into dicts and tuples into lists (JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj`` (keys sorted, dataclasses as dicts)."""
    text = json.dumps(plain(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """Make this (child) process get SIGKILL when its parent dies, even by ``kill -9``.

    Uses Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), then checks that the parent is
    still ``parent_pid``: a parent that died before the call would otherwise leave this process
    orphaned for good. Used as the initializer of worker processes, so that a killed command leaves
    no worker behind. Elsewhere than Linux nothing is set and False is returned.

    Args:
        parent_pid: ``os.getpid()`` of the parent, taken before it started this process.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    return True


MAX_THREADS_PER_CPU = 16
"""``--threads`` above this many per CPU of the machine is refused as a mistake."""

THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that fix the thread count, in the order they are read."""


class ThreadChoice(NamedTuple):
    """How many threads torch's CPU kernels use, and why."""

    threads: int
    reason: str
    """E.g. ``"--threads"``, ``"OMP_NUM_THREADS=1"``, ``"2 usable cores, load 1.0 of 2 CPUs"``."""

    def describe(self) -> str:
        """``"torch threads: 1 (OMP_NUM_THREADS=1)"``."""
        return f"torch threads: {self.threads} ({self.reason})"


def choose_threads(
    requested: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    usable_cores: int | None = None,
    load: float | None = None,
    machine_cpus: int | None = None,
) -> ThreadChoice:
    """Choose the thread count of a torch run on purpose, rather than torch's "all cores".

    In order: ``requested`` (``--threads``); else ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` when set
    to a positive integer; else the cores this process may run on (``os.sched_getaffinity``) times
    the share of the machine that is idle (1-minute load average over its CPU count), rounded, at
    least 1. On a 2-core machine with one core busy that is 1 thread: several threads on a loaded
    machine wait on each other (a measured 19x slower training).

    Args:
        requested: an explicit count (>= 1, at most :data:`MAX_THREADS_PER_CPU` per CPU).
        environ: environment to read (default ``os.environ``).
        usable_cores: cores allowed to this process (default: its CPU affinity).
        load: machine load (default: ``os.getloadavg()[0]``).
        machine_cpus: CPUs the load average is spread over (default ``os.cpu_count()``).

    Raises:
        ValueError: ``requested`` is below 1 or far above the machine's CPUs.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        cpus = max(machine_cpus or os.cpu_count() or 1, 1)
        if requested > MAX_THREADS_PER_CPU * cpus:
            # torch would try to start them all (a billion threads never finishes starting)
            raise ValueError(
                f"--threads {requested} is more than {MAX_THREADS_PER_CPU} per CPU of this machine "
                f"({cpus} CPUs)"
            )
        return ThreadChoice(int(requested), "--threads")
    env = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        raw = env.get(name, "").strip()
        if raw.isdigit() and int(raw) >= 1:
            return ThreadChoice(int(raw), f"{name}={int(raw)}")
    if usable_cores is None:
        try:
            usable_cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            usable_cores = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - no load average here
            load = 0.0
    cpus = max(machine_cpus or os.cpu_count() or usable_cores, 1)
    idle = min(max(1.0 - load / cpus, 0.0), 1.0)
    threads = max(1, min(usable_cores, round(usable_cores * idle)))
    return ThreadChoice(threads, f"{usable_cores} usable cores, load {load:.1f} of {cpus} CPUs")


def set_threads(requested: int | None = None) -> ThreadChoice:
    """Choose (see :func:`choose_threads`) and apply torch's thread count; return the choice."""
    choice = choose_threads(requested)
    import torch

    torch.set_num_threads(choice.threads)
    return choice


MAX_NICE = 19
"""The lowest CPU priority (highest niceness) on Linux and macOS."""


def check_nice(nice: int | None) -> None:
    """Raise ValueError unless ``nice`` is None or a niceness in 0-:data:`MAX_NICE`."""
    if nice is not None and not 0 <= nice <= MAX_NICE:
        raise ValueError(f"--nice must be in 0-{MAX_NICE}, got {nice}")


def lower_priority(nice: int | None) -> None:
    """Raise the niceness of this process's threads to ``nice`` (0-19) where below; never lower it.

    Raising the niceness needs no privileges, so this does not fail where lowering would. On Linux
    the niceness belongs to each thread (``setpriority`` on the process changes only the calling
    one), so every thread running now is set, and the threads they start later inherit it.
    ``None``, or a platform without ``os.setpriority``, leaves the priority alone.
    """
    if nice is None or not hasattr(os, "setpriority"):
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the niceness is the process's
        threads = [0]
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended since
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
