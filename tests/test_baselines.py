"""Per-agent baselines: loss pieces pinned by hand, and a fast learning probe for each family."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from mfdiffuser.algos import awbc, bc, mf_cql, mf_iql, rwbc
from mfdiffuser.algos.agentwise import AgentwisePolicy, exp_weights, sample_categorical
from mfdiffuser.algos.base import config_from_dict
from mfdiffuser.algos.common import Standardizer, steps
from mfdiffuser.algos.trainer import TrainerConfig, fit, logged_train_seconds
from mfdiffuser.data.batch import TrajBatch

A = 4  # actions of the probe
META = types.SimpleNamespace(state_size=2, n_actions=A, summary_size=2, horizon=1)


def make_batch(B=3, M=5, H=2, S=2, P=2, T=4, seed=0) -> TrajBatch:
    g = torch.Generator().manual_seed(seed)
    return TrajBatch(
        states=torch.randn(B, M, H + 1, S, generator=g),
        actions=torch.randint(0, A, (B, M, H), generator=g),
        rewards=torch.randn(B, M, H, generator=g),
        summaries=torch.rand(B, H + 1, P, generator=g),
        rtg=torch.randn(B, M, generator=g),
        pop_rtg=torch.randn(B, generator=g),
        mask=torch.ones(B, M, H, dtype=torch.bool),
        timestep=torch.tensor([0, 1, 2])[:B],
        episode_return=torch.randn(B, generator=g),
    )


def test_steps_layout_and_terminals():
    batch = make_batch()
    batch.mask[0, 1, 1] = False  # agent 1 of window 0 dies after its first step
    st = steps(batch, episode_length=4)
    assert st.states.shape == (3, 2, 5, 2) and st.context.shape == (3, 2, 3)
    assert torch.equal(st.next_states[1, 0, 3], batch.states[1, 3, 1])
    assert torch.equal(st.actions[2, 1], batch.actions[2, :, 1])
    # t / T of window 1 (t = 1) at its two steps
    assert torch.allclose(st.context[1, :, -1], torch.tensor([0.25, 0.5]))
    # window 2 starts at t = 2: its second transition reaches t + 1 = 4 = T, terminal for all agents
    assert st.done[2, 1].tolist() == [1.0] * 5 and st.done[2, 0].sum() == 0
    assert st.done[0, 0, 1] == 1.0 and st.done[0, 0, 0] == 0.0
    # agent 3 of window 1 dies at the window's last step: only the batch's next_mask says so
    assert st.done[1, 1, 3] == 0.0
    next_mask = torch.ones(3, 5, dtype=torch.bool)
    next_mask[1, 3] = False
    st = steps(dataclasses.replace(batch, next_mask=next_mask), episode_length=4)
    assert st.done[1, 1, 3] == 1.0 and st.done[1].sum() == 1.0


def test_exp_weights_by_hand():
    x = torch.tensor([0.0, 1.0, 2.0, 5.0])
    w, m = exp_weights(x, beta=1.0, w_max=np.exp(3.0))
    raw = torch.tensor([1.0, np.e, np.e**2, np.e**3])
    assert torch.allclose(w, raw * 4 / raw.sum())
    assert w.mean().item() == pytest.approx(1.0)
    assert 0 < m["weight_ess"] < 1
    w, _ = exp_weights(x, beta=0.0, w_max=20.0, mask=torch.tensor([True, True, False, True]))
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])  # mean 1 over the masked entries


def test_standardizer_buffers_roundtrip():
    s = Standardizer().fit(np.array([1.0, 3.0]))
    assert float(s(torch.tensor(3.0))) == pytest.approx(1 / np.sqrt(2))
    other = Standardizer()
    other.load_state_dict(s.state_dict())
    assert float(other.mean) == 2.0
    with pytest.raises(ValueError):
        Standardizer().fit(np.array([np.nan]))


def test_sample_categorical_frequencies():
    rng = np.random.default_rng(0)
    logits = np.log(np.tile([0.1, 0.2, 0.7], (20000, 1)))
    a = sample_categorical(logits, rng)
    assert np.bincount(a, minlength=3) / 20000 == pytest.approx([0.1, 0.2, 0.7], abs=0.015)


@pytest.mark.parametrize("module", [bc, rwbc, awbc, mf_iql, mf_cql])
def test_losses_finite_and_backprop(module):
    learner = module.build(module.Config(horizon=2), META, None)
    out = learner.loss(make_batch())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in learner.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(np.isfinite(v) for v in out.metrics.values())


def test_config_validation():
    with pytest.raises(ValueError):
        bc.Config(acting="argmax")
    with pytest.raises(ValueError):
        rwbc.Config(weight_by="agent")
    with pytest.raises(ValueError):
        config_from_dict(mf_iql.Config, {"expectile": 1.5})
    with pytest.raises(ValueError, match="unknown option"):
        config_from_dict(bc.Config, {"nope": 1})


def test_cql_penalty_by_hand():
    """With Q = 0 everywhere the conservative gap is log A per head; TD is the scaled reward squared."""
    learner = mf_cql.build(mf_cql.Config(alpha=1.0), META, None)
    for p in learner.q.parameters():
        torch.nn.init.zeros_(p)
    batch = make_batch(H=1)
    batch.timestep.fill_(3)  # last step of a T = 4 episode: no bootstrap
    out = learner.loss(batch)
    assert out.metrics["cql_gap"] == pytest.approx(2 * np.log(A), rel=1e-5)
    assert out.metrics["td_loss"] == pytest.approx(2 * float(batch.rewards.pow(2).mean()), rel=1e-5)


class ProbeSampler:
    """A contextual-bandit population: agents of two types, reward 1 for the action equal to the type.

    Mixed data: half the episodes are played by the expert (action = type), half uniformly at
    random, so behaviour cloning gets the right action with probability 0.5 + 0.5 / A only.
    """

    def __init__(self, batch_size=32, m=16, n_episodes=200, n_agents=64, seed=0):
        self.rng = np.random.default_rng(seed)
        g = np.random.default_rng(1000 + seed)
        self.types = g.integers(0, 2, size=(n_episodes, n_agents))
        expert = np.arange(n_episodes) % 2 == 0
        self.actions = np.where(expert[:, None], self.types, g.integers(0, A, size=(n_episodes, n_agents)))
        self.rewards = (self.actions == self.types).astype(np.float32)
        self.B, self.M = batch_size, m

    def sample(self) -> TrajBatch:
        e = self.rng.integers(0, len(self.types), size=self.B)
        i = np.argsort(self.rng.random((self.B, self.types.shape[1])), axis=1)[:, : self.M]
        typ = self.types[e[:, None], i]
        states = np.zeros((self.B, self.M, 2, 2), dtype=np.float32)
        states[:, :, 0, 0] = typ
        states[:, :, 0, 1] = 1.0
        states[:, :, 1] = states[:, :, 0]
        r = self.rewards[e[:, None], i]
        hist = np.stack([1 - self.types.mean(1), self.types.mean(1)], axis=1)[e].astype(np.float32)
        return TrajBatch(
            states=torch.from_numpy(states),
            actions=torch.from_numpy(self.actions[e[:, None], i][:, :, None]),
            rewards=torch.from_numpy(r[:, :, None]),
            summaries=torch.from_numpy(np.stack([hist, hist], axis=1)),
            rtg=torch.from_numpy(r),
            pop_rtg=torch.from_numpy(self.rewards[e].mean(1)),
            mask=torch.ones(self.B, self.M, 1, dtype=torch.bool),
            timestep=torch.zeros(self.B, dtype=torch.int64),
            episode_return=torch.from_numpy(self.rewards[e].mean(1)),
        )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and the machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def probe_accuracy(module, tmp_path, steps=200, **options) -> float:
    """Train on the probe's mixed data; return the probability of the right action under the policy."""
    torch.manual_seed(0)
    config = module.Config(hidden=64, **options)
    learner = module.build(config, META, None)
    sampler = ProbeSampler()
    learner.returns.fit(np.concatenate([learner.return_values(sampler.sample()).numpy() for _ in range(8)]))
    result = fit(
        learner,
        sampler,
        tmp_path,
        TrainerConfig(steps=steps, lr=3e-3, progress=False, ema_start=50, log_every=50),
    )
    env = types.SimpleNamespace(state_size=2, n_actions=A, summary_size=2, n_agents=2)
    policy = module.make_policy(result.ema, config, env)
    obs = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    scores = policy.scores(obs, {"summary": np.array([0.5, 0.5], dtype=np.float32), "t": 0})
    if policy.acting == "greedy":
        return float(np.mean(scores.argmax(1) == [0, 1]))
    p = np.exp(scores / policy.temperature - (scores / policy.temperature).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float((p[0, 0] + p[1, 1]) / 2)


def test_probe_bc_matches_behaviour(tmp_path):
    acc = probe_accuracy(bc, tmp_path)
    assert acc == pytest.approx(0.5 + 0.5 / A, abs=0.06)


@pytest.mark.parametrize(
    ("module", "options"),
    [
        (rwbc, {"beta": 3.0}),
        (awbc, {"beta": 3.0}),
        (mf_iql, {"beta": 5.0}),
        (mf_cql, {"acting": "greedy"}),
    ],
)
def test_probe_value_methods_beat_bc(module, options, tmp_path):
    assert probe_accuracy(module, tmp_path, **options) > 0.85


def test_agentwise_policy_any_n_and_chunks():
    learner = bc.build(bc.Config(), META, None)
    policy = bc.make_policy(
        learner, bc.Config(), types.SimpleNamespace(state_size=2, n_actions=A, summary_size=2)
    )
    info = {"summary": np.array([0.3, 0.7], dtype=np.float32), "t": 0}
    obs = np.random.default_rng(0).random((1000, 2)).astype(np.float32)
    small = AgentwisePolicy(learner.scores, 1, chunk_size=7)
    assert np.allclose(policy.scores(obs, info), small.scores(obs, info), atol=1e-6)
    policy.reset(None, np.random.default_rng(1))
    a = policy.act(obs, info)
    assert a.shape == (1000,) and a.dtype == np.int64 and a.min() >= 0 and a.max() < A
    with pytest.raises(ValueError, match="learner was trained"):
        bc.make_policy(learner, bc.Config(), types.SimpleNamespace(state_size=3, n_actions=A, summary_size=2))
    with pytest.raises(ValueError, match="unknown policy option"):
        bc.make_policy(
            learner, bc.Config(), types.SimpleNamespace(state_size=2, n_actions=A, summary_size=2), beam=3
        )


def test_logged_train_seconds_sums_intervals_across_attempts(tmp_path):
    assert logged_train_seconds(tmp_path) == 0.0  # nothing logged yet
    lines = [
        {"step": 100, "steps_per_s": 10.0},  # older logs: 100 steps at 10 steps/s
        {"step": 200, "steps_per_s": 20.0},
        {"step": 250, "steps_per_s": 25.0, "interval_s": 2.0},  # a resumed attempt's first line
        {"step": 300, "steps_per_s": 10.0, "interval_s": 5.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert logged_train_seconds(tmp_path) == pytest.approx(10.0 + 5.0 + 2.0 + 5.0)
