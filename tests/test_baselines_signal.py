"""The team-return signal of the weighted per-agent baselines (awbc, mf-iql), pinned by hand."""

import math
import types

import numpy as np
import pytest
import torch

from mfdiffuser.algos import awbc, mf_iql
from mfdiffuser.algos.agentwise import exp_weights, signal_rewards, signal_rtg, td_target
from mfdiffuser.algos.common import steps
from mfdiffuser.data.batch import TrajBatch

META = types.SimpleNamespace(state_size=2, n_actions=3, summary_size=2, horizon=4)


def batch_2x2() -> TrajBatch:
    """Two windows of two agents, H = 2: agent 1 of window 0 lands a kill (+5), nobody else scores."""
    return TrajBatch(
        states=torch.zeros(2, 2, 3, 2),
        actions=torch.zeros(2, 2, 2, dtype=torch.int64),
        rewards=torch.tensor([[[0.0, 0.0], [5.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]),
        summaries=torch.zeros(2, 3, 2),
        rtg=torch.tensor([[0.0, 5.0], [0.0, 0.0]]),
        pop_rtg=torch.tensor([math.log(3.0), 0.0]),
        mask=torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]]),
        timestep=torch.tensor([0, 1]),
        episode_return=torch.zeros(2),
        pop_rewards=torch.tensor([[2.5, 0.0], [0.0, 1.0]]),
    )


def test_signal_rtg_by_hand():
    batch = batch_2x2()
    assert signal_rtg(batch, "agent").tolist() == [[0.0, 5.0], [0.0, 0.0]]
    assert np.allclose(signal_rtg(batch, "team").numpy(), [[math.log(3.0)] * 2, [0.0, 0.0]])


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ("agent", None),  # exp(z) = 1 for three agents, e^5 for the one that killed: see the body
        ("team", [[1.5, 1.5], [0.5, 0.5]]),  # exp(ln 3) = 3 for window 0's agents, 1 for window 1's
    ],
)
def test_awbc_weights_by_hand(signal, expected):
    learner = awbc.build(awbc.Config(signal=signal, beta=1.0, w_max=1e9), META)
    learner.returns.mean.fill_(0.0)
    learner.returns.std.fill_(1.0)
    batch = batch_2x2()
    z = learner.target_returns(batch)
    w, _ = exp_weights(z, beta=1.0, w_max=1e9)  # with V = 0, the weights awbc's loss uses
    if signal == "agent":
        raw = np.array([[1.0, math.exp(5.0)], [1.0, 1.0]])
        expected = (raw * 4 / raw.sum()).tolist()  # self-normalised to mean 1 over the 4 agents
    assert np.allclose(w.numpy(), expected)


def test_awbc_standardises_the_signal_it_weights_by():
    batch = batch_2x2()
    team = awbc.build(awbc.Config(signal="team"), META)
    agent = awbc.build(awbc.Config(signal="agent"), META)
    # real agents at the window's start: all four; the team's value repeats over each window's agents
    assert team.return_values(batch).tolist() == pytest.approx([math.log(3.0)] * 2 + [0.0] * 2)
    assert agent.return_values(batch).tolist() == [0.0, 5.0, 0.0, 0.0]


def test_team_rewards_and_td_targets_by_hand():
    batch = batch_2x2()
    st = steps(batch, episode_length=4)
    assert signal_rewards(st, batch, "agent") is st
    team = signal_rewards(st, batch, "team")
    # [B, H, M]: the team's mean reward for every real transition, 0 where the agent is masked out
    assert team.rewards.tolist() == [[[2.5, 2.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]
    target = td_target(team, torch.ones(2, 2, 2), gamma=0.5, reward_scale=torch.tensor(2.0))
    # r / 2 + 0.5 * (1 - done) * 1; done only where agent 1 of window 0 dies after step 0
    assert st.done.tolist() == [[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    assert np.allclose(target.numpy(), [[[1.75, 1.25], [0.5, 0.5]], [[0.5, 0.5], [1.0, 1.0]]])


def test_team_signal_needs_population_rewards():
    batch = batch_2x2()
    bare = TrajBatch(**{**batch.__dict__, "pop_rewards": None})
    with pytest.raises(ValueError, match="pop_rewards"):
        signal_rewards(steps(bare, 4), bare, "team")


def test_team_signal_trains_mf_iql_and_rejects_unknown_signals():
    learner = mf_iql.build(mf_iql.Config(signal="team", hidden=16), META)
    out = learner.loss(batch_2x2())
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="signal"):
        awbc.Config(signal="population")
