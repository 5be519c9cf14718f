"""Progressive distillation: a student's one step lands where its teacher's two do; it plans on its grid."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.algos.distill import Distiller, distill, halve, student_config
from mfdiffuser.algos.run import load_run, make_policy, train
from mfdiffuser.algos.trainer import TrainerConfig, fit
from mfdiffuser.cli import main
from mfdiffuser.data import WindowSampler, load_dataset
from mfdiffuser.diffusion import NoiseSchedule
from mfdiffuser.envs import make

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a small model on an 8-step schedule: plans take 6 + 2 steps, so two rounds give 4, then 2
TEACHER = {
    "horizon": 2, "hidden": 32, "n_blocks": 1, "value_hidden": 16, "head_hidden": 16, "stats_batches": 2,
    "diffusion_steps": 8, "levels": [8, 16], "steps_per_level": [6, 2], "m_range": [4, 16],
}


def _trainer(steps, **kw):
    return TrainerConfig(steps=steps, batch_size=8, progress=False, log_every=50, checkpoint_every=100, **kw)


@pytest.fixture(scope="module")
def teacher(gs_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train("mf-diffuser", gs_dataset, out, dict(TEACHER), _trainer(150))
    return out


def test_halving_pairs_every_other_step():
    grid, steps = halve(tuple(range(19, -1, -1)))
    assert grid == tuple(range(19, 0, -2))
    assert steps[0] == (19, 18, 17) and steps[-1] == (1, 0, -1) and len(steps) == 10
    grid, steps = halve((19, 15, 11, 7, 3))  # odd: the last step is the teacher's own, to the clean sample
    assert grid == (19, 11, 3)
    assert steps == [(19, 15, 11), (11, 7, 3), (3, None, -1)]


def test_implicit_step_is_deterministic_ddim_per_row():
    sched = NoiseSchedule(20)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 3, 2, 5, generator=g), torch.randn(4, 3, 2, 5, generator=g)
    k, k_prev = torch.tensor([19, 12, 5, 0]), torch.tensor([15, 3, -1, -1])
    low = torch.tensor([-math.inf] * 3 + [-1.0] * 2)
    batched = sched.implicit_step(eps, k, k_prev, x, clip=(low, -low))
    for i in range(4):
        one = sched.ddim_step(eps[i], int(k[i]), int(k_prev[i]), x[i], eta=0.0, clip=(low, -low))
        torch.testing.assert_close(batched[i], one.prev_sample, rtol=1e-5, atol=1e-5)


def _landing_errors(teacher, student, dataset, transitions):
    """Per transition ``(k, mid, k_next)``: the mean squared distance of the student's one step from
    the teacher's two, over held-out noised segments, by the planner's own update rule."""
    sched, clip = teacher.scheduler, teacher.x0_bounds()
    sampler = WindowSampler(dataset, horizon=2, batch_size=64, m_range=(16, 16), seed=1234)
    gen = torch.Generator().manual_seed(5)
    errors = np.zeros(len(transitions))
    with torch.no_grad():
        for _ in range(3):
            batch = sampler.sample()
            x0, cond = teacher.encode(batch), teacher.cond_states(batch.states[:, :, 0])
            ctx = teacher.context(batch.summaries[:, 0], batch.timestep)
            mask = batch.mask.unsqueeze(-1) * teacher.channel_mask

            def step(model, x, at, to, cond=cond, ctx=ctx):
                eps = model.denoiser(x, torch.full((x.shape[0],), at), cond, ctx)
                return sched.ddim_step(eps, at, to, x, eta=0.0, clip=clip).prev_sample

            for i, (k, mid, k_next) in enumerate(transitions):
                x_k = teacher.inpaint(sched.add_noise(x0, torch.randn(x0.shape, generator=gen), k), cond)
                target = step(teacher, teacher.inpaint(step(teacher, x_k, k, mid), cond), mid, k_next)
                err = (step(student, x_k, k, k_next) - target).pow(2) * mask
                errors[i] += float(err.sum() / mask.sum())
    return errors


def test_a_round_brings_one_student_step_to_two_teacher_steps(gs_dataset, tmp_path):
    # a teacher far from linear (weights drawn wide), so that one of its steps is not already two
    dataset = load_dataset(gs_dataset)
    torch.manual_seed(0)
    config = mfd.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in TEACHER.items()})
    teacher = mfd.build(config, dataset.meta, dataset)
    gen = torch.Generator().manual_seed(1)
    for param in teacher.denoiser.parameters():
        torch.nn.init.normal_(param, std=1.0, generator=gen)
    teacher_grid = tuple(range(7, -1, -1))
    grid, transitions = halve(teacher_grid)
    student = copy.deepcopy(teacher)
    student.config = student_config(config, grid)
    sampler = WindowSampler(dataset, horizon=2, batch_size=32, m_range=(4, 16), seed=0)
    trainer = TrainerConfig(steps=400, batch_size=32, lr=3e-4, ema_start=100, progress=False, log_every=100)
    result = fit(Distiller(student, teacher.eval(), teacher_grid), sampler, tmp_path, trainer)
    stride = _landing_errors(teacher, teacher, dataset, transitions)
    after = _landing_errors(teacher, result.ema.student.eval(), dataset, transitions)
    k, k_next = torch.tensor([t[0] for t in transitions]), torch.tensor([t[2] for t in transitions])
    gains = teacher.scheduler.implicit_gain(k, k_next, torch.zeros(1))
    assert float(gains[0]) > 50 and float(gains[1:].max()) < 1.01  # the first step is the ill-conditioned one
    # every well-conditioned step lands at least twice as close to the teacher's two steps as a stride
    assert (stride[1:] > 0).all() and (after[1:] < 0.5 * stride[1:]).all(), (after, stride)


def test_distilled_run_plans_on_its_grid_and_refuses_other_step_counts(teacher, tmp_path, monkeypatch):
    out = distill(teacher, tmp_path / "d2", rounds=2, trainer=_trainer(20))
    record = json.loads((tmp_path / "d2" / "run.json").read_text())
    assert record["status"] == "done"
    assert record["distillation"]["grids"] == [[7, 6, 5, 4, 3, 2, 1, 0], [7, 5, 3, 1], [7, 3]]
    assert out.config.steps_per_level == (1, 1) and out.config.distilled_grid == (7, 3)
    env = make("gaussian-squeeze", n_agents=50)
    seen = []
    real = mfd.MFDiffuser.sample_timesteps
    monkeypatch.setattr(mfd.MFDiffuser, "sample_timesteps", lambda self, n: seen.append(n) or real(self, n))
    policy = make_policy(out, env)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    policy.act(obs, info)
    assert seen == [2]
    assert out.learner.sample_timesteps(2) == [7, 3]
    with pytest.raises(ValueError, match="distilled to plan in 2 steps"):
        make_policy(out, env, sample_steps=4)
    with pytest.raises(ValueError, match="distilled to plan in 2 steps"):
        out.learner.sample_timesteps(3)


def test_a_distillation_stopped_between_rounds_resumes_to_the_same_student(teacher, tmp_path):
    first = distill(teacher, tmp_path / "a", rounds=2, trainer=_trainer(20))
    weights = {k: v.clone() for k, v in first.learner.state_dict().items()}
    # as if stopped after round 1: round 2 and the export are gone, the record says interrupted
    shutil.rmtree(tmp_path / "a" / "rounds" / "2")
    (tmp_path / "a" / "checkpoint.pt").unlink()
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    (tmp_path / "a" / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    again = distill(teacher, tmp_path / "a", rounds=2, trainer=_trainer(20))
    assert all(torch.equal(weights[k], v) for k, v in again.learner.state_dict().items())
    # the teacher's other weights travel unchanged: only the denoiser was distilled
    t = load_run(teacher).learner.state_dict()
    assert all(torch.equal(t[k], v) for k, v in weights.items() if not k.startswith("denoiser."))
    assert any(not torch.equal(t[k], v) for k, v in weights.items() if k.startswith("denoiser."))


def test_cli_distill_and_its_errors(teacher, gs_dataset, tmp_path, capsys):
    args = ["distill", str(teacher), "--out", str(tmp_path / "c"), "--steps", "5", "--no-progress"]
    assert main(args) == 0
    assert "plans in 4 steps [7, 5, 3, 1]" in capsys.readouterr().out
    assert main(args[:-1]) == 0  # done: nothing to do (with a progress bar or without)
    cases = [
        (["distill", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "not a run directory"),
        (["distill", str(teacher), "--out", str(tmp_path / "x"), "--rounds", "0"], "rounds must be"),
        (["distill", str(teacher), "--out", str(tmp_path / "x"), "--rounds", "3"], "need at least 2 steps"),
        ([a if a != "5" else "6" for a in args], "holds a different run"),
    ]
    bc = tmp_path / "bc"
    train("bc", gs_dataset, bc, {}, _trainer(2))
    cases.append((["distill", str(bc), "--out", str(tmp_path / "y")], "only mf-diffuser runs"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
