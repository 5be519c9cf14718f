"""Training arithmetic pinned: a few steps of every learner give these exact losses and EMA weights.

A change that only removes overhead (copies, Python loops, fused optimizer or EMA kernels) keeps
every number here bit for bit; a change of arithmetic (another dtype, reduction order or formula)
moves them, and then the pins are updated on purpose, with the reason in the commit. The numbers
were recorded with the CPU build of torch 2.13 on an AVX2 x86-64 CPU, one thread: floating-point
results depend on the kernels a CPU gets, so elsewhere they are checked to a relative 1e-4 only
(which still catches a wrong formula, though not a reordered sum).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfdiffuser.algos.run import train
from mfdiffuser.algos.trainer import TrainerConfig, read_checkpoint

PIN_TORCH = "2.13.0"
PIN_CPU = "AVX2"
STEPS = 4
TINY = {"hidden": 16, "m_range": (3, 6)}
DIFFUSION = {**TINY, "n_layers": 1, "n_heads": 2, "diffusion_steps": 5, "sample_steps": 5}
MFD = {**TINY, "value_hidden": 16, "head_hidden": 16, "stats_batches": 2}

CASES: dict[str, tuple[str, dict]] = {
    "bc": ("bc", TINY),
    "rwbc": ("rwbc", TINY),
    "awbc": ("awbc", TINY),
    "mf-cql": ("mf-cql", TINY),
    "mf-iql": ("mf-iql", TINY),
    "dd-independent": ("dd-independent", DIFFUSION),
    "madiff": ("madiff", DIFFUSION),
    "mf-diffuser": ("mf-diffuser", MFD),
    "mf-diffuser-critic": (
        "mf-diffuser", {**MFD, "critic": "agent", "critic_hidden": 16, "weight_warmup": 1}
    ),
    "mf-diffuser-head-both": ("mf-diffuser", {**MFD, "head_inputs": "both", "head_denoised_steps": 0.5}),
}

# case -> (loss at each step, sum of the final EMA weights)
PINS: dict[str, tuple[list[float], float]] = {
    'bc': (
        [1.0685176849365234, 1.0373456478118896, 1.1352277994155884, 1.003893256187439],
        22.705369419185445,
    ),
    'rwbc': (
        [1.132137656211853, 1.0222046375274658, 1.1487021446228027, 1.0091619491577148],
        22.509431719874556,
    ),
    'awbc': (
        [1.5371453762054443, 1.4330931901931763, 2.001199722290039, 1.4116361141204834],
        21.697360542933893,
    ),
    'mf-cql': (
        [2.6164989471435547, 2.6171977519989014, 2.517282247543335, 2.4997761249542236],
        11.228623024289845,
    ),
    'mf-iql': (
        [1.1474812030792236, 1.126390814781189, 1.2430592775344849, 1.1100821495056152],
        6.515512807880441,
    ),
    'dd-independent': (
        [0.9965371489524841, 0.977539598941803, 0.9963963031768799, 0.9760977625846863],
        46.483887587441686,
    ),
    'madiff': (
        [0.9965371489524841, 0.9774962663650513, 0.9962985515594482, 0.9760506749153137],
        46.19519769136585,
    ),
    'mf-diffuser': (
        [5.990959644317627, 5.410739898681641, 3.2547287940979004, 6.239343643188477],
        181.91006481292953,
    ),
    'mf-diffuser-critic': (
        [6.099945545196533, 5.524139881134033, 3.6084036827087402, 6.329008102416992],
        190.87200472771278,
    ),
    'mf-diffuser-head-both': (
        [5.99237060546875, 4.838169574737549, 3.241558313369751, 6.250552177429199],
        181.9179161383716,
    ),
}


def exact_here() -> bool:
    """Whether this machine runs the kernels the pins were recorded with."""
    return (
        torch.__version__.split("+")[0] == PIN_TORCH
        and torch.backends.cpu.get_cpu_capability() == PIN_CPU
        and torch.get_num_threads() == 1
    )


def make_dataset(out: Path) -> Path:
    """A tiny crowd dataset at ``out``: N = 24, 2 medium episodes."""
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    generate_dataset(
        GenerateConfig(
            env="crowd", out=str(out), env_args={"n_agents": 24}, quality="medium", episodes=2,
            ref_episodes=1, workers=1, progress=False,
        )
    )
    return out


@pytest.fixture(scope="module")
def crowd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("exact") / "crowd.h5")


def run_case(name: str, dataset: Path, run_dir: Path) -> tuple[list[float], float]:
    """Train a case for :data:`STEPS` steps from seed 0; its logged losses and final EMA weight sum."""
    algo, options = CASES[name]
    trainer = TrainerConfig(
        steps=STEPS, batch_size=4, log_every=1, ema_start=1, seed=0, device="cpu", progress=False
    )
    train(algo, dataset, run_dir, dict(options), trainer)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    losses = [float(json.loads(line)["loss"]) for line in lines]
    ema = read_checkpoint(run_dir / "checkpoint.pt")["ema"]
    total = sum(float(t.double().sum()) for t in ema.values() if t.is_floating_point())
    return losses, total


@pytest.mark.parametrize("name", list(CASES))
def test_training_arithmetic_is_pinned(name, crowd_dataset, tmp_path, one_torch_thread):
    losses, ema_sum = run_case(name, crowd_dataset, tmp_path / "run")
    want_losses, want_ema = PINS[name]
    assert len(losses) == STEPS
    if exact_here():
        assert losses == want_losses
        assert ema_sum == want_ema
    else:
        assert losses == pytest.approx(want_losses, rel=1e-4)
        assert ema_sum == pytest.approx(want_ema, rel=1e-4)


def test_runs_repeat_exactly(crowd_dataset, tmp_path, one_torch_thread):
    # on any machine, the same run twice gives the same numbers bit for bit
    first = run_case("mf-iql", crowd_dataset, tmp_path / "a")
    assert run_case("mf-iql", crowd_dataset, tmp_path / "b") == first


if __name__ == "__main__":  # print the pins of this machine
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "crowd.h5")
        for case in CASES:
            print(f"    {case!r}: {run_case(case, data, Path(tmp) / case)!r},")
