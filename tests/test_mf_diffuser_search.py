"""Critic-guided coarse-to-fine search of the MF-Diffuser planner."""

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos.critics import select_candidate
from mfdiffuser.diffusion import LevelSchedule
from mfdiffuser.envs import make

S, A, P, T = 3, 4, 5, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learner(**kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=3, hidden=16, n_blocks=1, value_hidden=16, replan_every=1, **kw)
    learner = mfd.MFDiffuser(cfg, S, A, P, T)
    # its own generator: modules built after the denoiser (critics, heads) leave these weights alone
    gen = torch.Generator().manual_seed(0)
    torch.nn.init.normal_(learner.denoiser.out[-1].weight, std=0.02, generator=gen)
    return learner.eval()


def _inputs(seed, n=40):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, S)).astype(np.float32), g.random(P).astype(np.float32)


# Plans of the planner before candidate search existed (one candidate; computed at 16a4b2b with this
# file's _learner and _inputs), for fixed seeds: particle
# actions (M_L x H, row-major) and the sum and sum of squares of the planned states. Untrained
# weights make the far-from-data state channels large, hence the relative tolerance on those.
PINNED = [
    ((4, 8, 24), (2, 2, 2), 0, "categorical", 1.0, 0.0,
     "110120120133022033010332310200220320231130131023012011332133133030012020",
     16808.4453125, 22821348.0),
    ((4, 8, 24), (2, 2, 2), 1, "argmax", 0.5, 0.3,
     "331333133232132233010112012033133013133130111110101100313313313002002012",
     -2020.26611328125, 11546918.0),
    ((16,), (6,), 2, "categorical", 1.0, 0.0,
     "320322012121001332332133131130102003111212233232",
     6743.0517578125, 14529566.0),
]


@pytest.mark.parametrize(("sizes", "steps", "seed", "decode", "eta", "keep", "actions", "s1", "s2"), PINNED)
def test_one_candidate_reproduces_the_pinned_plans(sizes, steps, seed, decode, eta, keep, actions, s1, s2):
    learner = _learner()
    states, summary = _inputs(seed)
    plan = mfd.sample_plan(
        learner, states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), eta, decode, keep,
    )
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert float(plan.particle_states.sum()) == pytest.approx(s1, rel=1e-4)
    assert float((plan.particle_states**2).sum()) == pytest.approx(s2, rel=1e-4)


def test_one_candidate_with_a_critic_still_draws_the_pinned_plan():
    sizes, steps, seed, decode, eta, keep, actions, s1, _ = PINNED[1]
    learner = _learner()
    states, summary = _inputs(seed)
    plan = mfd.sample_plan(
        learner, states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), eta, decode, keep, candidates=1, select="softmax",
        scorer=lambda x0, ctx: x0.sum((1, 2, 3)),
    )
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert plan.scores is None and plan.chosen == 0


class ActionShareCritic:
    """A hand-made critic: the share of particles whose first-step action channels peak at ``action``."""

    def __init__(self, action):
        self.action = action
        self.seen = []

    def __call__(self, x0, ctx):
        self.seen.append(x0.clone())
        return (x0[:, :, 0, S:].argmax(-1) == self.action).float().mean(1)


@pytest.mark.parametrize("action", [0, 3])
def test_selection_keeps_the_candidate_a_hand_made_critic_prefers(action):
    learner = _learner()
    states, summary = _inputs(5, n=64)
    critic = ActionShareCritic(action)
    # one level: the candidates scored are the final clean plans, so the plan is the chosen candidate
    plan = mfd.sample_plan(
        learner, states, summary, 0, LevelSchedule((32,), (4,)), np.random.default_rng(0),
        torch.Generator().manual_seed(0), action_decode="argmax", candidates=8, scorer=critic,
    )
    (seen,) = critic.seen
    shares = (seen[:, :, 0, S:].argmax(-1) == action).float().mean(1)
    assert seen.shape[0] == 8 and len(set(shares.tolist())) > 1  # the candidates differ
    assert plan.chosen == int(shares.argmax())
    np.testing.assert_allclose(plan.scores, shares.numpy())
    assert np.mean(plan.particle_actions[:, 0] == action) == pytest.approx(float(shares.max()))
    assert np.mean(plan.particle_actions[:, 0] == action) > float(shares.mean())
    # coarse to fine: only the survivor is refined, its children branch from the chosen coarse plan
    critic = ActionShareCritic(action)
    plan = mfd.sample_plan(
        learner, states, summary, 0, LevelSchedule((8, 64), (3, 3)), np.random.default_rng(0),
        torch.Generator().manual_seed(0), action_decode="argmax", candidates=8, scorer=critic,
    )
    (seen,) = critic.seen
    assert seen.shape[:2] == (8, 8) and plan.particle_actions.shape == (64, 3)
    assert plan.chosen == int(plan.scores.argmax()) and plan.scores.max() > plan.scores.mean()


def test_softmax_selection_draws_in_proportion_to_exp_score():
    scores = torch.tensor([0.0, 1.0, 2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws = np.array([select_candidate(scores, "softmax", 0.5, gen) for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    expected = np.exp(scores.numpy() / 0.5) / np.exp(scores.numpy() / 0.5).sum()
    # 4 binomial s.e. at 20,000 draws
    assert np.all(np.abs(freq - expected) < 4 * np.sqrt(expected * (1 - expected) / len(draws)) + 1e-4)
    assert select_candidate(scores, "best", 0.5, gen) == 2
    hot = np.array([select_candidate(scores, "softmax", 100.0, gen) for _ in range(4000)])
    assert np.all(np.abs(np.bincount(hot, minlength=4) / 4000 - 0.25) < 0.04)  # high T: uniform


def test_candidates_need_a_critic():
    learner = _learner()
    states, summary = _inputs(0)
    with pytest.raises(ValueError, match="needs a critic"):
        mfd.sample_plan(learner, states, summary, 0, LevelSchedule((8,), (2,)), np.random.default_rng(0),
                        candidates=2)
    env = make("gaussian-squeeze", n_agents=10)
    cfg = mfd.Config(horizon=1, hidden=16, n_blocks=1, replan_every=1)
    plain = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon)
    with pytest.raises(ValueError, match="needs a critic"):
        mfd.make_policy(plain, cfg, env, candidates=4)


@pytest.mark.parametrize("critic", ["agent", "population"])
def test_policy_plans_with_the_learner_critic(critic):
    env = make("gaussian-squeeze", n_agents=300, horizon=2)
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=2, hidden=16, n_blocks=1, critic=critic, critic_hidden=16, levels=(8, 32),
                     steps_per_level=(3, 3), replan_every=2)
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval()
    policy = mfd.make_policy(learner, cfg, env, candidates=3)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    actions = policy.act(obs, info)
    assert actions.shape == (300,) and policy.last_plan.scores.shape == (3,)
    assert np.isfinite(policy.last_plan.scores).all()


# Plans with head decoding and with critic search, as the planner drew them before the options that
# change what is decoded and scored (snap_states, score_actions) existed; their defaults keep these.
# (critic, sizes, steps, seed, decoding, K, particle actions, chosen, scores)
PINNED_SEARCH = [
    ("none", (4, 8, 24), (2, 2, 2), 3, "head", 1,
     "333333333333333333333333333333330333333333333333333333330330330330330330", 0, None),
    ("agent", (4, 8, 24), (2, 2, 2), 4, "head", 4,
     "331333331333331331333333333333333333330030030030330330333333333333333333", 3,
     [-0.19278186559677124, -0.19110745191574097, -0.18084867298603058, -0.1785629242658615]),
    ("agent", (16,), (4,), 5, "categorical", 3,
     "021030311023321103102330023003332112103301223203", 2,
     [-0.17939943075180054, -0.1862502247095108, -0.17682230472564697]),
    ("population", (4, 8, 24), (2, 2, 2), 6, "head", 4,
     "333333333333333333330330330330330330333333333333333333330330330330330330", 1,
     [-6.959361553192139, -6.561956405639648, -6.715035915374756, -7.606952667236328]),
    ("population", (4, 8, 24), (2, 2, 2), 7, "argmax", 4,
     "201111031312312322001023200012031122130330110323323330213210203101101101", 3,
     [-10.588156700134277, -7.950594425201416, -4.638703346252441, -3.263380289077759]),
]


@pytest.mark.parametrize(
    ("critic", "sizes", "steps", "seed", "decode", "k", "actions", "chosen", "scores"), PINNED_SEARCH
)
def test_default_decoding_and_scoring_reproduce_the_pinned_plans(
    critic, sizes, steps, seed, decode, k, actions, chosen, scores
):
    learner = _learner(critic=critic, critic_hidden=16)
    states, summary = _inputs(seed)
    plan = mfd.sample_plan(
        learner, states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), 1.0, decode, 0.0, candidates=k,
    )
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert plan.chosen == chosen
    if scores is None:
        assert plan.scores is None
    else:
        np.testing.assert_allclose(plan.scores, scores, rtol=1e-5)
