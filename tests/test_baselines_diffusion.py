"""Diffusion baselines (dd-independent, madiff): losses, planning at any N, budgets, a learning probe."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from mfdiffuser.algos import dd_independent, madiff
from mfdiffuser.algos.return_diffusion import PlannerPolicy
from mfdiffuser.algos.trainer import TrainerConfig, fit
from mfdiffuser.errors import BudgetExceeded, MfdError
from test_baselines import META, ProbeSampler, make_batch, one_thread  # noqa: F401 (autouse fixture)

ENV = types.SimpleNamespace(state_size=2, n_actions=4, summary_size=2, n_agents=50)
INFO = {"summary": np.array([0.5, 0.5], dtype=np.float32), "t": 0}


def small(module, **kw):
    return module.Config(
        horizon=2, hidden=32, n_layers=1, n_heads=2, diffusion_steps=10, sample_steps=4, **kw
    )


@pytest.mark.parametrize("module", [dd_independent, madiff])
def test_loss_finite_and_backprop(module):
    learner = module.build(small(module), META, None)
    batch = make_batch(H=2)
    batch.mask[0, :, 1] = False
    out = learner.loss(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in learner.net.parameters())


def test_joint_attention_couples_agents_and_time_scope_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 2, 6)
    cond = torch.randn(1, 6, 7)
    for module, coupled in [(dd_independent, False), (madiff, True)]:
        net = module.build(small(module), META, None).net
        torch.nn.init.normal_(net.out[-1].weight)
        x2 = x.clone()
        x2[0, 5] += 1.0  # perturb the last agent only
        diff = (net(x2, 3, cond) - net(x, 3, cond))[0, :5].abs().max().item()
        assert (diff > 1e-4) == coupled
        # equivariance: permuting agents permutes the output
        perm = torch.randperm(6)
        assert torch.allclose(net(x[:, perm], 3, cond[:, perm]), net(x, 3, cond)[:, perm], atol=1e-5)


@pytest.mark.parametrize("module", [dd_independent, madiff])
def test_planner_policy_any_n_and_replanning(module):
    config = small(module, replan_every=2)
    learner = module.build(config, META, None)
    calls = []
    plan = learner.plan

    def counting(obs, info, gen, cfg):
        calls.append(len(obs))
        assert cfg.sample_steps == 3
        return plan(obs, info, gen, cfg)

    learner.plan = counting
    for n in (3, 50):
        env = types.SimpleNamespace(**{**vars(ENV), "n_agents": n})
        policy = module.make_policy(learner, config, env, sample_steps=3)
        assert isinstance(policy, PlannerPolicy)
        policy.reset(None, np.random.default_rng(0))
        obs = np.random.default_rng(1).random((n, 2)).astype(np.float32)
        acts = [policy.act(obs, INFO) for _ in range(4)]
        assert all(a.shape == (n,) and a.dtype == np.int64 and 0 <= a.min() and a.max() < 4 for a in acts)
    assert calls == [3, 3, 50, 50]
    with pytest.raises(ValueError, match="replan_every"):
        module.make_policy(learner, config, ENV, replan_every=3)
    with pytest.raises(ValueError, match="unknown policy option"):
        module.make_policy(learner, config, ENV, beam=3)


def test_plans_reproducible_from_episode_seed():
    config = small(dd_independent)
    learner = dd_independent.build(config, META, None)
    obs = np.random.default_rng(1).random((20, 2)).astype(np.float32)
    out = []
    for _ in range(2):
        policy = dd_independent.make_policy(learner, config, ENV)
        policy.reset(None, np.random.default_rng(7))
        out.append(policy.act(obs, INFO))
    assert np.array_equal(*out)


def test_madiff_budget_quadratic_and_skipped():
    config = small(madiff, max_memory_gib=1.0, max_plan_seconds=5.0)
    learner = madiff.build(config, META, None)
    g1, s1 = learner.plan_cost(2_000, config.assumed_gflops)
    g2, s2 = learner.plan_cost(4_000, config.assumed_gflops)
    assert s2 / s1 > 3.5 and g2 / g1 > 3.5  # (N H)^2 dominates
    indep = dd_independent.build(small(dd_independent), META, None)
    assert indep.plan_cost(4_000, 20.0)[1] / indep.plan_cost(2_000, 20.0)[1] == pytest.approx(2.0)
    madiff.make_policy(learner, config, ENV)  # N = 50 fits
    with pytest.raises(BudgetExceeded) as exc:
        madiff.make_policy(learner, config, types.SimpleNamespace(**{**vars(ENV), "n_agents": 100_000}))
    assert isinstance(exc.value, MfdError)
    assert exc.value.record.startswith("skipped: needs ") and " GiB / " in exc.value.record
    assert exc.value.needs_gib > 1.0


def test_dd_independent_budget_is_off_by_default_and_linear_in_n():
    big = types.SimpleNamespace(**{**vars(ENV), "n_agents": 100_000})
    learner = dd_independent.build(small(dd_independent), META, None)
    dd_independent.make_policy(learner, small(dd_independent), big)  # no budget: any N is planned
    config = small(dd_independent, max_plan_seconds=0.1)
    _, seconds = learner.plan_cost(100_000, config.assumed_gflops)
    n_fits = int(50 * 0.1 / learner.plan_cost(50, config.assumed_gflops)[1])  # the largest N within 0.1 s
    assert seconds > 0.1 and 50 < n_fits < 100_000
    dd_independent.make_policy(learner, config, types.SimpleNamespace(**{**vars(ENV), "n_agents": n_fits}))
    with pytest.raises(BudgetExceeded) as exc:
        dd_independent.make_policy(learner, config, big)
    assert exc.value.needs_seconds == pytest.approx(seconds)
    assert exc.value.record.endswith(" s (budget 0.1 s)")  # no memory limit to state


def fit_probe(module, tmp_path, steps, **kw):
    torch.manual_seed(0)
    config = module.Config(horizon=1, hidden=64, n_layers=2, diffusion_steps=20, sample_steps=5, **kw)
    learner = module.build(config, META, None)
    sampler = ProbeSampler(batch_size=32, m=8)
    batches = [sampler.sample() for _ in range(8)]
    learner.state_stats.fit(torch.cat([b.states[:, :, 0].reshape(-1, 2) for b in batches]))
    rates = torch.cat([learner.return_rate(b).reshape(-1) for b in batches])
    learner.returns.fit(rates)
    learner.target.fill_(float(np.quantile(learner.returns(rates).numpy(), config.target_quantile)))
    result = fit(
        learner, sampler, tmp_path, TrainerConfig(steps=steps, lr=1e-3, progress=False, ema_start=50)
    )
    env = types.SimpleNamespace(state_size=2, n_actions=4, summary_size=2, n_agents=200)
    policy = module.make_policy(result.ema, config, env)
    policy.reset(None, np.random.default_rng(0))
    types_ = np.arange(200) % 2
    obs = np.stack([types_, np.ones(200)], axis=1).astype(np.float32)
    return float(np.mean(policy.act(obs, INFO) == types_))


def test_probe_dd_independent_conditions_on_return(tmp_path):
    """Mixed data: conditioning on a high return picks the expert's action (BC gets 0.625)."""
    assert fit_probe(dd_independent, tmp_path, steps=400) > 0.85


@pytest.mark.slow
def test_probe_madiff_conditions_on_population_return(tmp_path):
    assert fit_probe(madiff, tmp_path, steps=600) > 0.85


@pytest.mark.parametrize("module", [dd_independent, madiff])
def test_a_run_resumes_under_other_acting_options_but_not_other_weights(module, gs_dataset, tmp_path):
    import json

    from mfdiffuser.algos.run import train

    name = module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    opts = {"horizon": 1, "hidden": 16, "n_layers": 1, "n_heads": 2, "diffusion_steps": 4, "sample_steps": 4}
    trainer = TrainerConfig(steps=3, batch_size=4, progress=False)
    run_dir = tmp_path / "run"
    train(name, gs_dataset, run_dir, opts, trainer)
    # a run written when the plan-time estimate assumed another rate: its weights are the same
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["assumed_gflops"] = 20.0
    (run_dir / "run.json").write_text(json.dumps(record))
    ckpt = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    again = train(name, gs_dataset, run_dir, {**opts, "max_plan_seconds": 10.0, "guidance": 2.0}, trainer)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == ckpt and again.step == 3
    assert set(module.PLAN_OPTIONS) >= {"assumed_gflops", "max_plan_seconds", "guidance", "sample_steps"}
    with pytest.raises(MfdError, match="different run"):  # a field that shapes the weights
        train(name, gs_dataset, run_dir, {**opts, "hidden": 32}, trainer)
