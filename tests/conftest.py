"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gs_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline dataset: gaussian-squeeze, N = 100, 4 medium episodes (about a second)."""
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    out = tmp_path_factory.mktemp("gs_dataset") / "gs.h5"
    generate_dataset(
        GenerateConfig(
            env="gaussian-squeeze",
            out=str(out),
            env_args={"n_agents": 100},
            quality="medium",
            episodes=4,
            ref_episodes=2,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def battle_view_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny battle dataset in the view mode: 16 per side on a 24 x 24 map, 3 expert episodes of 12 steps."""
    pytest.importorskip("magent2")
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    out = tmp_path_factory.mktemp("views") / "v.h5"
    generate_dataset(
        GenerateConfig(
            env="battle",
            env_args={"n_agents": 16, "map_size": 24, "horizon": 12, "obs_mode": "view"},
            out=str(out),
            quality="expert",
            episodes=3,
            seed=5,
            ref_episodes=1,
            progress=False,
        )
    )
    return out
