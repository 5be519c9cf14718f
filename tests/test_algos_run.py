"""``train()`` from Python: the same seed gives the same weights, whatever ran before it."""

import pytest
import torch

from mfdiffuser.algos.run import train
from mfdiffuser.algos.trainer import TrainerConfig
from mfdiffuser.data.generate import GenerateConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "gs.h5"
    cfg = GenerateConfig(
        env="gaussian-squeeze", out=str(out), env_args={"n_agents": 20}, episodes=4, ref_episodes=1,
        progress=False,
    )
    generate_dataset(cfg)
    return out


OPTIONS = {"bc": {}, "mf-diffuser": {"horizon": 1, "stats_batches": 1}}


@pytest.mark.parametrize("algo", sorted(OPTIONS))
def test_train_is_reproducible_from_its_seed(algo, dataset, tmp_path):
    def weights(seed, name, disturb):
        torch.manual_seed(disturb)  # the global generator's state before the call must not matter
        trainer = TrainerConfig(steps=2, batch_size=4, seed=seed, progress=False, log_every=1)
        run = train(algo, dataset, tmp_path / name, dict(OPTIONS[algo]), trainer)
        return {k: v.clone() for k, v in run.learner.state_dict().items()}

    first, again, other = weights(0, "a", 1), weights(0, "b", 2), weights(1, "c", 1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
