"""Quickstart: offline data, training, acting for 10,000 agents and evaluation, in seconds on a CPU.

Run it with ``python examples/quickstart.py [WORKDIR]`` (default: a temporary directory). The budgets
are tiny so that it finishes in a few seconds: the numbers it prints show the API at work, not
what MF-Diffuser can learn (see the README for realistic budgets).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import mfdiffuser as mfd

# A small MF-Diffuser: narrow networks, few particles and denoising steps.
OPTIONS = {
    "hidden": 32,
    "n_blocks": 1,
    "value_hidden": 32,
    "m_range": [8, 16],
    "stats_batches": 2,
    "diffusion_steps": 10,
    "levels": [16, 64],
    "steps_per_level": [4, 2],
}


def main(workdir: Path) -> dict:
    # 1. An offline dataset: 8 episodes of the medium behaviour policy, N = 100 agents.
    data = mfd.generate_dataset(
        mfd.GenerateConfig(
            env="crowd",
            out=str(workdir / "crowd-medium.h5"),
            env_args={"n_agents": 100},
            quality="medium",
            episodes=8,
            ref_episodes=2,
            progress=False,
        )
    )
    meta = mfd.load_dataset(data.path).meta
    print(f"dataset: {meta.env}, N={meta.n_agents}, {meta.n_episodes} episodes, quality {meta.quality}")

    # 2. Train MF-Diffuser briefly (rerunning resumes the run directory instead of starting over).
    trainer = mfd.TrainerConfig(steps=60, batch_size=8, progress=False)
    mfd.train("mf-diffuser", data.path, workdir / "run", OPTIONS, trainer)

    # 3. Load the run and act for a population of 10,000 agents, one step at a time.
    run = mfd.load_run(workdir / "run")
    env = mfd.make("crowd", n_agents=10_000)
    policy = mfd.make_policy(run, env)
    obs, info = env.reset(seed=0)  # obs[N, S]
    policy.reset(env, np.random.default_rng(0))
    total = np.zeros(env.n_agents)
    done = False
    while not done:
        actions = policy.act(obs, info)  # actions[N]
        obs, reward, terminated, truncated, info = env.step(actions)  # reward[N]
        total += reward
        done = bool(np.all(terminated | truncated))
    env.close()
    print(f"acted for {len(actions):,} agents: mean return per agent {total.mean():.4f}")

    # 4. Evaluate the run at two population sizes (normalized score: random 0, expert 100).
    result = mfd.evaluate(run, [100, 10_000], seeds=[0], episodes=1, ref_episodes=1)
    for n, metrics in result["results"].items():
        print(f"N={int(n):>6,}: score {metrics['score']['mean']:.1f}, act {metrics['act_ms']['mean']:.1f} ms")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
