"""Datasets of observations that end in an image view store the view as bytes, apart from the features."""

import h5py
import numpy as np
import pytest

from mfdiffuser.data import WindowSampler, load_dataset
from mfdiffuser.data.dataset import CHECKSUM_ALGORITHM, DatasetError, join_views, split_views
from mfdiffuser.data.generate import GenerateConfig, generate_dataset


def test_split_and_join_views_by_hand():
    states = np.array([[0.25, -3.0, 0.0, 0.5, 1.0, 0.83]], dtype=np.float32)
    features, views = split_views(states, 4)
    assert features.tolist() == [[0.25, -3.0]]  # features keep any value, untouched
    assert views.dtype == np.uint8 and views.tolist() == [[0, 128, 255, 212]]
    back = join_views(features, views)
    assert back.dtype == np.float32
    assert np.allclose(back, [[0.25, -3.0, 0.0, 128 / 255, 1.0, 212 / 255]])
    assert np.abs(back - states).max() <= 0.5 / 255 + 1e-7
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        split_views(np.array([[0.0, 1.5]], dtype=np.float32), 1)


@pytest.fixture(scope="module")
def view_data(tmp_path_factory):
    pytest.importorskip("magent2")
    path = tmp_path_factory.mktemp("views") / "v.h5"
    generate_dataset(
        GenerateConfig(
            env="battle",
            env_args={"n_agents": 16, "map_size": 24, "horizon": 12, "obs_mode": "view"},
            out=str(path),
            quality="expert",
            episodes=3,
            seed=5,
            ref_episodes=1,
            progress=False,
        )
    )
    return path


def test_view_datasets_store_bytes_and_load_full_states(view_data):
    with h5py.File(view_data, "r") as f:
        assert f["views"].dtype == np.uint8 and f["views"].shape[-1] == 13 * 13 * 5
        assert f["views"].attrs[CHECKSUM_ALGORITHM]  # in the file's checksum like every array
        assert f["states"].shape[-1] == 34 and f["states"].dtype == np.float32
    ds = load_dataset(view_data)
    assert ds.meta.view_size == 845 and ds.meta.state_size == 34 + 845
    env = ds.make_env()
    for e in range(ds.n_episodes):
        ep = ds.episode(e)
        assert ep.states.shape[-1] == 34 + 845
        obs, _ = env.reset(seed=ep.env_seed)
        for t in range(ep.length + 1):
            np.testing.assert_array_equal(obs[:, :34], ep.states[t, :, :34])  # features exact
            assert np.abs(obs[:, 34:] - ep.states[t, :, 34:]).max() <= 0.5 / 255 + 1e-7  # views to a byte
            if t < ep.length:
                obs, *_ = env.step(ep.actions[t])
    lazy = load_dataset(view_data, in_memory=False)
    assert np.array_equal(lazy.read_block(0, 3)["states"], ds.read_block(0, 3)["states"])
    batch = WindowSampler(ds, horizon=2, batch_size=4, m_range=(4, 8), seed=0).sample()
    assert batch.states.shape[-1] == 34 + 845


def test_a_changed_view_byte_fails_the_checksum(view_data, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(view_data.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["views"][0, 0, 0, 0] = 255 - f["views"][0, 0, 0, 0]
    with pytest.raises(DatasetError):
        load_dataset(bad)
