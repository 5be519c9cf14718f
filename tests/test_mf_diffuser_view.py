"""MF-Diffuser on observations that end in an image view: the view conditions, the features are planned."""

import json

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos import mf_planner
from mfdiffuser.algos.trainer import TrainerConfig, fit
from mfdiffuser.diffusion import LevelSchedule, representatives, state_order
from traj_batches import random_batch

F, A, P, T = 3, 4, 5, 10  # planned features, actions, summary, episode length
VIEW = (3, 3, 2)
OBS = F + 18  # observation: the features, then the flattened view


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learner(view_shape=VIEW, **kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=3, hidden=16, n_blocks=1, value_hidden=16, replan_every=1, **kw)
    size = OBS if view_shape is not None else F
    learner = mfd.MFDiffuser(cfg, size, A, P, T, view_shape=view_shape)
    torch.nn.init.normal_(learner.denoiser.out[-1].weight, std=0.1)
    return learner


def _batch(size=OBS, b=3, m=4, h=3, seed=0):
    return random_batch(size, A, P, T, b=b, m=m, h=h, seed=seed, view_from=F)


def test_only_the_features_are_planned_and_the_view_conditions():
    learner = _learner()
    assert (learner.S, learner.obs_size, learner.D) == (F, OBS, F + A)
    assert learner.state_mean.shape == (F,)
    batch = _batch()
    x0 = learner.encode(batch)
    assert x0.shape == (3, 4, 3, F + A)  # no view channels in the segments
    cond = learner.cond_states(batch.states[:, :, 0])
    assert cond.shape == (3, 4, OBS)
    torch.testing.assert_close(cond[..., F:], batch.states[:, :, 0, F:])  # the view passes raw
    assert torch.equal(learner.inpaint(x0, cond)[:, :, 0, :F], cond[..., :F])
    k = torch.zeros(3, dtype=torch.long)
    ctx = learner.context(batch.summaries[:, 0], batch.timestep)
    eps = learner.denoiser(x0, k, cond, ctx)
    assert eps.shape == x0.shape
    other = cond.clone()
    other[..., F:] = 1.0 - other[..., F:]
    assert not torch.allclose(learner.denoiser(x0, k, other, ctx), eps)  # the view reaches the denoiser
    step_ctx = learner.step_context(batch.summaries[:, 0], batch.timestep).unsqueeze(1)
    logits = learner.action_head(x0[..., :F], step_ctx, learner.views(cond))
    assert logits.shape == (3, 4, 3, A)
    assert not torch.allclose(learner.action_head(x0[..., :F], step_ctx, other[..., F:]), logits)
    with pytest.raises(ValueError, match="views"):
        learner.action_head(x0[..., :F], step_ctx)


@pytest.mark.parametrize("head_inputs", ["data", "both"])
def test_the_loss_trains_every_view_encoder(head_inputs):
    learner = _learner(head_inputs=head_inputs, head_denoised_steps=1.0)
    learner.loss(_batch()).loss.backward()
    for name in ("denoiser.obs.view", "value.encoder.obs.view", "action_head.view"):
        grads = [p.grad for n, p in learner.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_a_view_as_large_as_the_observation_is_refused():
    cfg = mfd.Config(horizon=1, replan_every=1, hidden=16, n_blocks=1)
    with pytest.raises(ValueError, match="view"):
        mfd.MFDiffuser(cfg, 18, A, P, T, view_shape=VIEW)


def test_sample_plan_on_views_plans_features_and_decodes_with_the_head():
    learner = _learner().eval()
    rng = np.random.default_rng(0)
    # 16 distinct observations, 3 agents each (N / M = 3), so every block holds one observation
    distinct = np.concatenate([rng.normal(size=(16, F)), rng.random((16, 18))], axis=1)
    states = np.repeat(distinct, 3, axis=0)[rng.permutation(48)].astype(np.float32)
    for decode in ("categorical", "head"):
        plan = mf_planner.sample_plan(
            learner, states, np.zeros(P, np.float32), 2, LevelSchedule((8, 16), (2, 2)), rng,
            torch.Generator().manual_seed(0), action_decode=decode,
        )
        assert plan.actions.shape == (48, 3) and plan.particle_states.shape == (16, 3, F)
        assert plan.actions.min() >= 0 and plan.actions.max() < A
        # the first planned state is the features of the agents that follow the particle (inpainted)
        np.testing.assert_allclose(plan.particle_states[:, 0][plan.assignment], states[:, :F], atol=1e-5)


@pytest.mark.parametrize("critic", ["agent", "population"])
def test_decoded_scoring_on_views_reads_the_head_with_the_views(critic):
    learner = _learner(critic=critic, critic_hidden=16).eval()
    rng = np.random.default_rng(1)
    states = np.concatenate([rng.normal(size=(32, F)), rng.random((32, 18))], axis=1).astype(np.float32)
    seen = []

    def spy(segments, ctx, probs):
        seen.append((segments, probs))
        return learner.critic.score(segments, ctx, probs)

    plan = mf_planner.sample_plan(
        learner, states, np.zeros(P, np.float32), 2, LevelSchedule((8, 16), (2, 2)), np.random.default_rng(2),
        torch.Generator().manual_seed(0), action_decode="head", candidates=3, scorer=spy,
        score_actions="decoded",
    )
    ((segments, probs),) = seen
    assert probs.shape == (3, 8, 3, A) and plan.scores.shape == (3,)
    # the head's law on the candidates' planned features and their agents' views
    reps = representatives(state_order(states, np.random.default_rng(2)), 8)
    cond = learner.cond_states(torch.as_tensor(states[reps]))[None].expand(3, -1, -1)
    step_ctx = learner.step_context(torch.zeros(1, P), torch.tensor([2])).expand(3, -1, -1)
    torch.testing.assert_close(probs, learner.action_probs(segments, "head", step_ctx, cond))


# The compact mode is unchanged: the losses (seed 0) of the model before it learned views, without a
# critic and with each critic.
COMPACT_LOSSES = {
    "none": 8.522558212280273,
    "agent": 9.212231636047363,
    "population": 10.85417366027832,
}


@pytest.mark.parametrize("critic", sorted(COMPACT_LOSSES))
def test_compact_losses_are_unchanged(critic):
    learner = _learner(view_shape=None, critic=critic)
    torch.manual_seed(1)
    out = learner.loss(_batch(size=F, b=3, m=4))
    assert float(out.loss.detach()) == pytest.approx(COMPACT_LOSSES[critic], rel=1e-6)


@pytest.fixture
def view_dataset(battle_view_dataset):
    from mfdiffuser.data import load_dataset

    return load_dataset(battle_view_dataset)


def test_tiny_train_and_plan_on_a_view_dataset(view_dataset, tmp_path):
    from mfdiffuser.data import WindowSampler

    meta = view_dataset.meta
    cfg = mfd.Config(
        horizon=2, m_range=(4, 8), hidden=16, n_blocks=1, value_hidden=16, head_hidden=16,
        levels=(8, 16), steps_per_level=(2, 2), stats_batches=2,
    )
    learner = mfd.build(cfg, meta, view_dataset)
    assert learner.view_shape == (13, 13, 5) and learner.S == 34 and learner.obs_size == 34 + 845
    sampler = WindowSampler(view_dataset, horizon=2, batch_size=4, m_range=cfg.m_range, seed=0)
    trainer = TrainerConfig(steps=6, batch_size=4, log_every=3, progress=False)
    res = fit(learner, sampler, tmp_path / "run", trainer)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert losses and all(np.isfinite(losses))
    env = view_dataset.make_env()
    for decode in ("categorical", "head"):
        policy = mfd.make_policy(res.ema, cfg, env, action_decode=decode)
        obs, info = env.reset(seed=1)
        policy.reset(env, np.random.default_rng(0))
        for _ in range(3):
            actions = policy.act(obs, info)
            assert actions.shape == (16,) and actions.min() >= 0 and actions.max() < env.n_actions
            assert policy.last_plan.particle_states.shape[-1] == 34
            obs, _, term, trunc, info = env.step(actions)
            if term or trunc:
                break
