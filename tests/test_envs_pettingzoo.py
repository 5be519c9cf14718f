import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mfdiffuser.envs import list_envs, make

pytest.importorskip("pettingzoo")
from pettingzoo.test import parallel_api_test  # noqa: E402

from mfdiffuser.envs.pettingzoo import PopulationParallelEnv, parallel_env  # noqa: E402

_BATTLE_MODULE = Path(__file__).resolve().parents[1] / "src" / "mfdiffuser" / "envs" / "battle.py"
_HAS_BATTLE = _BATTLE_MODULE.exists() and importlib.util.find_spec("magent2") is not None
_SMALL = {"gaussian-squeeze": {"n_agents": 5}, "ising": {"n_agents": 9}, "crowd": {"n_agents": 7},
          "crowd-2d": {"n_agents": 6}, "battle": {"n_agents": 9, "map_size": 24, "horizon": 30}}  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.skipif(n == "battle" and not _HAS_BATTLE, reason="no battle"))
     for n in list_envs()],
)  # fmt: skip
def test_parallel_api_test_passes(name):
    parallel_api_test(parallel_env(name, **_SMALL[name]), num_cycles=100)


def test_dicts_match_the_batched_env():
    wrapped = parallel_env("crowd", n_agents=6, horizon=3)
    batched = make("crowd", n_agents=6, horizon=3)
    obs_d, infos = wrapped.reset(seed=4)
    obs_b, _ = batched.reset(seed=4)
    assert wrapped.agents == [f"agent_{i}" for i in range(6)] and infos["agent_0"] == {"t": 0}
    assert np.array_equal(np.stack([obs_d[a] for a in wrapped.agents]), obs_b)
    actions = np.array([0, 1, 2, 2, 1, 0])
    for _ in range(3):
        obs_d, rew_d, term_d, trunc_d, _ = wrapped.step({f"agent_{i}": int(a) for i, a in enumerate(actions)})
        obs_b, rew_b, term, trunc, _ = batched.step(actions)
        assert np.allclose([rew_d[f"agent_{i}"] for i in range(6)], rew_b)
        assert np.array_equal(np.stack([obs_d[f"agent_{i}"] for i in range(6)]), obs_b)
        assert all(v == term for v in term_d.values()) and all(v == trunc for v in trunc_d.values())
    assert wrapped.agents == [] and np.array_equal(wrapped.state(), batched.summary())


def test_bad_action_dicts():
    env = PopulationParallelEnv(make("ising", n_agents=9))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="no action"):
        env.step({"agent_0": 1})
    with pytest.raises(ValueError, match="not live"):
        env.step({**{f"agent_{i}": 0 for i in range(9)}, "agent_99": 0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        env.step({f"agent_{i}": 2 for i in range(9)})
