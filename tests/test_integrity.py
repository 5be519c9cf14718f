import pytest

from mfdiffuser.integrity import (
    HEADER_SIZE,
    IntegrityError,
    Seal,
    parse_header,
    read_seal,
    render_header,
    seal_file,
    sealed_bytes,
    unseal_bytes,
    verify_file,
)

ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc"), FIPS 180-2


def test_header_of_a_known_payload():
    data = sealed_bytes("checkpoint", b"abc")
    assert len(data) == HEADER_SIZE + 3 and data.endswith(b"abc")
    assert data[:HEADER_SIZE] == (b"mfdiffuser checkpoint 1\nsha256 " + ABC.encode() + b"\nbytes 3\n").ljust(
        HEADER_SIZE, b"\0"
    )
    assert parse_header(data[:HEADER_SIZE]) == Seal("checkpoint", ABC, 3)
    assert unseal_bytes(data, "x.pt", "checkpoint", "checkpoint", "retrain") == b"abc"


def test_every_header_byte_is_checked():
    # a flip anywhere in the header makes it unreadable, or makes it name another kind, digest or
    # length (which verification then refuses): never the same seal
    block = render_header("dataset", ABC, 3)
    assert parse_header(block) == Seal("dataset", ABC, 3)
    for i in range(HEADER_SIZE):
        for bit in (0x01, 0x80):
            damaged = bytearray(block)
            damaged[i] ^= bit
            assert parse_header(bytes(damaged)) != Seal("dataset", ABC, 3), i


def test_seal_file_and_verify(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * HEADER_SIZE + b"abc")
    assert seal_file(path, "dataset") == Seal("dataset", ABC, 3)
    assert read_seal(path) == Seal("dataset", ABC, 3)
    assert verify_file(path, "dataset", "dataset", "regenerate it") == Seal("dataset", ABC, 3)
    with pytest.raises(IntegrityError, match="an mfdiffuser dataset, not a checkpoint"):
        verify_file(path, "checkpoint", "checkpoint", "delete it")
    path.write_bytes(path.read_bytes()[:-1] + b"d")
    with pytest.raises(IntegrityError, match=r"f.bin: dataset digest mismatch .*; regenerate it$"):
        verify_file(path, "dataset", "dataset", "regenerate it")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match=r"truncated or extended \(4 bytes after .* covers 3\)"):
        verify_file(path, "dataset", "dataset", "regenerate it")
    path.write_bytes(b"")
    with pytest.raises(IntegrityError, match="0 bytes, too short to be a dataset"):
        verify_file(path, "dataset", "dataset", "regenerate it")
