"""Learning on battle data: a policy of the observation can win what the expert wins."""

import numpy as np
import pytest
import torch

pytest.importorskip("magent2")

from mfdiffuser.algos.run import make_policy, train  # noqa: E402
from mfdiffuser.algos.trainer import TrainerConfig  # noqa: E402
from mfdiffuser.data.generate import GenerateConfig, generate_dataset  # noqa: E402
from mfdiffuser.envs import make  # noqa: E402
from mfdiffuser.splits import data_seed, episode_seeds  # noqa: E402


@pytest.mark.slow
def test_bc_on_expert_data_wins_at_64(tmp_path):
    """Cloning 60 expert episodes at 64 per side wins at least 8 of 10 battles against attack-nearest."""
    torch.set_num_threads(1)
    data = tmp_path / "expert.h5"
    generate_dataset(
        GenerateConfig(
            env="battle-64",
            out=str(data),
            quality="expert",
            episodes=60,
            seed=data_seed("validation", 7),
            split="validation",
            ref_episodes=2,
            progress=False,
        )
    )
    run = train("bc", data, tmp_path / "bc", trainer=TrainerConfig(steps=3000, seed=0, progress=False))
    env = make("battle-64", opponent="attack-nearest")
    policy = make_policy(run, env)
    wins = 0
    for i, seed in enumerate(episode_seeds("validation", 10)):
        obs, info = env.reset(seed=seed)
        policy.reset(env, np.random.default_rng(i))
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy.act(obs, info))
            done = term or trunc
        wins += bool(info["win"])
    assert wins >= 8, f"won {wins} of 10"
