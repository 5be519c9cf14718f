"""Every method trains and plans on every available device (CPU always; CUDA where present).

Parametrized over ``cpu`` and ``cuda``: the CUDA cases are skipped, not failed, on a machine
without a GPU. Each case trains a tiny model for a few steps on the device, loads the run back onto
it, and acts once for a population of 1,000 agents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mfdiffuser.algos.run import load_run, make_policy, train
from mfdiffuser.algos.trainer import TrainerConfig
from mfdiffuser.diffusion import NoiseSchedule, branch, parent_index
from mfdiffuser.envs import make

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
    ),
]

# Tiny networks: each case is a fraction of a second of compute on a CPU.
TINY: dict[str, dict] = {
    "mf-diffuser": {
        "hidden": 32,
        "n_blocks": 1,
        "value_hidden": 32,
        "m_range": [4, 8],
        "stats_batches": 2,
        "levels": [8, 16],
        "steps_per_level": [2, 2],
        "diffusion_steps": 8,
    },
    # the search and decoding options: both critics ranking K candidates, the action head, the gate
    "mf-diffuser-agent-critic": {"algo": "mf-diffuser", "critic": "agent", "candidates": 3, "gate": True},
    "mf-diffuser-population-critic": {"algo": "mf-diffuser", "critic": "population", "candidates": 3,
                                      "select": "softmax"},
    "mf-diffuser-head": {"algo": "mf-diffuser", "action_decode": "head"},
    "mf-diffuser-bf16": {"algo": "mf-diffuser", "precision": "bfloat16"},  # plans in bfloat16
    "bc": {"hidden": 32},
    "rwbc": {"hidden": 32},
    "awbc": {"hidden": 32},
    "mf-cql": {"hidden": 32},
    "mf-iql": {"hidden": 32},
    "dd-independent": {"hidden": 32, "n_layers": 1, "n_heads": 2, "diffusion_steps": 8, "sample_steps": 3},
    "madiff": {"hidden": 32, "n_layers": 1, "n_heads": 2, "diffusion_steps": 8, "sample_steps": 3},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", list(TINY))
def test_train_and_plan_on_device(algo: str, device: str, gs_dataset: Path, tmp_path: Path) -> None:
    trainer = TrainerConfig(steps=3, batch_size=4, device=device, progress=False, log_every=1)
    options = dict(TINY[algo])
    if "algo" in options:  # a variant: the base method's tiny config with the variant's options on top
        algo = options.pop("algo")
        options = {**TINY[algo], **options}
    trained = train(algo, gs_dataset, tmp_path / "run", options, trainer)
    assert trained.step == 3
    assert {p.device.type for p in trained.learner.parameters()} == {device}
    run = load_run(tmp_path / "run", device=device)
    assert {b.device.type for b in run.learner.buffers()} <= {device}
    env = make("gaussian-squeeze", n_agents=1000)
    policy = make_policy(run, env)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    actions = policy.act(obs, info)
    assert actions.shape == (1000,) and actions.dtype == np.int64
    assert actions.min() >= 0 and actions.max() < env.n_actions
    env.close()


@pytest.mark.parametrize("device", DEVICES)
def test_schedule_coefficients_on_device_match_cpu(device: str) -> None:
    sched = NoiseSchedule(10)
    x0 = torch.linspace(-1, 1, 12).reshape(3, 4)
    noise = torch.full((3, 4), 0.5)
    k = torch.tensor([0, 4, 9])
    on_cpu = sched.add_noise(x0, noise, k)
    on_dev = sched.add_noise(x0.to(device), noise.to(device), k.to(device))
    assert on_dev.device.type == device
    torch.testing.assert_close(on_dev.cpu(), on_cpu)
    # by hand at k = 9 (the noisiest step): sqrt(abar) x0 + sqrt(1 - abar) eps
    abar = float(sched.alphas_cumprod[9])
    expect = abar**0.5 * x0[2] + (1 - abar) ** 0.5 * 0.5
    torch.testing.assert_close(on_dev[2].cpu(), expect)
    back = sched.predict_x0(on_dev, noise.to(device), k.to(device))
    torch.testing.assert_close(back.cpu(), x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_steps_draw_noise_on_the_generators_device(device: str) -> None:
    sched = NoiseSchedule(10)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.zeros(1, 4, 2, 3, device=device)
    out = sched.ddim_step(torch.zeros_like(x), 5, 2, x, eta=1.0, generator=gen)
    assert out.prev_sample.device.type == device and out.prev_sample.abs().sum() > 0
    out = sched.ddpm_step(torch.zeros_like(x), 5, x, generator=gen)
    assert out.prev_sample.device.type == device
    children = branch(x, parent_index(4, 8), 3, sched, gen, x, keep=0.5)
    assert children.shape == (1, 8, 2, 3) and children.device.type == device


def test_bf16_autocast_trains(gs_dataset: Path, tmp_path: Path) -> None:
    """The bf16 option runs (here under CPU autocast) and gives a finite loss."""
    trainer = TrainerConfig(steps=2, batch_size=4, device="cpu", progress=False, log_every=1, bf16=True)
    result = train("mf-iql", gs_dataset, tmp_path / "run", TINY["mf-iql"], trainer)
    assert result.step == 2
    record = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(record) == 2 and "NaN" not in record[-1]
