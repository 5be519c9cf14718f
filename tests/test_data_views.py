"""Datasets of observations that end in an image view store the view as bytes, apart from the features."""

import h5py
import numpy as np
import pytest
import torch

from mfdiffuser.data import WindowSampler, load_dataset
from mfdiffuser.data.dataset import CHECKSUM_ALGORITHM, DatasetError, join_views, split_views


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


@pytest.fixture
def view_data(battle_view_dataset):
    return battle_view_dataset


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


def test_the_sampler_pool_keeps_views_as_bytes_and_decodes_each_batch(view_data):
    ds = load_dataset(view_data)
    sampler = WindowSampler(ds, horizon=2, batch_size=4, m_range=(16, 16), seed=0)
    assert sampler._views.dtype == np.uint8 and sampler._views.shape[-1] == 845
    assert sampler._states.shape[-1] == 34
    batch = sampler.sample()
    assert batch.states.dtype == torch.float32 and batch.states.shape[-1] == 34 + 845
    # every drawn window holds exactly the dataset's decoded states of some stored agent and step
    stored = ds.read_block(0, ds.n_episodes)["states"].reshape(-1, 34 + 845)
    drawn = batch.states.reshape(-1, 34 + 845).numpy()
    known = {row.tobytes() for row in stored}
    assert all(row.tobytes() in known for row in drawn)


def test_a_changed_view_byte_fails_the_checksum(view_data, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(view_data.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["views"][0, 0, 0, 0] = 255 - f["views"][0, 0, 0, 0]
    with pytest.raises(DatasetError):
        load_dataset(bad)
