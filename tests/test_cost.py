"""Cost estimates: figures by hand, the memory check, and the CLI refusing work that cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfdiffuser import cost
from mfdiffuser.cli import main
from mfdiffuser.cost import AgentCost, CostEstimate
from mfdiffuser.errors import MfdError

TIB = 2**40


def test_format_bytes_and_seconds():
    assert cost.format_bytes(512) == "512 B"
    assert cost.format_bytes(1536) == "1.5 KiB"
    assert cost.format_bytes(7.4 * TIB) == "7.4 TiB"
    assert cost.format_bytes(21.3 * 2**30) == "21.3 GiB"
    assert cost.format_seconds(45) == "45 s"
    assert cost.format_seconds(720) == "12 min"
    assert cost.format_seconds(3.5 * 3600) == "3.5 h"
    assert cost.format_seconds(40 * 86400) == "40 days"


def test_available_memory_reads_memavailable(tmp_path: Path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22334400 kB\n")
    assert cost.available_memory(info) == 22334400 * 1024
    info.write_text("MemTotal: 1 kB\n")
    assert cost.available_memory(info) is None
    assert cost.available_memory(tmp_path / "missing") is None


def test_check_memory_names_both_figures():
    est = CostEstimate("this generation", 7.4 * TIB, None)
    with pytest.raises(MfdError) as info:
        cost.check_memory(est, available=int(21.3 * 2**30))
    assert str(info.value) == (
        "this generation needs about 7.4 TiB of memory, 21.3 GiB available; pass --force to try anyway"
    )
    cost.check_memory(est, available=int(21.3 * 2**30), force=True)  # forced: no error
    cost.check_memory(CostEstimate("x", 2**30, 60.0), available=2**31)


def test_step_and_episode_bytes_by_hand():
    # gaussian-squeeze: S=2, A=10 (uint8 actions): obs 8 + reward 4 + action 1 + alive 1
    assert cost.step_array_bytes(2, 10) == 14
    # K=16, T=200, S=3, A=2 (uint8), P=10: states 201*16*12, actions+rewards 200*16*5, alive 201*16,
    # summaries 201*10*4, population reward 200*8
    expected = 201 * 16 * 12 + 200 * 16 * 5 + 201 * 16 + 201 * 40 + 1600
    assert cost.episode_record_bytes(16, 200, 3, 2, 10) == expected == 67_448


def test_generation_and_evaluation_cost_by_hand():
    agent = AgentCost(1000.0, 20.0, 0.5, 1e-6, measured=True)
    assert agent.bytes_at(10**6) == 1000 + 20e6
    assert agent.step_seconds_at(cost.PROBE_SIZES[1] + 1000) == pytest.approx(0.501)
    est = cost.generation_cost(agent, n_agents=10**6, horizon=10, episode_bytes=500, shard_episodes=4,
                               episodes=8, ref_episodes=1, processes=2)
    assert est.memory_bytes == 2 * (1000 + 20e6 + 2 * 4 * 500) + (8 + 2) * cost.SEED_BYTES
    step = 0.5 + 1e-6 * (10**6 - cost.PROBE_SIZES[1])
    assert est.seconds == pytest.approx((8 + 2) * 10 * step / 2)
    ev = cost.evaluation_cost(agent, n_agents=[100, 10**6], horizon=10, episodes=5, seeds=3)
    per_episode = cost.EPISODE_RESULT_BYTES + cost.ACT_TIME_BYTES * 10
    assert ev.memory_bytes == 1000 + 20e6 + 15 * per_episode
    # references at N = 10^6 only: 7 episodes of random, then of expert, while the 15 records are held
    ev = cost.evaluation_cost(agent, n_agents=[100, 10**6], horizon=10, episodes=5, seeds=3, ref_episodes=7,
                              ref_n_agents=[10**6])
    assert ev.memory_bytes == 1000 + 20e6 + (15 + 7) * per_episode
    step_100 = 0.5 + 1e-6 * (100 - cost.PROBE_SIZES[1])
    assert ev.seconds == pytest.approx(15 * 10 * step_100 + 15 * 10 * step + 2 * 7 * 10 * step)
    unmeasured = AgentCost(0.0, 14.0, 0.0, 0.0, measured=False)
    assert cost.evaluation_cost(unmeasured, n_agents=[100], horizon=1, episodes=1, seeds=1).seconds is None


def test_probe_measures_at_least_the_step_arrays():
    from mfdiffuser.envs import make

    agent = cost.probe_agent_cost(
        lambda n: make("gaussian-squeeze", n_agents=n), lambda env: [env.behaviour_policy("random")], 2, 10
    )
    assert agent.measured
    assert 14 <= agent.per_agent_bytes < 1000
    assert agent.step_seconds > 0


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


GEN = ["data", "generate", "--env", "gaussian-squeeze", "--quality", "medium", "--episodes", "2",
       "--ref-episodes", "1", "--workers", "1", "--quiet"]


@pytest.mark.parametrize(
    "argv",
    [
        [*GEN, "--n-agents", "1000000000000"],
        ["data", "generate", "--env", "ising", "--n-agents", "1000000000000", "--quality", "random",
         "--episodes", "2", "--ref-episodes", "1", "--workers", "2", "--quiet"],
        ["evaluate", "--behaviour", "expert", "--env", "gaussian-squeeze", "--n-agents", "1000000000000",
         "--no-progress"],
        ["evaluate", "--behaviour", "expert", "--env", "ising", "--n-agents", "100", "1000000000000",
         "--no-progress"],
        ["evaluate", "--behaviour", "random", "--env", "gaussian-squeeze", "--n-agents", "100",
         "--episodes", "1000000000000", "--no-progress"],
    ],
    ids=["generate-gs-1e12", "generate-ising-1e12", "evaluate-gs-1e12", "evaluate-ising-1e12",
         "episodes-1e12"],
)
def test_cli_refuses_what_cannot_fit(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "data":
        argv = [*argv, "--out", "o.h5"]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "needs about" in line and ("TiB" in line or "PiB" in line), line
    assert "available; pass --force to try anyway" in line
    assert list(tmp_path.iterdir()) == [], "a refused run leaves nothing behind"


def test_realistic_generation_passes_the_check(tmp_path, monkeypatch, capsys):
    """N = 300,000 (above the probe sizes, so the probe runs) fits and is generated."""
    from mfdiffuser.data.generate import GenerateConfig, estimate_cost

    cfg = GenerateConfig(env="gaussian-squeeze", out=str(tmp_path / "g.h5"), env_args={"n_agents": 300_000},
                         episodes=2, store_agents=16, ref_episodes=1, progress=False)
    est = estimate_cost(cfg)
    assert est is not None and est.seconds is not None
    # at least the step arrays of 300,000 agents, far below a GiB
    assert 300_000 * 14 <= est.memory_bytes < 2**30
    assert main([*GEN, "--n-agents", "300000", "--store-agents", "16", "--out", str(tmp_path / "g.h5")]) == 0
    assert (tmp_path / "g.h5").is_file()


def test_force_skips_the_check(monkeypatch, tmp_path):
    """With --force the estimate is not checked (here: a machine with 1 KiB available)."""
    monkeypatch.setattr(cost, "available_memory", lambda meminfo="": 1024)
    argv = ["evaluate", "--behaviour", "random", "--env", "gaussian-squeeze", "--n-agents", "100",
            "--episodes", "1", "--seeds", "1", "--ref-episodes", "1", "--no-progress"]
    assert main(argv) == 2
    assert main([*argv, "--force"]) == 0


def test_training_batch_cost_by_hand():
    # H = 2, S = 3, P = 5, M = 4, B = 10: per agent 8 * 7 + 4 * 3 * 3 + 25 * 2 = 142 bytes;
    # per row 4 * 142 + 8 * 3 + 4 * 3 * 5 = 652 bytes; the batch 6,520 bytes
    est = cost.training_batch_cost(batch_size=10, m_max=4, horizon=2, state_size=3, summary_size=5)
    assert est.memory_bytes == 6520
    assert est.what == "one training batch" and est.seconds is None


def test_train_refuses_a_batch_that_cannot_fit_before_writing(gs_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--algo", "bc", "--dataset", str(gs_dataset), "--out", str(out), "--steps", "2"]
    code = main([*argv, "--batch-size", "1000000000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "one training batch needs about" in err[0] and "--force" in err[0]
    assert not out.exists()


def test_train_memory_check_and_force(gs_dataset: Path, tmp_path: Path, monkeypatch):
    from mfdiffuser.algos.run import train
    from mfdiffuser.algos.trainer import TrainerConfig

    monkeypatch.setattr(cost, "available_memory", lambda *a, **k: 1024)  # 1 KiB "available"
    trainer = TrainerConfig(steps=2, batch_size=4, progress=False)
    with pytest.raises(MfdError, match="one training batch needs"):
        train("bc", gs_dataset, tmp_path / "refused", trainer=trainer)
    assert not (tmp_path / "refused").exists()
    run = train("bc", gs_dataset, tmp_path / "forced", trainer=trainer, force=True)
    assert run.step == 2
