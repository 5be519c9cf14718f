"""Scale: the planner's cost is flat in N, acting is O(N) with small constants, 10^6 agents run.

The fast tests check the complexity on a proxy (10^5 agents or fewer): the denoiser sees the same
particles at every N, the grouping and lifting allocate O(N) with a small constant, and no N x N array
appears. The slow tests play one evaluation episode at N = 10^6 of every scale env, and generate a
10^6-agent dataset that stores representatives only.
"""

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos import mf_planner
from mfdiffuser.diffusion import LevelSchedule, assign_blocks, representatives, state_order
from mfdiffuser.envs import list_settings, make
from mfdiffuser.eval import exploitability
from mfdiffuser.eval.rollout import rollout

ROOT = Path(__file__).resolve().parents[1]
TINY = {"horizon": 2, "hidden": 16, "n_blocks": 1, "value_hidden": 16, "levels": (8, 32),
        "steps_per_level": (2, 2), "diffusion_steps": 4}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _learner(env, **kw):
    torch.manual_seed(0)
    cfg = mfd.Config(**{**TINY, **kw})
    return mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval(), cfg


def _on_denoise(learner, record):
    """Call ``record(x)`` on the noisy sample of every denoising step of ``learner``'s planner."""
    denoise = learner.denoiser.denoise

    def spy(x, k, cond):
        record(x)
        return denoise(x, k, cond)

    learner.denoiser.denoise = spy


def _count_particles(learner):
    """Record the particle count M of every denoiser call."""
    seen: list[int] = []
    _on_denoise(learner, lambda x: seen.append(int(x.shape[1])))
    return seen


# ----------------------------------------------------------------------------- DDIM stride
def test_with_total_steps_shares_steps_by_hand():
    lv = LevelSchedule((128, 256, 1024), (12, 4, 4))
    assert lv.with_total_steps(20).steps == (12, 4, 4)
    assert lv.with_total_steps(10).steps == (6, 2, 2)
    assert lv.with_total_steps(8).steps == (5, 2, 1)  # 4.8/1.6/1.6: largest remainders first
    assert lv.with_total_steps(3).steps == (1, 1, 1)
    assert lv.with_total_steps(10).sizes == lv.sizes
    with pytest.raises(ValueError, match="3 levels need >= 3 steps"):
        lv.with_total_steps(2)


def test_sample_steps_is_a_stride_over_the_training_steps():
    env = make("crowd", n_agents=200)
    learner, cfg = _learner(env, diffusion_steps=20, steps_per_level=(12, 4))
    seen = _count_particles(learner)
    visited: list[int] = []
    step = learner.scheduler.ddim_step

    def spy(eps, k, k_prev, x, **kw):
        visited.append(k)
        return step(eps, k, k_prev, x, **kw)

    learner.scheduler.ddim_step = spy  # type: ignore[method-assign]
    policy = mfd.make_policy(learner, cfg, env, sample_steps=8)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    policy.act(obs, info)
    assert policy.levels_for(200).steps == (6, 2)
    assert seen == [8] * 6 + [32] * 2  # 8 denoiser calls, not 16
    assert visited == [19, 16, 14, 11, 8, 5, 3, 0]  # evenly spaced over K = 20, ending clean
    with pytest.raises(ValueError, match="sample_steps must lie in"):
        mfd.make_policy(learner, cfg, env, sample_steps=1)
    with pytest.raises(ValueError, match="sample_steps must lie in"):
        mfd.make_policy(learner, cfg, env, sample_steps=21)


def test_sample_steps_is_an_acting_option_not_part_of_the_weights():
    from mfdiffuser.algos.base import config_from_dict

    assert "sample_steps" in mfd.PLAN_OPTIONS  # changing it never orphans a trained model's weights
    cfg = config_from_dict(mfd.Config, {"sample_steps": 10})
    assert cfg.level_schedule.steps == (6, 2, 2)
    with pytest.raises(ValueError, match="sample_steps"):
        config_from_dict(mfd.Config, {"sample_steps": "ten"})


def test_default_schedule_unchanged_and_plans_in_inference_mode():
    assert mfd.Config().sample_steps is None
    assert mfd.Config().level_schedule == LevelSchedule((128, 256, 1024), (12, 4, 4))
    env = make("gaussian-squeeze", n_agents=100)
    learner, _ = _learner(env)
    modes: list[bool] = []
    _on_denoise(learner, lambda x: modes.append(torch.is_inference_mode_enabled()))
    obs, info = env.reset(seed=0)
    levels = learner.config.level_schedule
    mf_planner.sample_plan(learner, obs, info["summary"], 0, levels, np.random.default_rng(0))
    assert modes and all(modes)


# ------------------------------------------------------------------- complexity in N (proxy)
@pytest.mark.parametrize("name", ["gaussian-squeeze", "ising", "crowd"])
def test_plan_sees_the_same_particles_at_every_n(name):
    calls = {}
    for n in (1024, 102400 if name != "ising" else 101124):  # 318^2 = 101,124
        env = make(name, n_agents=n)
        learner, cfg = _learner(env)
        seen = _count_particles(learner)
        obs, info = env.reset(seed=0)
        rng = np.random.default_rng(0)
        plan = mf_planner.sample_plan(learner, obs, info["summary"], 0, cfg.level_schedule, rng)
        assert plan.actions.shape == (n, cfg.horizon)
        assert plan.particle_actions.shape == (32, cfg.horizon)
        calls[n] = seen
    first, last = calls.values()
    assert first == last == [8, 8, 32, 32]  # plan cost (particle-steps) does not depend on N


def test_grouping_and_lifting_memory_is_linear_with_small_constant():
    """At N = 10^5 (crowd, S = 11 float32 features: 44 bytes per agent of input), the grouping allocates
    at most 100 bytes per agent at its peak (a lexsort over a float64 copy with int64 keys per feature
    took 192) and the lifting only its [N, H] output and the [N] assignment: nothing N x N."""
    n = 100_000
    env = make("crowd", n_agents=n)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    state_order(obs, rng)  # warm-up (imports, caches)
    tracemalloc.start()
    order = state_order(obs, rng)
    _, peak_group = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    particle_actions = rng.integers(0, 3, size=(1024, 4))
    tracemalloc.start()
    lifted = particle_actions[assign_blocks(order, 1024)]
    _, peak_lift = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_group / n < 100, peak_group / n
    assert peak_lift / n <= 8 * 4 + 8 + 8, peak_lift / n  # [N, H] int64 actions + the [N] assignment
    counts = np.bincount(assign_blocks(order, 1024), minlength=1024)
    assert counts.min() == n // 1024 and counts.max() == n // 1024 + 1  # each particle leads a block
    assert lifted.shape == (n, 4)


def test_grouping_of_a_hand_made_population():
    """Two features (the first with the larger variance is primary), ties broken at random."""
    states = np.array([[2, 0], [0, 1], [2, 1], [0, 0], [1, 1], [0, 1]], dtype=np.float32)
    order = state_order(states, np.random.default_rng(0))
    keys = [tuple(states[i]) for i in order]
    assert keys == sorted(keys)  # lexicographic: feature 0 first, then feature 1
    assert sorted(order.tolist()) == list(range(6))
    orders = {tuple(state_order(states, np.random.default_rng(s))) for s in range(20)}
    assert len(orders) == 2  # agents 1 and 5 share a state: only their relative order varies
    assert np.array_equal(representatives(order, 2), order[[1, 4]])


def test_scale_settings_are_named():
    settings = list_settings()
    expected = {"gs-100000": 10**5, "gs-1000000": 10**6, "ising-316x316": 316**2,
                "ising-1000x1000": 10**6, "crowd-100000": 10**5, "crowd-1000000": 10**6}  # fmt: skip
    for name, n in expected.items():
        assert settings[name]["n_agents"] == n


def test_bench_scale_quick_runs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--quick", "--envs", "crowd"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("crowd") and "4096" in line for line in lines), res.stdout
    assert "plan N=4096 / N=1024" in res.stdout


# ------------------------------------------------------------------------------ 10^6 agents
@pytest.mark.slow
@pytest.mark.parametrize("setting", ["gs-1000000", "ising-1000x1000", "crowd-1000000"])
def test_one_episode_at_a_million_agents(setting):
    env = make(setting)
    learner, cfg = _learner(env)

    def policy(e):
        return mfd.make_policy(learner, cfg, e, mode="representatives")

    (res,) = rollout(lambda n: make(setting), policy, [env.n_agents], [0], 1, progress=False)
    (ep,) = res.episodes
    assert res.n_agents == 10**6
    assert ep.steps == env.horizon
    assert np.isfinite(ep.mean_return)
    assert res.peak_mem_mb < 2048  # the scale target: at most 2 GiB above the process before it
    expl = exploitability(env, policy(env), seeds=(0,))  # exact (crowd, gs) or estimated (ising)
    assert np.isfinite(expl["exploitability"])


@pytest.mark.slow
def test_generate_a_million_agent_dataset_with_stored_representatives(tmp_path):
    from mfdiffuser.data import GenerateConfig, generate_dataset, load_dataset

    out = tmp_path / "crowd-1e6.h5"
    cfg = GenerateConfig(env="crowd-1000000", out=str(out), quality="medium", episodes=2, store_agents=256,
                         ref_episodes=1, progress=False)  # fmt: skip
    res = generate_dataset(cfg)
    assert res.n_agents == 10**6 and res.stored_agents == 256
    ds = load_dataset(out)
    assert ds.meta.n_agents == 10**6
    assert out.stat().st_size < 2 * 1024 * 1024  # representatives and summaries only
