"""Speed of the MF-Diffuser planner: exact rewrites keep every plan, the compiled and the bfloat16
denoisers plan alike."""

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos import mf_planner
from mfdiffuser.diffusion import LevelSchedule
from mfdiffuser.envs import make

S, A, P, T = 3, 4, 5, 10

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learner(**kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=4, hidden=32, n_blocks=2, value_hidden=16, replan_every=1, critic="agent", **kw)
    learner = mfd.MFDiffuser(cfg, S, A, P, T)
    gen = torch.Generator().manual_seed(1)
    for param in learner.denoiser.parameters():  # every layer away from its init: the whole net matters
        torch.nn.init.normal_(param, std=0.2, generator=gen)
    return learner.eval()


def _inputs(seed, n=200):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, S)).astype(np.float32), g.random(P).astype(np.float32)


def _plan(learner, case, **kw):
    (sizes, steps, seed, eta, decode, keep, candidates) = case
    states, summary = _inputs(seed)
    return mf_planner.sample_plan(
        learner, states, summary, 3, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), eta, decode, keep, candidates=candidates, **kw,
    )


# Plans drawn before the planner computed the conditioning once per level, inpainted in place and
# built the temporal convolution's shifted copies in one buffer (exact rewrites of the same
# arithmetic), for fixed seeds: (sizes, steps, seed, eta, decoding, branch_keep, candidates), the
# particle actions (M_L x H, row-major), the float64 sum of the planned states and the chosen candidate.
PINNED = [
    (
        ((8, 16, 64), (3, 2, 2), 0, 1.0, 'categorical', 0.0, 1),
        (
        "22211311331132111231211111111111331123110311131133133013301333133303313331333333"
        "31212121313131311131110112211111101231122112211122312231223123311231131112111311"
        "11231123110112233313131311113333121133012221323110101031101311321133121122031211"
        "0130033130300302"
        ),
        44843.03912824858,
        0,
    ),
    (
        ((8, 16, 64), (3, 2, 2), 1, 0.5, 'head', 0.3, 1),
        (
        "01020101010101010101010201010101303230313032303230323032303230321032103211321032"
        "10321032103210323031303130313032303130313031303113321332133213321332133213321332"
        "10311031103210311032103110311031333103310331033103310331033133313232323232323232"
        "3232323232323232"
        ),
        90567.91779800726,
        0,
    ),
    (
        ((8, 32), (2, 2), 2, 1.0, 'categorical', 0.0, 3),
        (
        "30213311311323033311332131113111220312312231223133313331303133113101311131111101"
        "213113031333113301111111011111113030231213332203"
        ),
        32194.132580451667,
        1,
    ),
]


@pytest.mark.parametrize(("case", "actions", "state_sum", "chosen"), PINNED)
def test_exact_speedups_leave_the_plans_unchanged(case, actions, state_sum, chosen):
    plan = _plan(_learner(), case)
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert float(plan.particle_states.astype(np.float64).sum()) == state_sum  # bit for bit
    assert plan.chosen == chosen


def _policy_plans(learner, env, n_plans=2, **options):
    policy = mfd.make_policy(learner, learner.config, env, **options)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    plans = []
    for _ in range(n_plans):
        policy.act(obs, info)
        plans.append(policy.last_plan)
        obs, _, _, _, info = env.step(policy.last_plan.actions[:, 0])
    return plans


def _tiny_learner(env):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=2, hidden=8, n_blocks=1, value_hidden=8, head_hidden=8, levels=(4, 8),
                     steps_per_level=(2, 2), replan_every=1)
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon)
    torch.nn.init.normal_(learner.denoiser.out[-1].weight, std=0.1)
    return learner.eval()


def test_a_failed_compilation_is_a_one_line_error_not_a_silent_eager_run(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("inductor: no working C++ compiler\nlong traceback text")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    env = make("crowd", n_agents=30)
    learner = _tiny_learner(env)
    message = r"compile=True could not compile .*no working C\+\+ compiler\); plan with compile=False$"
    with pytest.raises(mf_planner.CompileError, match=message) as err:
        _policy_plans(learner, env, compile=True)
    assert "\n" not in str(err.value)
    assert _policy_plans(learner, env, compile=False)  # the eager planner is untouched


@pytest.mark.slow
def test_compiled_planner_draws_the_eager_plans():
    env = make("crowd", n_agents=30)
    learner = _tiny_learner(env)
    eager = _policy_plans(learner, env, n_plans=3)
    compiled = _policy_plans(learner, env, n_plans=3, compile=True)
    for a, b in zip(eager, compiled, strict=True):
        assert np.array_equal(a.actions, b.actions)
        np.testing.assert_allclose(a.particle_states, b.particle_states, rtol=1e-4, atol=1e-4)


def test_bfloat16_planner_draws_nearly_the_float32_plans():
    learner = _learner()
    weights = {name: p.clone() for name, p in learner.denoiser.state_dict().items()}
    for case, _, _, _ in PINNED:
        exact = _plan(learner, case)
        bf16 = _plan(learner, case, denoise=mf_planner.reduced_precision_denoiser(learner, "bfloat16"))
        gap = np.abs(exact.particle_states - bf16.particle_states)
        assert gap.max() > 0  # the plan really went through bfloat16
        assert gap.mean() < 0.01 * exact.particle_states.std()
        assert (exact.particle_actions == bf16.particle_actions).mean() > 0.95
        assert bf16.chosen == exact.chosen
    for name, p in learner.denoiser.state_dict().items():  # the learner's own weights are untouched
        assert p.dtype == weights[name].dtype and torch.equal(p, weights[name])


def test_the_policy_plans_in_the_precision_asked_for():
    env = make("crowd", n_agents=30)
    learner = _tiny_learner(env)
    policy = mfd.make_policy(learner, learner.config, env, precision="bfloat16")
    assert policy.denoise is not None
    assert mfd.make_policy(learner, learner.config, env).denoise is None  # float32: the learner's own
    assert _policy_plans(learner, env, precision="bfloat16")
    with pytest.raises(ValueError, match=r"precision must be one of float32, bfloat16, got 'float16'$"):
        mfd.make_policy(learner, learner.config, env, precision="float16")


def test_bench_planner_times_every_denoiser_size():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_planner.py"
    spec = importlib.util.spec_from_file_location("bench_planner", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.width_latency(n=300, widths=((16, 2), (8, 1)), repeats=1)
    assert list(out) == [(16, 2), (8, 1)]
    (big_s, big_n), (small_s, small_n) = out.values()
    assert big_s > 0 and small_s > 0
    assert big_n > small_n > 0
