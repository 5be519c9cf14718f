import dataclasses
import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mfdiffuser.cli import main
from mfdiffuser.data import DatasetError, DatasetMeta, load_dataset
from mfdiffuser.data.dataset import SCHEMA_VERSION, EpisodeRecord, write_dataset
from mfdiffuser.errors import MfdError
from mfdiffuser.integrity import HEADER_SIZE, seal_file

T, K, N = 4, 3, 6


def records(n_episodes=5, nan=False):
    rng = np.random.default_rng(0)
    out = []
    for e in range(n_episodes):
        n = T if e % 2 == 0 else 2
        states = rng.normal(size=(T + 1, K, 2)).astype(np.float32)
        states[n + 1 :] = states[n]
        rewards = np.zeros((T, K), np.float32)
        rewards[:n] = rng.normal(size=(n, K))
        if nan and e == 3:
            rewards[1, 2] = np.nan
        actions = np.zeros((T, K), np.uint8)
        actions[:n] = rng.integers(0, 4, size=(n, K))
        alive = np.zeros((T + 1, K), bool)
        alive[: n + 1] = True
        pop = np.zeros(T)
        pop[:n] = rng.normal(size=n)
        summ = rng.random((T + 1, 3)).astype(np.float32)
        out.append(EpisodeRecord(
            states=states, actions=actions, rewards=rewards, alive=alive, summaries=summ, pop_reward=pop,
            length=n, terminated=n < T, truncated=n == T, quality="random" if e % 2 else "expert",
            env_seed=2**63 + e, policy_seed=e, agent_index=np.array([0, 3, 5], np.int32),
        ))
    return out


def meta(n_episodes=5):
    return DatasetMeta(
        env="gaussian-squeeze", env_args={"n_agents": N, "horizon": T}, n_agents=N, quality="mixed",
        horizon=T, state_size=2, n_actions=4, summary_size=3, n_episodes=n_episodes, stored_agents=K,
        ref_returns={"random": -1.0, "expert": 1.0}, ref_episodes=2, seed=3,
        behaviour_policy={"random": "R", "expert": "E"},
    )


def write(path, recs=None, **kw):
    recs = recs or records()
    write_dataset(path, meta(len(recs)), (r.arrays() for r in recs), **kw)
    return recs


def test_round_trip(tmp_path):
    recs = write(tmp_path / "d.h5")
    for in_memory in (True, False):
        with load_dataset(tmp_path / "d.h5", in_memory=in_memory) as ds:
            assert ds.in_memory == in_memory
            m = ds.meta
            assert (m.env, m.n_agents, m.stored_agents, m.horizon) == ("gaussian-squeeze", N, K, T)
            assert m.n_episodes == 5
            assert m.ref_returns == {"random": -1.0, "expert": 1.0} and m.seed == 3 and m.checksum
            assert DatasetMeta.from_dict(json.loads(json.dumps(m.to_dict()))) == m
            for e, rec in enumerate(recs):
                ep = ds.episode(e)
                n = rec.length
                assert ep.length == n and ep.quality == rec.quality
                assert ep.env_seed == 2**63 + e and ep.policy_seed == e
                np.testing.assert_array_equal(ep.states, rec.states[: n + 1])
                np.testing.assert_array_equal(ep.actions, rec.actions[:n])
                np.testing.assert_array_equal(ep.rewards, rec.rewards[:n])
                np.testing.assert_array_equal(ep.alive, rec.alive[: n + 1])
                np.testing.assert_array_equal(ep.summaries, rec.summaries[: n + 1])
                np.testing.assert_array_equal(ep.pop_reward, rec.pop_reward[:n])
                np.testing.assert_array_equal(ep.agent_index, [0, 3, 5])
                assert ep.terminated == (n < T) and ep.truncated == (n == T)
                assert ds.episode_returns[e] == pytest.approx(rec.pop_reward.sum())
            by_q = ds.returns_by_quality()
            assert set(by_q) == {"random", "expert"} and by_q["random"].size == 2
            assert ds.normalized_score(0.0) == pytest.approx(50.0)
            assert ds.normalized_score(1.0) == pytest.approx(100.0)


def test_normalized_score_refuses_references_without_a_scale():
    flipped = dataclasses.replace(meta(), ref_returns={"random": 1.0, "expert": -1.0})
    with pytest.raises(DatasetError, match="do not define a scale: the expert reference return"):
        flipped.normalized_score(0.0)
    assert meta().normalized_score(np.array([-1.0, 1.0])) == pytest.approx([0.0, 100.0])


def test_make_env_rebuilds_with_overrides(tmp_path):
    write(tmp_path / "d.h5")
    ds = load_dataset(tmp_path / "d.h5")
    env = ds.make_env()
    assert env.n_agents == N and env.horizon == T
    assert ds.make_env(n_agents=50).n_agents == 50


def _corrupt_chunk_byte(path, name="states"):
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))


def _reseal(path):
    """Write a new file digest over a tampered file, so that the checks behind the digest are reached."""
    with pytest.raises(DatasetError, match="digest mismatch"):
        load_dataset(path)  # the digest alone refuses the file
    seal_file(path, "dataset")


def test_file_digest_header(tmp_path):
    write(tmp_path / "d.h5")
    data = (tmp_path / "d.h5").read_bytes()
    head = data[:HEADER_SIZE].rstrip(b"\0").decode()
    lines = head.splitlines()
    assert lines[0] == "mfdiffuser dataset 1"
    assert lines[1] == "sha256 " + hashlib.sha256(data[HEADER_SIZE:]).hexdigest()
    assert lines[2] == f"bytes {len(data) - HEADER_SIZE}"
    with load_dataset(tmp_path / "d.h5") as ds:
        assert ds.verified and ds.file_digest == lines[1].split()[1]
    with load_dataset(tmp_path / "d.h5", verify=False) as ds:  # read, not checked
        assert not ds.verified and ds.file_digest == lines[1].split()[1]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (0, "neither an HDF5 file nor one with a digest header"),  # the header's first byte
        (12, "header is damaged"),  # its first line
        (HEADER_SIZE - 1, "header is damaged"),  # its NUL padding
        (HEADER_SIZE, "digest mismatch"),  # the HDF5 superblock signature
        (HEADER_SIZE + 40, "digest mismatch"),  # superblock addresses
        (-1, "digest mismatch"),  # the last byte
    ],
)
def test_any_flipped_byte_is_refused_before_hdf5(tmp_path, where, message):
    write(tmp_path / "d.h5")
    data = bytearray((tmp_path / "d.h5").read_bytes())
    data[where] ^= 0x01
    (tmp_path / "d.h5").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "d.h5")


def test_length_and_digest_fields_are_checked(tmp_path):
    write(tmp_path / "d.h5")
    path = tmp_path / "d.h5"
    data = path.read_bytes()
    path.write_bytes(data + b"\0")
    with pytest.raises(DatasetError, match="truncated or extended"):
        load_dataset(path)
    path.write_bytes(data[:HEADER_SIZE - 7])
    with pytest.raises(DatasetError, match="too short"):
        load_dataset(path)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="0 bytes, too short"):
        load_dataset(path)


def _without_digest(src_path, dst_path):
    """The dataset as written before file digests: the same HDF5 content without the user block."""
    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        for key, value in src.attrs.items():
            dst.attrs[key] = value


def test_dataset_without_digest(tmp_path, capsys):
    write(tmp_path / "d.h5")
    _without_digest(tmp_path / "d.h5", tmp_path / "old.h5")
    assert (tmp_path / "old.h5").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    with pytest.raises(DatasetError, match="has no file digest.*--no-verify"):
        load_dataset(tmp_path / "old.h5")
    with load_dataset(tmp_path / "old.h5", verify=False) as ds:
        assert ds.file_digest is None and ds.meta.n_episodes == 5
    assert main(["data", "info", "--no-verify", str(tmp_path / "old.h5")]) == 0
    assert "none (written before datasets carried one)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["states", "actions", "pop_reward", "agent_index"])
def test_one_corrupted_byte(tmp_path, name):
    write(tmp_path / "d.h5")
    _corrupt_chunk_byte(tmp_path / "d.h5", name)
    _reseal(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match=f"'{name}'"):  # behind the digest, fletcher32 names the array
        load_dataset(tmp_path / "d.h5")


def test_corrupted_byte_uncompressed_caught_by_checksum(tmp_path):
    # without compression, fletcher32 still guards the chunk; either way a clear error
    write(tmp_path / "d.h5", compression=None)
    _corrupt_chunk_byte(tmp_path / "d.h5", "rewards")
    _reseal(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match="rewards"):
        load_dataset(tmp_path / "d.h5")


def test_checksum_detects_a_rewritten_value(tmp_path):
    write(tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5", "a") as f:  # a valid HDF5 write that bypasses the format
        f["rewards"][0, 0, 0] += 1.0
    _reseal(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match="checksum mismatch in array 'rewards'"):
        load_dataset(tmp_path / "d.h5")
    load_dataset(tmp_path / "d.h5", verify=False)  # opt-out of the full pass still opens it


def test_truncated_file(tmp_path):
    write(tmp_path / "d.h5")
    data = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "d.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or extended"):
        load_dataset(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match="truncated or corrupted"):  # unchecked, HDF5 refuses it
        load_dataset(tmp_path / "d.h5", verify=False)


def test_wrong_schema_version(tmp_path):
    write(tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    _reseal(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match=f"schema version {SCHEMA_VERSION + 1} is not supported"):
        load_dataset(tmp_path / "d.h5")


def test_nan_rejected(tmp_path):
    write(tmp_path / "d.h5", records(nan=True))
    with pytest.raises(DatasetError, match="'rewards' holds NaN or inf \\(episode 3\\)"):
        load_dataset(tmp_path / "d.h5")


def test_wrong_shape_and_missing_array(tmp_path):
    write(tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5", "a") as f:
        m = json.loads(f.attrs["meta"])
        m["stored_agents"] = K + 1
        f.attrs["meta"] = json.dumps(m)
    _reseal(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match="'states' has shape"):
        load_dataset(tmp_path / "d.h5")
    write(tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5", "a") as f:
        del f["alive"]
    _reseal(tmp_path / "e.h5")
    with pytest.raises(DatasetError, match="'alive' is missing"):
        load_dataset(tmp_path / "e.h5")


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        load_dataset(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="has no file digest"):
        load_dataset(tmp_path / "other.h5")
    with pytest.raises(DatasetError, match="not an mfdiffuser dataset"):
        load_dataset(tmp_path / "other.h5", verify=False)
    (tmp_path / "text.h5").write_text("x" * 1000)
    with pytest.raises(DatasetError, match="not an mfdiffuser dataset: neither an HDF5 file"):
        load_dataset(tmp_path / "text.h5")
    (tmp_path / "run.h5.partial").mkdir()
    (tmp_path / "run.h5.partial" / "manifest.json").write_text("{}")
    with pytest.raises(DatasetError, match="unfinished generation"):
        load_dataset(tmp_path / "run.h5.partial")
    assert issubclass(DatasetError, MfdError)


@pytest.mark.parametrize("damage", ["byte", "truncate", "version"])
def test_cli_info_one_line_error(tmp_path, damage):
    path = tmp_path / "d.h5"
    write(path)
    if damage == "byte":
        _corrupt_chunk_byte(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        with h5py.File(path, "a") as f:
            f.attrs["schema_version"] = 99
    proc = subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", "data", "info", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfd data") and "error:" in lines[0]


def test_cli_info_prints_metadata_and_returns(tmp_path, capsys):
    write(tmp_path / "d.h5")
    assert main(["data", "info", str(tmp_path / "d.h5")]) == 0
    out = capsys.readouterr().out
    for text in ("gaussian-squeeze", "mixed", "expert", "random", "verified", "uncompressed"):
        assert text in out


def test_train_refuses_a_dataset_without_digest_unless_told(tmp_path, capsys):
    from mfdiffuser.data import GenerateConfig, generate_dataset

    generate_dataset(GenerateConfig(env="gaussian-squeeze", out=str(tmp_path / "d.h5"),
                                    env_args={"n_agents": 6}, quality="random", episodes=2, ref_episodes=1,
                                    progress=False))
    _without_digest(tmp_path / "d.h5", tmp_path / "old.h5")
    argv = ["train", "--algo", "bc", "--dataset", str(tmp_path / "old.h5"), "--out", str(tmp_path / "run"),
            "--steps", "1", "--batch-size", "2", "--no-progress", "--set", "hidden=8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no file digest" in err[0] and "--no-verify" in err[0]
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--no-verify"]) == 0
