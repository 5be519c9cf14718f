"""MF-Diffuser's critics: features, TD targets and losses by hand, target updates, checkpoints, CLI."""

import json

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos.critics import agent_steps, iql_losses, population_targets, resolve_critic
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.critics import channel_probs, segment_features

S, A, P, T = 1, 2, 2, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learner(critic, **kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=2, hidden=16, n_blocks=1, value_hidden=16, critic_hidden=16, critic=critic, **kw)
    return mfd.MFDiffuser(cfg, S, A, P, T)


def _constant(linear, bias):
    """Make a final Linear layer output ``bias`` whatever its input."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def _batch(timestep, rewards, actions, mask):
    """A batch of B windows of M agents and H = 2 steps with the given rewards/actions/mask [B, M, 2]."""
    rewards = torch.tensor(rewards, dtype=torch.float32)
    b, m, h = rewards.shape
    return TrajBatch(
        states=torch.arange(b * m * (h + 1), dtype=torch.float32).reshape(b, m, h + 1, S) / 10,
        actions=torch.tensor(actions),
        rewards=rewards,
        summaries=torch.rand(b, h + 1, P, generator=torch.Generator().manual_seed(0)),
        rtg=torch.zeros(b, m),
        pop_rtg=torch.zeros(b),
        mask=torch.tensor(mask),
        timestep=torch.tensor(timestep),
        episode_return=torch.zeros(b),
    )


def test_config_rejects_bad_critic_and_search_options():
    for bad, match in (
        ({"critic": "oracle"}, "critic"), ({"candidates": 0}, "candidates"), ({"select": "worst"}, "select"),
        ({"select_temperature": 0.0}, "select_temperature"), ({"critic_gamma": 1.5}, "critic_gamma"),
        ({"critic_tau": 0.0}, "critic_tau"), ({"critic_expectile": 1.0}, "critic_expectile"),
    ):
        with pytest.raises(ValueError, match=match):
            mfd.Config(**bad)
    with pytest.raises(ValueError, match="critic=auto"):
        _learner("auto")


def test_auto_critic_follows_the_env_reward():
    assert resolve_critic("auto", "gaussian-squeeze") == "population"
    assert resolve_critic("auto", "ising") == "agent"
    assert resolve_critic("auto", "crowd") == "agent"
    assert resolve_critic("auto", "crowd-2d") == "agent"
    assert resolve_critic("agent", "gaussian-squeeze") == "agent"
    assert resolve_critic("none", "crowd") == "none"


def test_channel_probs_by_hand():
    chans = torch.tensor([[-1.0, 0.6, 0.2, -0.5], [-0.9, -0.2, -0.8, -0.7], [1.0, -1.0, -1.0, -1.0]])
    expected = torch.tensor([[0.0, 0.75, 0.25, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(channel_probs(chans), expected)


def test_segment_features_by_hand():
    # B = 1, M = 3, H = 2, S = 1, A = 2; the third agent is dead at step 1
    states = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]], [[5.0], [100.0]]]])
    probs = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    valid = torch.tensor([[[True, True], [True, True], [True, False]]])
    f = segment_features(states, probs, valid)
    # step 0: hist (2/3, 1/3), mean 3, sd sqrt(8/3); step 1 (two agents): hist (0, 1), mean 3, sd 1
    expected = torch.tensor([[2 / 3, 1 / 3, 3.0, (8 / 3) ** 0.5, 0.0, 1.0, 3.0, 1.0]])
    assert torch.allclose(f, expected, atol=1e-6)
    # intensive: duplicating every particle changes nothing
    dup = segment_features(states.repeat(1, 2, 1, 1), probs.repeat(1, 2, 1, 1), valid.repeat(1, 2, 1))
    assert torch.allclose(dup, f, atol=1e-6)


def test_population_td_target_by_hand():
    learner = _learner("population", critic_gamma=0.5)
    learner.return_scale.fill_(2.0)
    _constant(learner.critic.net.value[-1], [3.0])  # V(c) = 3 everywhere
    batch = _batch(
        timestep=[3, 8],  # the second window ends the episode (8 + 2 = T): no bootstrap
        rewards=[[[1.0, 2.0], [3.0, 50.0]], [[4.0, 4.0], [2.0, 0.0]]],
        actions=[[[0, 1], [1, 1]], [[0, 0], [0, 1]]],
        mask=[[[True, True], [True, False]], [[True, True], [True, True]]],
    )
    pt = population_targets(learner, batch, learner.critic.net, 0.5)
    # window 0: rbar = (2, 2) (agent 1's step 1 is masked), (2 + 0.5 * 2) / 2 + 0.25 * 3 = 2.25
    # window 1: rbar = (3, 2), (3 + 0.5 * 2) / 2 = 2
    assert torch.allclose(pt.target, torch.tensor([2.25, 2.0]))
    # with Q constant at 1: q_loss = mean((1 - y)^2), v_loss = mean(expectile(1 - 3))
    _constant(learner.critic.net.q[-1], [1.0])
    _constant(learner.critic.net.q_target[-1], [1.0])
    out = learner.critic.loss(learner, batch)
    q_loss = ((1 - 2.25) ** 2 + (1 - 2.0) ** 2) / 2
    v_loss = (1 - 0.7) * (1 - 3.0) ** 2
    assert out.metrics["critic_q_loss"] == pytest.approx(q_loss)
    assert out.metrics["critic_v_loss"] == pytest.approx(v_loss)
    assert out.loss.item() == pytest.approx(q_loss + v_loss)


def test_agent_td_target_and_losses_by_hand():
    learner = _learner("agent", critic_gamma=0.5, critic_expectile=0.7)
    learner.return_scale.fill_(2.0)
    net = learner.critic.net
    _constant(net.value.head[-1], [1.5])  # V = 1.5
    for q in (net.q.q1, net.q.q2, net.q_target.q1, net.q_target.q2):
        _constant(q.head[-1], [1.0, 3.0])  # Q(., a) = (1, 3)[a]
    # one window at t = 7 (T = 10): transitions at t = 7 and t = 8 (s' at 9, inside); agent 1 is dead
    batch = _batch(timestep=[7], rewards=[[[1.0, 2.0], [9.0, 9.0]]], actions=[[[0, 1], [1, 1]]],
                   mask=[[[True, True], [False, False]]])
    st = agent_steps(learner, batch)
    out = iql_losses(net.q, net.q_target, net.value, st, 0.5, 0.7, learner.return_scale)
    # targets: 1/2 + 0.5 * 1.5 = 1.25 and 2/2 + 0.5 * 1.5 = 1.75; Q at the data actions: 1 and 3
    assert out.q_loss.item() == pytest.approx((2 * 0.25**2 + 2 * 1.25**2) / 2)
    # V against the target Q at the data actions: diffs -0.5 and 1.5
    assert out.v_loss.item() == pytest.approx((0.3 * 0.25 + 0.7 * 2.25) / 2)
    # at the episode's last step the TD target does not bootstrap: t = 8, transitions 8 and 9 (done)
    end = _batch(timestep=[8], rewards=[[[1.0, 2.0]]], actions=[[[0, 1]]], mask=[[[True, True]]])
    out_end = iql_losses(net.q, net.q_target, net.value, agent_steps(learner, end), 0.5, 0.7,
                         learner.return_scale)
    assert out_end.q_loss.item() == pytest.approx((2 * 0.25**2 + 2 * (3 - 1.0) ** 2) / 2)


def test_conservative_agent_critic_by_hand_and_where_it_pushes():
    # the by-hand setting above with every data action 0: CQL's gap is logsumexp(1, 3) - 1 per head
    batch = _batch(timestep=[7], rewards=[[[1.0, 2.0], [9.0, 9.0]]], actions=[[[0, 0], [1, 1]]],
                   mask=[[[True, True], [False, False]]])
    grads = {}
    for alpha in (0.0, 0.5):
        learner = _learner("agent", critic_gamma=0.5, critic_expectile=0.7, critic_conservative=alpha)
        learner.return_scale.fill_(2.0)
        net = learner.critic.net
        _constant(net.value.head[-1], [1.5])
        for q in (net.q.q1, net.q.q2, net.q_target.q1, net.q_target.q2):
            _constant(q.head[-1], [1.0, 3.0])
        out = learner.critic.loss(learner, batch)
        iql = iql_losses(net.q, net.q_target, net.value, agent_steps(learner, batch), 0.5, 0.7,
                         learner.return_scale)
        gap = 2 * (np.logaddexp(1.0, 3.0) - 1.0)
        if alpha:
            assert out.metrics["critic_cql_gap"] == pytest.approx(gap, rel=1e-6)
        else:
            assert "critic_cql_gap" not in out.metrics
        assert out.loss.item() == pytest.approx((iql.q_loss + alpha * gap + iql.v_loss).item(), rel=1e-6)
        out.loss.backward()
        grads[alpha] = net.q.q1.head[-1].bias.grad[1].item()
    # IQL never moves Q at an action the data did not take; the penalty pushes it down (gradient
    # alpha * softmax(1, 3)[1] on its bias)
    assert grads[0.0] == 0.0
    assert grads[0.5] == pytest.approx(0.5 * np.exp(3.0) / (np.exp(1.0) + np.exp(3.0)), rel=1e-5)


def test_conservative_penalty_needs_an_agent_critic():
    with pytest.raises(ValueError, match="critic_conservative"):
        mfd.Config(critic="agent", critic_conservative=-0.1)
    with pytest.raises(ValueError, match="critic_conservative"):
        mfd.Config(critic="population", critic_conservative=1.0)
    cfg = mfd.Config(horizon=2, hidden=16, n_blocks=1, value_hidden=16, critic_hidden=16, critic="auto",
                     critic_conservative=1.0)
    assert mfd.MFDiffuser(cfg, S, A, P, T, critic="agent").critic.conservative == 1.0
    assert mfd.MFDiffuser(cfg, S, A, P, T, critic="population").critic.conservative == 0.0


def test_agent_steps_normalise_like_the_learner():
    learner = _learner("agent")
    learner.state_mean.fill_(1.0)
    learner.state_std.fill_(2.0)
    learner.summary_mean.fill_(0.5)
    batch = _batch(timestep=[2], rewards=[[[0.0, 0.0]]], actions=[[[0, 1]]], mask=[[[True, True]]])
    st = agent_steps(learner, batch)
    assert torch.allclose(st.states[0, :, 0, 0], (batch.states[0, 0, :2, 0] - 1.0) / 2.0)
    assert torch.allclose(st.next_states[0, :, 0, 0], (batch.states[0, 0, 1:, 0] - 1.0) / 2.0)
    assert torch.allclose(st.context[0, 1], learner.context(batch.summaries[0, 1], torch.tensor(3)))


@pytest.mark.parametrize("critic", ["agent", "population"])
def test_critic_trains_in_the_learner_loss_and_target_follows(critic):
    learner = _learner(critic)
    g = torch.Generator().manual_seed(1)
    batch = TrajBatch(
        states=torch.randn(3, 4, 3, S, generator=g), actions=torch.randint(0, A, (3, 4, 2), generator=g),
        rewards=torch.rand(3, 4, 2, generator=g), summaries=torch.rand(3, 3, P, generator=g),
        rtg=torch.rand(3, 4, generator=g), pop_rtg=torch.rand(3, generator=g),
        mask=torch.ones(3, 4, 2, dtype=torch.bool), timestep=torch.tensor([0, 4, 8]),
        episode_return=torch.rand(3, generator=g),
    )
    out = learner.loss(batch)
    assert {"critic_q_loss", "critic_v_loss", "diffusion_loss"} <= set(out.metrics)
    out.loss.backward()
    trainable = learner.critic.trainable()
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable[-2:])
    assert all(p.grad is None for p in learner.critic.net.q_target.parameters())
    before = [p.clone() for p in learner.critic.net.q_target.parameters()]
    with torch.no_grad():
        for p in learner.critic.net.q.parameters():
            p.add_(1.0)
    learner.after_step()
    tau = learner.config.critic_tau
    for b, t, q in zip(before, learner.critic.net.q_target.parameters(), learner.critic.net.q.parameters(),
                       strict=True):
        assert torch.allclose(t, (1 - tau) * b + tau * q, atol=1e-6)


# ------------------------------------------------------------------ with real data, files and the CLI
def _gs_dataset(path):
    from mfdiffuser.data import GenerateConfig, generate_dataset, load_dataset

    generate_dataset(GenerateConfig(env="gaussian-squeeze", out=str(path), env_args={"n_agents": 64},
                                    quality="medium", episodes=6, ref_episodes=2, progress=False))
    return load_dataset(path)


SMALL = {"horizon": 1, "hidden": 16, "n_blocks": 1, "value_hidden": 16, "critic_hidden": 16,
         "m_range": [4, 8], "stats_batches": 2, "levels": [8, 16], "steps_per_level": [4, 4]}


def test_checkpoint_round_trip_of_a_learner_with_critic(tmp_path):
    from mfdiffuser.algos.run import load_run, make_policy, train
    from mfdiffuser.algos.trainer import TrainerConfig
    from mfdiffuser.envs import make

    ds_path = tmp_path / "gs.h5"
    _gs_dataset(ds_path).close()
    options = {**SMALL, "critic": "auto", "critic_support": 0.5, "head_inputs": "both"}
    run = train("mf-diffuser", ds_path, tmp_path / "run", options,
                TrainerConfig(steps=6, batch_size=4, progress=False, ema_start=2, checkpoint_every=3))
    assert run.learner.critic is not None and run.learner.critic.kind == "population"
    loaded = load_run(tmp_path / "run")
    a, b = run.learner.state_dict(), loaded.learner.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("critic.net.q_target") for k in a)
    assert bool(a["critic.net.support_ready"]) and a["critic.net.feature_var"].sum() > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("critic_q_loss" in m for m in metrics)
    env = make("gaussian-squeeze", n_agents=100)
    plans = []
    for r in (run, loaded):
        policy = make_policy(
            r, env, candidates=4, select="softmax", action_decode="head", score_actions="decoded"
        )
        obs, info = env.reset(seed=0)
        policy.reset(env, np.random.default_rng(0))
        policy.act(obs, info)
        plans.append(policy.last_plan)
    assert plans[0].scores is not None and plans[0].scores.shape == (4,)
    np.testing.assert_array_equal(plans[0].actions, plans[1].actions)
    np.testing.assert_array_equal(plans[0].scores, plans[1].scores)


def test_cli_train_and_evaluate_with_candidates(tmp_path, capsys):
    from mfdiffuser.cli import main

    ds_path = tmp_path / "gs.h5"
    _gs_dataset(ds_path).close()
    sets = [w for k, v in {**SMALL, "critic": "agent"}.items()
            for w in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    run_dir = tmp_path / "run"
    assert main(["train", "--algo", "mf-diffuser", "--dataset", str(ds_path), "--out", str(run_dir),
                 "--steps", "4", "--batch-size", "4", "--no-progress", *sets]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(run_dir), "--n-agents", "64", "--episodes", "2", "--seeds", "1",
                 "--policy-opt", "candidates=4", "--policy-opt", "select=best",
                 "--policy-opt", "action_decode=head", "--policy-opt", "score_actions=decoded",
                 "--out", str(out)]) == 0
    assert out.is_file()
    # gaussian-squeeze has no lattice of states to snap to: one line, exit code 2
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir), "--n-agents", "64", "--episodes", "1", "--seeds", "1",
                 "--policy-opt", "action_decode=head", "--policy-opt", "snap_states=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cell_observations" in err[0]
    # a model without critic refuses candidates with one line
    plain = tmp_path / "plain"
    assert main(["train", "--algo", "mf-diffuser", "--dataset", str(ds_path), "--out", str(plain),
                 "--steps", "2", "--batch-size", "4", "--no-progress", *sets[:-2], "--set", "critic=none"]
                ) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(plain), "--n-agents", "64", "--episodes", "1", "--seeds", "1",
                 "--policy-opt", "candidates=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a critic" in err[0]


def test_critic_has_its_own_param_group():
    from mfdiffuser.algos.trainer import TrainerConfig, param_groups

    learner = _learner("agent", critic_lr=1e-3, critic_clip=5.0)
    groups = {g.name: g for g in param_groups(learner, TrainerConfig(lr=3e-4, grad_clip=1.0))}
    assert (groups["critic"].lr, groups["critic"].clip) == (1e-3, 5.0)
    critic_ids = {id(p) for p in learner.critic.parameters() if p.requires_grad}
    assert {id(p) for p in groups["critic"].params} == critic_ids
    others = {id(p) for name, g in groups.items() if name != "critic" for p in g.params}
    assert not critic_ids & others and all(g.lr == 3e-4 for n, g in groups.items() if n != "critic")
    assert "critic" not in {g.name for g in param_groups(_learner("none"), TrainerConfig())}


# ------------------------------------------------------- support penalty of the population critic
@pytest.mark.parametrize("critic", ["population", "agent", "none"])
def test_config_rejects_bad_critic_support(critic):  # negative, or no population critic to penalise
    with pytest.raises(ValueError, match="critic_support"):
        mfd.Config(critic=critic, critic_support=-1.0 if critic == "population" else 1.0)


def test_support_statistics_exist_only_with_the_penalty():
    # without the penalty the critic's state is what it always was: older checkpoints still load
    plain = _learner("population").state_dict()
    assert not any("feature_" in key or "support" in key for key in plain)
    keys = set(_learner("population", critic_support=0.5).state_dict())
    added = {"critic.net.feature_mean", "critic.net.feature_var", "critic.net.support_ready"}
    assert keys - set(plain) == added


def _support_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return _batch(
        timestep=[1, 3, 5],
        rewards=torch.rand(3, 4, 2, generator=g).tolist(),
        actions=torch.randint(0, A, (3, 4, 2), generator=g).tolist(),
        mask=[[[True, True]] * 4] * 3,
    )


def test_support_statistics_track_the_data_features():
    learner = _learner("population", critic_support=0.5).train()
    net = learner.critic.net
    first, second = _support_batch(0), _support_batch(1)
    # the statistics are of the action histograms: per step, the first A of the A + 2S features
    f1 = population_targets(learner, first, net, 0.99).features.view(3, 2, A + 2 * S)[..., :A].flatten(1)
    f2 = population_targets(learner, second, net, 0.99).features.view(3, 2, A + 2 * S)[..., :A].flatten(1)
    assert f1.shape == (3, 4) and torch.allclose(f1.view(3, 2, A).sum(-1), torch.ones(3, 2))
    learner.loss(first)
    torch.testing.assert_close(net.feature_mean, f1.mean(0))
    torch.testing.assert_close(net.feature_var, f1.var(0, correction=0))
    learner.loss(second)  # then a running average, momentum 0.99
    torch.testing.assert_close(net.feature_mean, 0.99 * f1.mean(0) + 0.01 * f2.mean(0))
    learner.eval().loss(first)  # evaluation batches leave the statistics alone
    torch.testing.assert_close(net.feature_mean, 0.99 * f1.mean(0) + 0.01 * f2.mean(0))


def _population_candidates(shares):
    """Candidates of 100 particles (H = 2, S = 1, A = 2): a share of them takes action 1 at both steps."""
    k, m = len(shares), 100
    segments = torch.zeros(k, m, 2, S + A)
    segments[..., S] = 1.0  # action 0 ...
    for i, share in enumerate(shares):
        segments[i, : round(share * m), :, S:] = torch.tensor([0.0, 1.0])  # ... or action 1
    return segments, torch.zeros(k, P + 1)


def test_support_penalty_by_hand_and_its_ranking():
    shares = [0.2, 0.45, 0.6]
    segments, ctx = _population_candidates(shares)
    learner = _learner("population", critic_support=0.04)
    net = learner.critic.net
    # a critic that extrapolates: the fewer action-1 particles the better, without bound
    net.q_value = lambda features, context, target=False: -features[:, 1]
    # the data's histograms: action 1 taken by 60% +- 10% of the particles at each step
    net.feature_mean.copy_(torch.tensor([0.4, 0.6] * 2))
    net.feature_var.copy_(torch.tensor([0.01, 0.01] * 2))
    z2 = torch.tensor([(s - 0.6) ** 2 / 0.01 for s in shares])  # every bin moves by the same amount
    want = -torch.tensor(shares) - 0.04 * z2  # -0.84, -0.54, -0.6
    torch.testing.assert_close(learner.critic.score(segments, ctx), want)
    assert int(want.argmax()) == 1  # the penalty keeps the candidate near the data: 0.45, not 0.2
    net.feature_var.zero_()  # a spread of 0 counts as 0.01: (0.15 / 0.01)^2 for the 0.45 candidate
    assert learner.critic.score(segments, ctx)[1].item() == pytest.approx(-0.45 - 0.04 * 225.0, rel=1e-5)
    net.support = 0.0
    assert int(learner.critic.score(segments, ctx).argmax()) == 0  # without it the critic extrapolates
