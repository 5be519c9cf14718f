"""Baselines end to end on generated gaussian-squeeze data (N = 100, T = 1): train, save, load, act."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.algos.run import load_run, make_policy, train
from mfdiffuser.algos.trainer import TrainerConfig
from mfdiffuser.data import GenerateConfig, generate_dataset, load_dataset
from mfdiffuser.envs import make
from mfdiffuser.eval.rollout import run_episode
from test_baselines import one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs")
    out = {}
    for quality in ("expert", "mixed"):
        path = root / f"gs-{quality}.h5"
        generate_dataset(
            GenerateConfig(
                env="gaussian-squeeze",
                out=str(path),
                env_args={"n_agents": 100},
                quality=quality,
                episodes=200,
                workers=1,
                progress=False,
            )
        )
        out[quality] = path
    return out


def score(run_dir, n_agents=100, episodes=10, **policy_options) -> float:
    """Normalized score of a saved run, loaded from disk, over ``episodes`` evaluation episodes."""
    run = load_run(run_dir)
    env = make("gaussian-squeeze", n_agents=n_agents)
    policy = make_policy(run, env, **policy_options)
    ret = np.mean([run_episode(env, policy, seed=0, episode=e).mean_return for e in range(episodes)])
    return float(run.meta.normalized_score(ret)) if n_agents == run.meta.n_agents else float(ret)


def fit(algo, dataset, tmp_path, steps=300, **options):
    trainer = TrainerConfig(steps=steps, batch_size=32, lr=1e-3, progress=False, checkpoint_every=10**6)
    train(algo, dataset, tmp_path / algo, {"horizon": 1, **options}, trainer)
    return tmp_path / algo


def test_bc_reaches_expert_on_expert_data_at_any_n(datasets, tmp_path):
    run_dir = fit("bc", datasets["expert"], tmp_path)
    assert score(run_dir) > 90
    env = make("gaussian-squeeze", n_agents=1000)
    assert score(run_dir, n_agents=1000, episodes=3) > 0.9 * env.optimal_return()


def test_rwbc_beats_bc_on_mixed_data(datasets, tmp_path):
    bc_score = score(fit("bc", datasets["mixed"], tmp_path))
    rw_score = score(fit("rwbc", datasets["mixed"], tmp_path, beta=3.0))
    assert bc_score < 20 and rw_score > bc_score + 50


def test_return_statistics_are_buffers_of_the_run(datasets, tmp_path):
    run_dir = fit("rwbc", datasets["mixed"], tmp_path, steps=5)
    learner = load_run(run_dir).learner
    returns = load_dataset(datasets["mixed"]).episode_returns
    # half random (~0), half expert episodes: the standardiser saw a spread of about half the expert return
    assert float(learner.returns.std) == pytest.approx(returns.std(), rel=0.25)
    assert float(learner.returns.mean) == pytest.approx(returns.mean(), rel=0.25)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algo", "options"),
    [("awbc", {"beta": 3.0}), ("mf-iql", {}), ("mf-cql", {}), ("dd-independent", {}), ("madiff", {})],
)
def test_value_methods_beat_bc_on_mixed_data(datasets, tmp_path, algo, options):
    steps = 1000 if algo in ("dd-independent", "madiff") else 600
    assert score(fit(algo, datasets["mixed"], tmp_path, steps=steps, **options)) > 50
