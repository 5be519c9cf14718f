"""Small shared helpers: seeding, device selection, atomic file writes, child processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Format of :func:`utc_timestamp` (``datetime.strptime`` reads a stamp back with it)."""


def utc_timestamp() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the stamp records and datasets carry)."""
    return time.strftime(UTC_FORMAT, time.gmtime())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global state and torch. Called once, by the CLI only."""
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
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_figure(fig: object, path: str | os.PathLike[str], **savefig_kwargs: object) -> Path:
    """Save a Matplotlib figure as a PNG at ``path``, written atomically; return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)  # type: ignore[attr-defined]
    return Path(path)


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
