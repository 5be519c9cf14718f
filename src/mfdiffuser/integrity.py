"""Whole-file digests checked before any parser (HDF5, torch) reads a file's bytes.

A sealed file starts with a fixed 512-byte header that records the sha256 and the length of every
byte after it; the header is not part of what it covers. Datasets keep their header in the HDF5
user block (HDF5 skips it, so the file stays readable by any HDF5 tool); checkpoints put it in front
of the bytes ``torch.save`` wrote. :func:`verify_file` streams the file once and raises
:class:`IntegrityError` on any difference, so a flipped byte is refused before it reaches C code.

Header layout (ASCII, NUL-padded to 512 bytes; any other byte in it counts as damage)::

    mfdiffuser <kind> 1
    sha256 <64 lowercase hex digits>
    bytes <length of the covered bytes, decimal>
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO, NamedTuple

from mfdiffuser.errors import MfdError

HEADER_SIZE = 512
"""Bytes reserved at the start of a sealed file (also the HDF5 user block size of datasets)."""
HEADER_VERSION = 1
"""Version of the header layout."""
_HEADER = re.compile(rb"mfdiffuser ([a-z]+) (\d+)\nsha256 ([0-9a-f]{64})\nbytes (\d{1,20})\n\x00*", re.DOTALL)
_BLOCK = 1 << 20


class IntegrityError(MfdError):
    """A file's bytes differ from the digest written with it, or its digest header is missing or damaged."""


class Seal(NamedTuple):
    """What a file's header says: its kind, the sha256 of the covered bytes and their length."""

    kind: str
    sha256: str
    size: int


def render_header(kind: str, sha256: str, size: int) -> bytes:
    """The 512-byte header of a file of ``kind`` whose covered bytes have this digest and length."""
    text = f"mfdiffuser {kind} {HEADER_VERSION}\nsha256 {sha256}\nbytes {size}\n".encode("ascii")
    if len(text) > HEADER_SIZE:  # pragma: no cover - kinds are short literals
        raise ValueError(f"file kind {kind!r} too long for the header")
    return text.ljust(HEADER_SIZE, b"\0")


def parse_header(block: bytes) -> Seal | None:
    """The seal recorded in the first :data:`HEADER_SIZE` bytes of a file, or None if they hold none.

    The block must be exactly the rendering of the seal it parses to, so a flipped byte anywhere in
    it (padding included) gives None.
    """
    m = _HEADER.fullmatch(block)
    if m is None or len(block) != HEADER_SIZE or int(m.group(2)) != HEADER_VERSION:
        return None
    seal = Seal(m.group(1).decode("ascii"), m.group(3).decode("ascii"), int(m.group(4)))
    return seal if render_header(*seal) == block else None


def read_seal(path: str | os.PathLike[str]) -> Seal | None:
    """The seal of the file at ``path`` without checking it (None when it has no valid header)."""
    with open(path, "rb") as fh:
        return parse_header(fh.read(HEADER_SIZE))


def seal_file(path: str | os.PathLike[str], kind: str) -> Seal:
    """Hash every byte of ``path`` after its first :data:`HEADER_SIZE` bytes and write the header there.

    The file must have been written with those bytes reserved (an HDF5 user block, or zeros).
    """
    with open(path, "r+b") as fh:
        fh.seek(HEADER_SIZE)
        sha, size = _hash_stream(fh)
        seal = Seal(kind, sha, size)
        fh.seek(0)
        fh.write(render_header(*seal))
    return seal


def sealed_bytes(kind: str, payload: bytes) -> bytes:
    """``payload`` preceded by its header: the whole content of a sealed file."""
    return render_header(kind, hashlib.sha256(payload).hexdigest(), len(payload)) + payload


def verify_file(path: str | os.PathLike[str], kind: str, what: str, recover: str) -> Seal:
    """Check the file at ``path`` against its header by streaming it once; return its seal.

    Args:
        path: the file.
        kind: the kind its header must name (``"dataset"``, ``"checkpoint"``).
        what: the file's name in messages (``"dataset"``, ``"checkpoint"``).
        recover: how to recover, appended to every message (``"regenerate it with ..."``).

    Raises:
        IntegrityError: the file is shorter than a header, its header is missing, damaged or of
            another kind, or its length or digest differs from the header's.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        seal = _checked_header(fh.read(HEADER_SIZE), path, kind, what, recover)
        sha, size = _hash_stream(fh)
    _compare(seal, sha, size, path, what, recover)
    return seal


def unseal_bytes(data: bytes, path: str | os.PathLike[str], kind: str, what: str, recover: str) -> bytes:
    """The covered bytes of a sealed file already read into memory, after checking them."""
    seal = _checked_header(data[:HEADER_SIZE], Path(path), kind, what, recover)
    payload = data[HEADER_SIZE:]
    _compare(seal, hashlib.sha256(payload).hexdigest(), len(payload), Path(path), what, recover)
    return payload


def _checked_header(block: bytes, path: Path, kind: str, what: str, recover: str) -> Seal:
    if len(block) < HEADER_SIZE:
        raise IntegrityError(f"{path}: {len(block)} bytes, too short to be a {what} (truncated?); {recover}")
    seal = parse_header(block)
    if seal is None:
        raise IntegrityError(
            f"{path}: not an mfdiffuser {what}, or its header is damaged (no valid digest in its first "
            f"{HEADER_SIZE} bytes); {recover}"
        )
    if seal.kind != kind:
        raise IntegrityError(f"{path}: an mfdiffuser {seal.kind}, not a {what}")
    return seal


def _compare(seal: Seal, sha: str, size: int, path: Path, what: str, recover: str) -> None:
    if size != seal.size:
        raise IntegrityError(
            f"{path}: {what} is truncated or extended ({size} bytes after the header, its digest covers "
            f"{seal.size}); {recover}"
        )
    if sha != seal.sha256:
        raise IntegrityError(
            f"{path}: {what} digest mismatch (its bytes changed since it was written: corrupted or "
            f"modified); {recover}"
        )


def _hash_stream(fh: BinaryIO) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    while block := fh.read(_BLOCK):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size
