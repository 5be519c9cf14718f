import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mfdiffuser.envs import list_envs, list_settings, make
from mfdiffuser.envs.checker import EnvCheckError, check_env
from mfdiffuser.envs.crowd import Crowd
from mfdiffuser.envs.ising import Ising

_BATTLE_MODULE = Path(__file__).resolve().parents[1] / "src" / "mfdiffuser" / "envs" / "battle.py"
_HAS_BATTLE = _BATTLE_MODULE.exists() and importlib.util.find_spec("magent2") is not None
# Small populations keep the whole file fast; battle checks a short horizon.
_SMALL = {"gaussian-squeeze": {"n_agents": 50}, "ising": {"n_agents": 49}, "crowd": {"n_agents": 60},
          "crowd-2d": {"n_agents": 60}, "battle": {"n_agents": 16, "map_size": 24, "horizon": 6}}  # fmt: skip


def _envs():
    return [pytest.param(n, marks=pytest.mark.skipif(n == "battle" and not _HAS_BATTLE, reason="no battle"))
            for n in list_envs()]  # fmt: skip


def _settings():
    out = []
    for name, spec in list_settings().items():
        marks = [pytest.mark.skipif(spec["env"] == "battle" and not _HAS_BATTLE, reason="no battle")]
        if spec.get("n_agents", 0) > 10_000:  # the 10^5 and 10^6 settings: seconds each
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, marks=marks))
    return out


@pytest.mark.parametrize("name", _envs())
def test_check_env_passes_for_every_env(name):
    report = check_env(make(name, **_SMALL[name]))
    assert {"spaces", "episode", "bad actions raise ValueError"} <= set(report.checked)
    if name in ("ising", "crowd", "crowd-2d", "gaussian-squeeze"):
        assert any(c.startswith("permutation equivariance") for c in report.checked)
    if name == "ising":
        assert "permutation equivariance (full episode)" in report.checked


@pytest.mark.parametrize("setting", _settings())
def test_check_env_passes_for_every_setting(setting):
    extra = {"horizon": 4} if list_settings()[setting]["env"] == "battle" else {}
    check_env(make(setting, **extra), check_policies=False)


# ---------------------------------------------------------------- the checker can fail
class _NoisyReset(Crowd):
    def _reset(self, options):
        self.np_random = np.random.default_rng()  # ignores the seed
        return super()._reset(options)


class _WrongDtype(Ising):
    def _step(self, actions):
        obs, reward, term, extra = super()._step(actions)
        return obs.astype(np.float64), reward, term, extra


class _FavouredAgent(Ising):
    """Agent 0 gets a bonus: rewards no longer commute with lattice symmetries."""

    def _step(self, actions):
        obs, reward, term, extra = super()._step(actions)
        reward[0] += 1.0
        return obs, reward, term, extra


class _AcceptsAnything(Ising):
    def validate_actions(self, actions):
        return np.clip(np.asarray(actions), 0, 1).astype(np.int64).reshape(-1)[: self.n_agents]


class _NeverEnds(Ising):
    def step(self, actions):
        obs, reward, term, trunc, info = super().step(actions)
        self._needs_reset = False
        return obs, reward, False, False, info


@pytest.mark.parametrize(
    "env,match",
    [
        (_NoisyReset(n_agents=20), "same seed"),
        (_WrongDtype(n_agents=9), "dtype"),
        (_FavouredAgent(n_agents=9), "permut"),
        (_AcceptsAnything(n_agents=9), "ValueError"),
        (_NeverEnds(n_agents=9, horizon=3), "did not end"),
    ],
)
def test_checker_catches_broken_envs(env, match):
    with pytest.raises(EnvCheckError, match=match):
        check_env(env, rebuild=lambda cfg: type(env)(**cfg), check_policies=False)
