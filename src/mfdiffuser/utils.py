"""Small shared helpers: seeding, device selection, atomic file writes, content fingerprints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Format of :func:`utc_timestamp` (``datetime.strptime`` reads a stamp back with it)."""


def utc_timestamp() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the stamp records and datasets carry)."""
    return time.strftime(UTC_FORMAT, time.gmtime())


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
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
