import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos import mf_planner
from mfdiffuser.algos.trainer import TrainerConfig, fit
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.diffusion import LevelSchedule
from mfdiffuser.envs import make
from traj_batches import random_batch

S, A, P, T = 3, 4, 5, 10


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine has 2 shared cores: oversubscribed intra-op threads slow training down many-fold
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _learner(**kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=3, hidden=16, n_blocks=1, value_hidden=16, replan_every=1, **kw)
    learner = mfd.MFDiffuser(cfg, S, A, P, T)
    torch.nn.init.normal_(learner.denoiser.out[-1].weight, std=0.1)
    return learner


def _batch(b=2, m=5, h=3, seed=0):
    return random_batch(S, A, P, T, b=b, m=m, h=h, seed=seed)


def _repeat_agents(batch, r):
    def rep(x):
        return x.repeat_interleave(r, dim=1)

    return TrajBatch(
        states=rep(batch.states), actions=rep(batch.actions), rewards=rep(batch.rewards),
        summaries=batch.summaries, rtg=rep(batch.rtg), pop_rtg=batch.pop_rtg, mask=rep(batch.mask),
        timestep=batch.timestep, episode_return=batch.episode_return,
    )


def test_config_validation():
    with pytest.raises(ValueError, match="value_source"):
        mfd.Config(value_source="oracle")
    with pytest.raises(ValueError, match="diffusion_steps"):
        mfd.Config(diffusion_steps=10)  # 6 + 6 + 8 steps per level
    with pytest.raises(ValueError, match="replan_every"):
        mfd.Config(horizon=2, replan_every=3)
    with pytest.raises(ValueError, match="increasing"):
        mfd.Config(levels=(64, 16, 128))


def test_encode_layout_and_inpaint():
    learner = _learner()
    batch = _batch()
    x0 = learner.encode(batch)
    assert x0.shape == (2, 5, 3, S + A)
    assert torch.equal(x0[..., :S], batch.states[:, :, :3])  # identity normalisation before statistics
    assert torch.equal(x0[..., S:].argmax(-1), batch.actions)
    assert set(x0[..., S:].unique().tolist()) == {-1.0, 1.0}
    s0 = torch.randn(2, 5, S)
    x = learner.inpaint(torch.randn_like(x0), s0)
    assert torch.equal(x[:, :, 0, :S], s0)


def test_decode_actions_by_hand():
    learner = _learner()
    x0 = torch.zeros(1, 4000, 1, S + A)
    x0[..., S:] = torch.tensor([-1.0, 0.6, 0.2, -0.5])  # positive channels 1 and 2, heights 3 : 1
    x0[0, :1000, 0, S:] = torch.tensor([-0.9, -0.2, -0.8, -0.7])  # none positive -> argmax (1)
    gen = torch.Generator().manual_seed(0)
    cat = learner.decode_actions(x0, gen, "categorical")[0, :, 0]
    assert set(cat[:1000].tolist()) == {1}
    assert (cat[1000:] == 2).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert set(cat[1000:].tolist()) == {1, 2}
    assert set(learner.decode_actions(x0, gen, "argmax")[0, :, 0].tolist()) == {1}


def test_loss_invariant_to_duplicating_every_particle():
    learner = _learner()
    batch = _batch()
    x0 = learner.encode(batch)
    s0, ctx = x0[:, :, 0, :S], learner.context(batch.summaries[:, 0], batch.timestep)
    noise = torch.randn_like(x0)
    k = torch.tensor([3, 17])
    per = learner.denoising_loss(x0, s0, ctx, noise, k, batch.mask).per_particle
    dup = _repeat_agents(batch, 3)
    x0d = learner.encode(dup)
    per_d = learner.denoising_loss(
        x0d, x0d[:, :, 0, :S], ctx, noise.repeat_interleave(3, dim=1), k, dup.mask
    ).per_particle
    assert torch.allclose(per_d.mean(1), per.mean(1), atol=1e-6)
    # the weights of duplicated particles are the duplicated weights
    for weighting in ("segment", "agent"):
        learner = _learner(weighting=weighting, beta=2.0)
        _, c = learner.segment_value(batch)[:2]
        _, cd = learner.segment_value(dup)[:2]
        assert torch.allclose(cd, c.repeat_interleave(3, dim=1), atol=1e-6)


def test_beta_zero_gives_uniform_weights():
    learner = _learner(beta=0.0)
    _, centred, _ = learner.segment_value(_batch())
    w, metrics = learner.weights(centred, torch.ones_like(centred, dtype=torch.bool))
    assert torch.equal(w, torch.ones_like(w))
    assert metrics["ess"] == pytest.approx(1.0)


def test_weights_by_hand():
    learner = _learner(beta=1.0, w_max=20.0).eval()  # eval: no update of the running variance
    learner.value_var.fill_(4.0)  # sd 2
    centred = torch.tensor([[0.0, 2 * math.log(2.0)], [2 * math.log(100.0), 0.0]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    w, metrics = learner.weights(centred, valid)
    raw = torch.tensor([[1.0, 2.0], [20.0, 1.0]])  # exp(1 * c / 2), clipped at 20
    assert torch.allclose(w, raw / raw.mean(), atol=1e-6)
    assert w.mean().item() == pytest.approx(1.0)
    assert metrics["ess"] == pytest.approx(float(raw.sum() ** 2 / (4 * raw.pow(2).sum())), rel=1e-5)


def test_value_source_mc_and_learned_centred_values():
    batch = _batch()
    learner = _learner(value_source="mc", weighting="agent")
    _, c, _ = learner.segment_value(batch)
    assert torch.allclose(c, batch.rtg - batch.rtg.mean(), atol=1e-6)
    learner = _learner(value_source="mc", weighting="segment")
    _, c, _ = learner.segment_value(batch)
    assert torch.allclose(c[:, 0], batch.pop_rtg - batch.pop_rtg.mean(), atol=1e-6)
    learner = _learner(value_source="learned", weighting="agent")
    with torch.no_grad():
        learner.value.head[-1].weight.zero_()
        learner.value.head[-1].bias.fill_(1.5)  # V == 1.5 everywhere
    _, c, _ = learner.segment_value(batch)
    inside = (batch.timestep + 3 < T).float().unsqueeze(1)
    assert torch.allclose(c, batch.rewards.sum(-1) + 1.5 * inside - 1.5, atol=1e-5)
    # an agent that died at the window's last step (next_mask False): no value after its death
    next_mask = (batch.timestep + 3 < T).unsqueeze(1).expand_as(batch.rtg).clone()
    next_mask[0, 0] = False
    _, c_dead, _ = learner.segment_value(dataclasses.replace(batch, next_mask=next_mask))
    assert torch.allclose(c_dead, batch.rewards.sum(-1) + 1.5 * next_mask.float() - 1.5, atol=1e-5)
    assert c_dead[0, 0] != c[0, 0] and torch.equal(c_dead[1:], c[1:])


def test_loss_backpropagates_to_denoiser_and_value():
    learner = _learner()
    out = learner.loss(_batch())
    out.loss.backward()
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert learner.denoiser.inp.weight.grad.abs().sum() > 0
    assert learner.value.head[-1].weight.grad.abs().sum() > 0
    assert {"diffusion_loss", "value_loss", "ess"} <= set(out.metrics)


def test_sample_plan_inpaints_and_lifts_to_every_agent():
    learner = _learner().eval()
    rng = np.random.default_rng(0)
    # 4 distinct states, 75 agents each (a multiple of N / M = 3, so blocks never straddle two states)
    distinct = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    states = np.repeat(distinct, 75, axis=0)[rng.permutation(300)]
    plan = mf_planner.sample_plan(
        learner, states, np.zeros(P, np.float32), 0, LevelSchedule((4, 32, 100), (2, 2, 2)), rng,
        torch.Generator().manual_seed(0),
    )
    assert plan.actions.shape == (300, 3) and plan.particle_actions.shape == (100, 3)
    assert plan.actions.min() >= 0 and plan.actions.max() < A
    # each particle's first state is exactly its representative's (inpainted), and agents in its
    # block share that state (states are grouped before assignment)
    np.testing.assert_allclose(plan.particle_states[:, 0][plan.assignment], states, atol=1e-6)
    # block assignment: every particle is followed by N / M = 3 agents, so histograms match
    assert np.all(np.bincount(plan.assignment, minlength=100) == 3)
    np.testing.assert_array_equal(
        np.bincount(plan.actions[:, 0], minlength=A),
        3 * np.bincount(plan.particle_actions[:, 0], minlength=A),
    )


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("mode", ["representatives", "population"])
def test_every_agent_gets_a_valid_action(n, mode):
    env = make("gaussian-squeeze", n_agents=n, horizon=3)
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=2, hidden=16, n_blocks=1, levels=(4, 16, 64), replan_every=2)
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval()
    policy = mfd.make_policy(learner, cfg, env, mode=mode, population_cap=500)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    expected = min(n, 64) if mode == "representatives" else min(n, 500)
    for _ in range(env.horizon):
        actions = policy.act(obs, info)
        assert actions.shape == (n,) and actions.dtype == np.int64
        assert policy.last_plan.levels.final_size == expected
        obs, _, term, trunc, info = env.step(actions)
    assert trunc


def test_make_policy_rejects_unknown_options_and_wrong_env():
    env = make("gaussian-squeeze", n_agents=10)
    cfg = mfd.Config(horizon=1, replan_every=1, hidden=16, n_blocks=1)
    learner = mfd.MFDiffuser(cfg, 3, 10, 10, 1)
    with pytest.raises(ValueError, match="unknown planner option"):
        mfd.make_policy(learner, cfg, env, temperature=2.0)
    policy = mfd.make_policy(learner, cfg, env)
    with pytest.raises(ValueError, match="trained with"):
        policy.reset(env, np.random.default_rng(0))
    single = mfd.make_policy(mfd.MFDiffuser(cfg, 2, 10, 10, 1), cfg, env, levels=(256,))
    assert single.levels_for(1000) == LevelSchedule((256,), (20,))


# ------------------------------------------------------------------ training on real data
def _gs_dataset(path, n_agents=200, episodes=60):
    from mfdiffuser.data import GenerateConfig, generate_dataset, load_dataset

    generate_dataset(
        GenerateConfig(
            env="gaussian-squeeze", out=str(path), env_args={"n_agents": n_agents}, quality="mixed",
            episodes=episodes, ref_episodes=4, progress=False,
        )
    )
    return load_dataset(path)


def _train_and_score(dataset, run_dir, beta, steps, n_eval=1000, episodes=8):
    from mfdiffuser.data import WindowSampler

    cfg = mfd.Config(
        horizon=1, m_range=(8, 32), hidden=48, n_blocks=2, value_hidden=32, beta=beta, replan_every=1
    )
    learner = mfd.build(cfg, dataset.meta, dataset)
    sampler = WindowSampler(dataset, horizon=1, batch_size=16, m_range=cfg.m_range, seed=0)
    res = fit(learner, sampler, run_dir, TrainerConfig(steps=steps, batch_size=16, lr=3e-3, ema_start=50,
                                                       log_every=50, progress=False))
    env = make("gaussian-squeeze", n_agents=n_eval)
    policy = mfd.make_policy(res.ema, cfg, env)
    returns = []
    for ep in range(episodes):
        obs, info = env.reset(seed=100 + ep)
        policy.reset(env, np.random.default_rng(ep))
        _, r, *_ = env.step(policy.act(obs, info))
        returns.append(r.mean())
    return float(np.mean(dataset.meta.normalized_score(np.array(returns))))


def test_learning_beta_beats_dataset_average(tmp_path):
    torch.manual_seed(0)
    dataset = _gs_dataset(tmp_path / "gs.h5")
    data_score = float(np.mean(dataset.meta.normalized_score(dataset.episode_returns)))
    score = _train_and_score(dataset, tmp_path / "run", beta=2.0, steps=250)
    assert 35 < data_score < 65
    assert score > data_score + 20, (score, data_score)


@pytest.mark.slow
def test_learning_beta_beats_beta_zero(tmp_path):
    torch.manual_seed(0)
    dataset = _gs_dataset(tmp_path / "gs.h5", episodes=100)
    data_score = float(np.mean(dataset.meta.normalized_score(dataset.episode_returns)))
    tilted = _train_and_score(dataset, tmp_path / "b2", beta=2.0, steps=600, episodes=20)
    plain = _train_and_score(dataset, tmp_path / "b0", beta=0.0, steps=600, episodes=20)
    assert tilted > data_score + 25 and tilted > plain + 25, (tilted, plain, data_score)


# ---------------------------------------------------------------------- exact resume
_TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from mfdiffuser.algos.run import train
    from mfdiffuser.algos.trainer import TrainerConfig
    from mfdiffuser.utils import seed_everything


    def main(dataset, run_dir, steps):
        torch.set_num_threads(1)
        seed_everything(0)  # as `mfd train` does: the initial weights come from the global generator
        opts = {"horizon": 1, "m_range": [2, 4], "hidden": 8, "n_blocks": 1, "value_hidden": 8,
                "replan_every": 1, "stats_batches": 2}
        train("mf-diffuser", dataset, run_dir, opts,
              TrainerConfig(steps=int(steps), batch_size=4, log_every=5, checkpoint_every=10,
                            ema_start=5, progress=False, device="cpu"))


    if __name__ == "__main__":
        main(*sys.argv[1:])
    """
)


def _metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("steps_per_s"), r.pop("interval_s")
    return rows


def test_resume_after_kill_continues_the_same_loss_curve(tmp_path):
    _gs_dataset(tmp_path / "gs.h5", n_agents=20, episodes=10)
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    steps = 80
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(run_dir):
        cmd = [sys.executable, str(script), str(tmp_path / "gs.h5"), str(run_dir), str(steps)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # interrupted run: SIGKILL once a checkpoint exists, then rerun the same command
    proc = run(tmp_path / "killed")
    deadline = time.time() + 60
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_metrics(tmp_path / "killed"))
    assert killed_at < steps // 5
    resumed_proc = run(tmp_path / "killed")
    # meanwhile the uninterrupted run, in this process (same code, same single thread)
    namespace: dict = {"__name__": "train_script"}
    exec(compile(_TRAIN_SCRIPT, str(script), "exec"), namespace)
    namespace["main"](str(tmp_path / "gs.h5"), str(tmp_path / "straight"), steps)
    assert resumed_proc.wait(timeout=300) == 0
    resumed, straight = _metrics(tmp_path / "killed"), _metrics(tmp_path / "straight")
    assert len(straight) == steps // 5
    assert resumed == straight


def test_finished_run_resumes_under_other_planner_options_but_not_other_weights(tmp_path):
    from mfdiffuser.algos.run import train
    from mfdiffuser.errors import MfdError

    _gs_dataset(tmp_path / "gs.h5", n_agents=20, episodes=4)
    opts = {"horizon": 1, "m_range": [2, 4], "hidden": 8, "n_blocks": 1, "value_hidden": 8,
            "replan_every": 1, "stats_batches": 2}
    trainer = TrainerConfig(steps=5, batch_size=4, ema_start=1, progress=False)
    run_dir = tmp_path / "run"
    train("mf-diffuser", tmp_path / "gs.h5", run_dir, opts, trainer)
    # a run.json written before a config field existed: the field takes its default
    record = json.loads((run_dir / "run.json").read_text())
    del record["config"]["branch_keep"]
    (run_dir / "run.json").write_text(json.dumps(record))
    # planner-only fields may change: the trained weights are reused (no training step runs)
    ckpt = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    again = train("mf-diffuser", tmp_path / "gs.h5", run_dir, {**opts, "steps_per_level": [10, 5, 5]},
                  trainer)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == ckpt
    assert again.step == 5 and again.config.steps_per_level == (10, 5, 5)
    assert json.loads((run_dir / "run.json").read_text())["config"]["steps_per_level"] == [10, 5, 5]
    # a field that shapes the weights may not
    with pytest.raises(MfdError, match="different run"):
        train("mf-diffuser", tmp_path / "gs.h5", run_dir, {**opts, "hidden": 16}, trainer)


def test_new_options_validated():
    with pytest.raises(ValueError, match="action_decode"):
        mfd.Config(action_decode="vote")
    with pytest.raises(ValueError, match="m_draw"):
        mfd.Config(m_draw="square")
    with pytest.raises(ValueError, match="agents_per_batch"):
        mfd.Config(m_range=(8, 1024), agents_per_batch=512)
    with pytest.raises(ValueError, match="value_lr"):
        mfd.Config(value_lr=0.0)
    with pytest.raises(ValueError, match="value_target_tau"):
        mfd.Config(value_target_tau=1.5)
    with pytest.raises(ValueError, match="weight_warmup"):
        mfd.Config(weight_warmup=-1)
    assert mfd.Config(value_clip=0.0).value_clip == 0.0  # 0: no clip


def test_weight_warmup_keeps_weights_at_one_then_starts_the_scale_from_the_warmed_value():
    learner = _learner(weighting="agent", beta=1.0, weight_warmup=2)
    valid = torch.ones(2, 2, dtype=torch.bool)
    untrained = torch.tensor([[0.0, 60.0], [-60.0, 0.0]])  # a wild untrained value: var 1800
    for _ in range(2):
        w, metrics = learner.weights(untrained, valid)
        assert torch.equal(w, torch.ones(2, 2)) and metrics["ess"] == 1.0
        assert metrics["value_sd"] == pytest.approx(math.sqrt(1800.0))
        learner.after_step()
    assert not bool(learner.value_var_ready)  # the warm-up left the running s.d. alone
    warmed = torch.tensor([[0.0, 2.0], [-2.0, 0.0]])  # var (0 + 4 + 4 + 0) / 4 = 2
    w, metrics = learner.weights(warmed, valid)
    assert learner.value_var.item() == pytest.approx(2.0)
    raw = torch.exp(warmed / math.sqrt(2.0))
    assert torch.allclose(w, raw / raw.mean(), atol=1e-6)


def test_fixed_weight_scale_by_hand():
    learner = _learner(weighting="agent", beta=1.0, weight_scale=0.5)
    learner.return_scale.fill_(4.0)  # s.d. 0.5 x 4 = 2, whatever the batch
    centred = torch.tensor([[0.0, 2 * math.log(3.0)], [0.0, 0.0]])
    w, metrics = learner.weights(centred, torch.ones(2, 2, dtype=torch.bool))
    raw = torch.tensor([[1.0, 3.0], [1.0, 1.0]])
    assert torch.allclose(w, raw / raw.mean(), atol=1e-6)
    assert metrics["value_sd"] == pytest.approx(2.0)


def test_episode_weighting_centres_the_episode_returns():
    batch = _batch(b=3)
    learner = _learner(weighting="episode")
    _, c, _ = learner.segment_value(batch)
    expected = batch.episode_return - batch.episode_return.mean()
    assert torch.allclose(c, expected.unsqueeze(1).expand(3, 5), atol=1e-6)
    learner.weights(c, torch.ones(3, 5, dtype=torch.bool))
    assert learner.value_var.item() == pytest.approx(float(expected.var(correction=0)), rel=1e-5)  # per row


def test_expert_weight_share_by_hand():
    import dataclasses

    learner = _learner(weighting="agent", value_source="mc", beta=1.0, weight_scale=1.0)
    learner.return_scale.fill_(1.0)
    batch = _batch(b=2, m=2)
    # rtg centred to [[0, 0], [ln 3, ln 3]] around their mean: weights 1 and 3 before normalising
    rtg = torch.tensor([[1.0, 1.0], [1.0 + math.log(3.0), 1.0 + math.log(3.0)]])
    batch = dataclasses.replace(batch, rtg=rtg, expert=torch.tensor([False, True]))
    assert learner.loss(batch).metrics["expert_weight_share"] == pytest.approx(0.75, rel=1e-5)
    only_expert = dataclasses.replace(batch, expert=torch.tensor([True, True]))
    assert "expert_weight_share" not in learner.loss(only_expert).metrics  # one kind of episode only


def test_target_value_in_the_advantage_and_its_polyak_update():
    batch = _batch()
    learner = _learner(weighting="agent", value_target_tau=0.25)
    with torch.no_grad():
        learner.value.head[-1].weight.zero_()
        learner.value.head[-1].bias.fill_(1.5)  # online V == 1.5
        learner.value_target.head[-1].weight.zero_()
        learner.value_target.head[-1].bias.fill_(0.5)  # target V == 0.5
    _, c, _ = learner.segment_value(batch)
    inside = (batch.timestep + 3 < T).float().unsqueeze(1)
    assert torch.allclose(c, batch.rewards.sum(-1) + 0.5 * inside - 0.5, atol=1e-5)
    learner.after_step()
    assert learner.value_target.head[-1].bias.item() == pytest.approx(0.75)  # 0.5 + 0.25 (1.5 - 0.5)
    assert learner.weight_step.item() == 1
    assert not any(p.requires_grad for p in learner.value_target.parameters())


def test_param_groups_give_the_value_its_own_lr_and_clip():
    from mfdiffuser.algos.trainer import param_groups

    learner = _learner(value_lr=1e-3, value_clip=10.0)
    groups = param_groups(learner, TrainerConfig(lr=3e-4, grad_clip=1.0))
    assert [(g.name, g.lr, g.clip) for g in groups] == [
        ("denoiser", 3e-4, 1.0), ("value", 1e-3, 10.0), ("action_head", 3e-4, 1.0)
    ]
    learner.loss(_batch()).loss.backward()
    assert learner.action_head.policy[-1].weight.grad.abs().sum() > 0


def test_sample_plan_decodes_with_the_head():
    learner = _learner().eval()
    with torch.no_grad():  # the inverse dynamics always says 2, the last-step policy always 3
        for mlp, a in ((learner.action_head.inverse, 2), (learner.action_head.policy, 3)):
            mlp[-1].weight.zero_()
            mlp[-1].bias.copy_(50.0 * torch.nn.functional.one_hot(torch.tensor(a), A))
    rng = np.random.default_rng(0)
    states = rng.normal(size=(50, S)).astype(np.float32)
    plan = mf_planner.sample_plan(
        learner, states, np.zeros(P, np.float32), 2, LevelSchedule((8, 32), (2, 2)), rng,
        torch.Generator().manual_seed(0), action_decode="head",
    )
    assert plan.actions.shape == (50, 3)
    assert (plan.actions[:, :2] == 2).all() and (plan.actions[:, 2] == 3).all()


def test_a_single_row_leaves_the_per_row_scale_alone():
    learner = _learner(weighting="segment", beta=1.0)
    learner.value_var.fill_(4.0)
    learner.value_var_ready.fill_(True)
    w, _ = learner.weights(torch.full((1, 6), 3.0), torch.ones(1, 6, dtype=torch.bool))
    assert learner.value_var.item() == 4.0 and torch.allclose(w, torch.ones(1, 6))
    learner.weights(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.ones(2, 2, dtype=torch.bool))
    assert learner.value_var.item() == pytest.approx(0.99 * 4.0 + 0.01 * 1.0)


def test_config_rejects_bad_head_inputs():
    with pytest.raises(ValueError, match="head_inputs"):
        mfd.Config(head_inputs="noisy")
    with pytest.raises(ValueError, match="head_denoised_steps"):
        mfd.Config(head_denoised_steps=0.0)


def test_denoising_loss_predicts_the_clean_segment_without_gradient():
    learner = _learner()
    batch = _batch()
    x0 = learner.encode(batch)
    s0, ctx = x0[:, :, 0, :S], learner.context(batch.summaries[:, 0], batch.timestep)
    noise, k = torch.randn_like(x0), torch.tensor([0, 5])
    out = learner.denoising_loss(x0, s0, ctx, noise, k, batch.mask, predict=True)
    plain = learner.denoising_loss(x0, s0, ctx, noise, k, batch.mask)
    assert torch.equal(out.per_particle, plain.per_particle) and plain.x0_hat is None
    # x0-hat = (x_k - sqrt(1 - abar) eps_theta) / sqrt(abar), the current states inpainted
    x_k = learner.inpaint(learner.scheduler.add_noise(x0, noise, k), s0)
    eps = learner.denoiser(x_k, k, s0, ctx)
    abar = learner.scheduler.abar(k).float().view(2, 1, 1, 1)
    want = (x_k - (1 - abar).sqrt() * eps) / abar.sqrt()
    assert not out.x0_hat.requires_grad
    assert torch.allclose(out.x0_hat[:, :, 1:], want[:, :, 1:], atol=1e-5)
    assert torch.equal(out.x0_hat[:, :, 0, :S], s0)
    assert torch.allclose(out.x0_hat[:, :, 0, S:], want[:, :, 0, S:], atol=1e-5)


def test_action_weight_weighs_the_action_channels_of_the_denoising_loss_by_hand():
    batch = _batch()
    plain, weighted = _learner(), _learner(action_weight=3.0)
    x0 = plain.encode(batch)
    s0, ctx = x0[:, :, 0, :S], plain.context(batch.summaries[:, 0], batch.timestep)
    noise, k = torch.randn_like(x0), torch.tensor([0, 5])
    with torch.no_grad():
        x_k = plain.inpaint(plain.scheduler.add_noise(x0, noise, k), s0)
        err = (plain.denoiser(x_k, k, s0, ctx) - noise).pow(2) * batch.mask.unsqueeze(-1)
    # the same network (same seed): a weighted mean over the channels, the step-0 states left out
    states = err[..., :S].sum((-1, -2)) - err[:, :, 0, :S].sum(-1)
    actions = err[..., S:].sum((-1, -2))
    n_steps, first = batch.mask.sum(-1).float(), batch.mask[..., 0].float()
    want = (states + 3.0 * actions) / ((n_steps - first) * S + 3.0 * n_steps * A)
    got = weighted.denoising_loss(x0, s0, ctx, noise, k, batch.mask).per_particle
    assert torch.allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="action_weight"):
        mfd.Config(action_weight=0.0)


def test_a_feature_constant_in_the_data_keeps_off_support_rows_at_their_own_scale():
    # battle's alive flag: 1 on every valid row; a dead agent's row inside a window is all zeros
    learner = _learner()
    batch = _batch(b=4, m=6)
    batch.states[..., 0] = 1.0
    batch.states[..., 1] = 0.05 * batch.states[..., 1]  # small but varying: clamped to 0.01 no lower
    batch.mask[:, 0, 1:] = False
    batch.states[:, 0, 2:, :] = 0.0  # agent 0 dead from step 2
    learner.fit_statistics([batch])
    assert learner.state_std[0] == 1.0 and learner.state_std[1] >= 0.01
    x = learner.encode(batch)
    assert x[:, 1:, :, 0].abs().max() == 0.0  # valid rows: 0, as with any scale
    assert x[:, 0, 2:, 0].eq(-1.0).all()  # the dead rows: (0 - 1) / 1, not (0 - 1) / 0.01
