"""Critic-guided coarse-to-fine search of the MF-Diffuser planner."""

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos import mf_planner
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


@pytest.mark.parametrize("row", range(len(PINNED)))
def test_one_candidate_reproduces_the_pinned_plans(row):
    *_, actions, s1, s2 = PINNED[row]
    plan = _pinned_plan(row)
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert float(plan.particle_states.sum()) == pytest.approx(s1, rel=1e-4)
    assert float((plan.particle_states**2).sum()) == pytest.approx(s2, rel=1e-4)


def _pinned_plan(row, **options):
    """The plan of ``PINNED[row]``'s settings, drawn with its seeds, with extra ``sample_plan`` options."""
    sizes, steps, seed, decode, eta, keep, *_ = PINNED[row]
    states, summary = _inputs(seed)
    return mf_planner.sample_plan(
        _learner(), states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), eta, decode, keep, **options,
    )


def test_one_candidate_with_a_critic_still_draws_the_pinned_plan():
    actions = PINNED[1][6]
    plan = _pinned_plan(1, candidates=1, select="softmax", scorer=lambda x0, ctx, probs: x0.sum((1, 2, 3)))
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert plan.scores is None and plan.chosen == 0


class ActionShareCritic:
    """A hand-made critic: the share of particles whose first-step action channels peak at ``action``."""

    def __init__(self, action):
        self.action = action
        self.seen = []

    def __call__(self, x0, ctx, probs):
        self.seen.append(x0.clone())
        return (x0[:, :, 0, S:].argmax(-1) == self.action).float().mean(1)


@pytest.mark.parametrize("action", [0, 3])
def test_selection_keeps_the_candidate_a_hand_made_critic_prefers(action):
    learner = _learner()
    states, summary = _inputs(5, n=64)
    critic = ActionShareCritic(action)
    # one level: the candidates scored are the final clean plans, so the plan is the chosen candidate
    plan = mf_planner.sample_plan(
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
    plan = mf_planner.sample_plan(
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


@pytest.mark.parametrize(("option", "value"), [("candidates", 2), ("guidance", 0.5)])
def test_search_and_guidance_need_a_critic(option, value):
    learner = _learner()
    states, summary = _inputs(0)
    with pytest.raises(ValueError, match="needs a critic"):
        rng, levels = np.random.default_rng(0), LevelSchedule((8,), (2,))
        mf_planner.sample_plan(learner, states, summary, 0, levels, rng, **{option: value})
    env = make("gaussian-squeeze", n_agents=10)
    cfg = mfd.Config(horizon=1, hidden=16, n_blocks=1, replan_every=1)
    plain = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon)
    with pytest.raises(ValueError, match=f"{option}={value} needs a critic"):
        mfd.make_policy(plain, cfg, env, **{option: value})


def _critic_learner(critic):
    """Gaussian-squeeze (N = 300, two steps) and an untrained learner with ``critic`` planning 8 -> 32."""
    env = make("gaussian-squeeze", n_agents=300, horizon=2)
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=2, hidden=16, n_blocks=1, critic=critic, critic_hidden=16, levels=(8, 32),
                     steps_per_level=(3, 3), replan_every=2)
    return env, cfg, mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval()


@pytest.mark.parametrize("critic", ["agent", "population"])
def test_policy_plans_with_the_learner_critic(critic):
    env, cfg, learner = _critic_learner(critic)
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
    plan = mf_planner.sample_plan(
        learner, states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), 1.0, decode, 0.0, candidates=k,
    )
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert plan.chosen == chosen
    if scores is None:
        assert plan.scores is None
    else:
        np.testing.assert_allclose(plan.scores, scores, rtol=1e-5)


# ------------------------------------------------ what the critic reads: the executed actions' law
class NextStateHead(torch.nn.Module):
    """A hand-made action head: the inverse dynamics prefers action 0 the lower the next planned
    state's second feature; the last step's policy is uniform."""

    def forward(self, states, context, views=None):
        logits = torch.zeros(*states.shape[:-1], A)
        logits[..., :-1, 0] = -2.0 * states[..., 1:, 1]
        return logits


class ProbsCritic:
    """A hand-made critic: the mean probability of action 0 at the first step, from the law it is given."""

    def __init__(self):
        self.seen = []

    def __call__(self, segments, ctx, probs):
        self.seen.append((segments.clone(), probs.clone()))
        return probs[:, :, 0, 0].mean(1)


@pytest.mark.parametrize("score_actions", ["channels", "decoded"])
def test_the_critic_reads_the_head_probabilities_with_decoded_scoring(score_actions):
    learner = _learner()
    learner.action_head = NextStateHead()
    states, summary = _inputs(3, n=64)
    critic = ProbsCritic()
    plan = mf_planner.sample_plan(
        learner, states, summary, 2, LevelSchedule((16,), (4,)), np.random.default_rng(0),
        torch.Generator().manual_seed(0), action_decode="head", candidates=8, scorer=critic,
        score_actions=score_actions,
    )
    ((segments, probs),) = critic.seen
    head = torch.softmax(NextStateHead()(segments[..., :S], None), -1)
    channels = mfd.channel_probs(segments[..., S:])
    torch.testing.assert_close(probs, head if score_actions == "decoded" else channels)
    by_head = head[:, :, 0, 0].mean(1)
    by_channels = channels[:, :, 0, 0].mean(1)
    assert int(by_head.argmax()) != int(by_channels.argmax())  # the two laws rank differently here
    assert plan.chosen == int((by_head if score_actions == "decoded" else by_channels).argmax())


@pytest.mark.parametrize("kind", ["agent", "population"])
def test_decoded_scoring_by_the_learner_critics_reads_the_head(kind):
    learner = _learner(critic=kind, critic_hidden=16)
    learner.action_head = NextStateHead()
    states, summary = _inputs(3, n=64)
    seen = []

    def spy(segments, ctx, probs):
        seen.append((segments, ctx))
        return learner.critic.score(segments, ctx, probs)

    plan = mf_planner.sample_plan(
        learner, states, summary, 2, LevelSchedule((16,), (4,)), np.random.default_rng(0),
        torch.Generator().manual_seed(0), action_decode="head", candidates=4, scorer=spy,
        score_actions="decoded",
    )
    ((segments, ctx),) = seen
    head = torch.softmax(NextStateHead()(segments[..., :S], None), -1)
    expected = learner.critic.score(segments, ctx, head).detach().numpy()
    np.testing.assert_allclose(plan.scores, expected, rtol=1e-6)
    by_channels = learner.critic.score(segments, ctx).detach().numpy()  # what the default scoring reads
    assert np.abs(plan.scores - by_channels).max() > 1e-4
    assert plan.chosen == int(np.argmax(plan.scores))


def test_agent_critic_score_reads_the_given_action_law():
    learner = _learner(critic="agent", critic_hidden=16)
    net = learner.critic.net
    for q in (net.q.q1, net.q.q2):
        with torch.no_grad():
            q.head[-1].weight.zero_()
            q.head[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, -1.0]))  # Q(., a) = (1, 0, 0, -1)[a]
    segments = torch.randn(2, 5, 3, S + A)
    ctx = torch.zeros(2, P + 1)
    probs = torch.zeros(2, 5, 3, A)
    probs[0, :, 0, 0] = 1.0  # candidate 0 takes action 0 at its first step: Q = 1
    probs[1, :, 0, 3] = 1.0  # candidate 1 takes action 3: Q = -1
    probs[:, :, 1:, 1] = 1.0  # later steps are not scored
    torch.testing.assert_close(learner.critic.score(segments, ctx, probs), torch.tensor([1.0, -1.0]))
    # without a law, the channels' own (the default)
    want = (mfd.channel_probs(segments[:, :, 0, S:]) * torch.tensor([1.0, 0.0, 0.0, -1.0])).sum(-1).mean(1)
    torch.testing.assert_close(learner.critic.score(segments, ctx), want)


# ------------------------------------------------ projecting planned states onto the env's lattice
def test_snap_to_lattice_by_hand():
    learner = mfd.MFDiffuser(mfd.Config(horizon=2, hidden=16, n_blocks=1), 2, A, P, T)
    learner.state_mean.fill_(1.0)
    learner.state_std.fill_(2.0)
    lattice = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[5.0, 5.0], [6.0, 5.0], [5.0, 6.0]]])
    raw = torch.tensor([[[0.9, 0.2], [5.1, 5.8]], [[0.1, 0.1], [6.4, 4.0]]])  # [M, H, S], de-normalised
    x0 = torch.cat([(raw - 1.0) / 2.0, torch.randn(2, 2, A)], dim=-1)[None]  # [1, M, H, D]
    out = mf_planner.snap_to_lattice(learner, x0, lattice)
    want = torch.tensor([[[1.0, 0.0], [5.0, 6.0]], [[0.0, 0.0], [6.0, 5.0]]])
    torch.testing.assert_close(out[0, ..., :2] * 2.0 + 1.0, want)
    assert torch.equal(out[..., 2:], x0[..., 2:])


def _crowd_policy(snap):
    env = make("crowd", n_agents=60, size=5, horizon=6)
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=3, hidden=16, n_blocks=1, levels=(8, 16), steps_per_level=(2, 2),
                     action_decode="head", snap_states=snap, replan_every=1)
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval()
    seen = []
    forward = learner.action_head.forward
    learner.action_head.forward = lambda states, *a: seen.append(states.clone()) or forward(states, *a)
    return env, learner, cfg, seen


@pytest.mark.parametrize("snap", [False, True])
def test_snapped_plans_decode_lattice_states(snap):
    env, learner, cfg, seen = _crowd_policy(snap)
    policy = mfd.make_policy(learner, cfg, env)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    for _ in range(5):  # the last plans reach past T: their later steps snap to step T's states
        t = int(info["t"])
        policy.act(obs, info)
        states = seen[-1][0] * learner.state_std + learner.state_mean  # [M, H, S] read by the head
        cells = [torch.as_tensor(env.cell_observations(min(t + h, env.horizon))) for h in range(3)]
        gaps = torch.stack([torch.cdist(states[:, h], cells[h]).amin(-1) for h in range(3)])
        assert bool((gaps < 1e-5).all()) == snap
        # the plan reports the denoiser's states (off the lattice), snapped or not
        assert np.allclose(policy.last_plan.particle_states, states.numpy(), atol=1e-4) == (not snap)
        obs, _, _, _, info = env.step(policy.last_plan.actions[:, 0])


def test_snap_states_needs_head_decoding_and_an_env_lattice():
    with pytest.raises(ValueError, match="snap_states"):
        mfd.Config(snap_states=True)
    with pytest.raises(ValueError, match="score_actions"):
        mfd.Config(score_actions="head")
    env = make("gaussian-squeeze", n_agents=10)
    cfg = mfd.Config(horizon=1, hidden=16, n_blocks=1, replan_every=1, action_decode="head", snap_states=True)
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon)
    policy = mfd.make_policy(learner, cfg, env)
    with pytest.raises(ValueError, match="cell_observations"):
        policy.reset(env, np.random.default_rng(0))


class SoftActionCritic:
    """A differentiable hand-made critic: the mean probability of ``action`` at every planned step."""

    def __init__(self, action):
        self.action = action

    def __call__(self, x0, ctx, probs):
        return probs[..., self.action].mean((1, 2))


@pytest.mark.parametrize("action", [0, 2])
def test_gradient_guidance_moves_plans_toward_what_the_critic_prefers(action):
    learner = _learner()
    states, summary = _inputs(8, n=64)
    share = {}
    for guidance in (0.0, 0.5):
        plan = mf_planner.sample_plan(
            learner, states, summary, 0, LevelSchedule((8, 32), (3, 3)), np.random.default_rng(0),
            torch.Generator().manual_seed(0), action_decode="argmax", scorer=SoftActionCritic(action),
            guidance=guidance,
        )
        share[guidance] = float(np.mean(plan.particle_actions == action))
    assert share[0.0] < 0.5 and share[0.5] > share[0.0] + 0.3


def test_zero_guidance_draws_the_pinned_plan():
    actions = PINNED[0][6]
    plan = _pinned_plan(0, scorer=SoftActionCritic(0), guidance=0.0)
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        mfd.Config(guidance=-1.0)


@pytest.mark.parametrize("critic", ["agent", "population"])
def test_policy_plans_with_gradient_guidance_from_the_learner_critic(critic):
    env, cfg, learner = _critic_learner(critic)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a critic whose Q differs between actions (its last layers start at zero)
        for p in learner.critic.parameters():
            p.normal_(0.0, 0.3, generator=gen)
    obs, info = env.reset(seed=0)
    plans = {}
    for guidance in (0.0, 1.0):
        policy = mfd.make_policy(learner, cfg, env, guidance=guidance)
        policy.reset(env, np.random.default_rng(0))
        assert policy.act(obs, info).shape == (300,)
        plans[guidance] = policy.last_plan
    assert np.isfinite(plans[1.0].particle_states).all()
    # the critic reads the first step's actions (and the population critic the states too)
    assert not np.array_equal(plans[0.0].particle_actions[:, 0], plans[1.0].particle_actions[:, 0])
