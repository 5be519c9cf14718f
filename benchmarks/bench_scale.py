"""Scale: the cost of every acting stage, one episode's time and peak memory at N = 10^4..10^6.

Target (SPEC section 8, scale): one evaluation episode at N = 10^6 for gaussian-squeeze, Ising
(1,000 x 1,000) and crowd; MF-Diffuser's plan (representatives mode) at most 1.5x its cost at
N = 10^4; peak resident memory at most 2 GiB above the N = 10^4 run. Per (env, N), a fresh process
measures, in CPU seconds on one thread (the machine is shared, so wall time would mostly measure the
neighbours): the env step (which computes phi(mu) over all N agents in the same pass), the grouping
(:func:`~mfdiffuser.diffusion.state_order`), the plan (coarse-to-fine denoising with untrained weights,
default levels; timing does not depend on the weights), the lifting of the plan to all N agents, the
per-agent ``bc`` policy's act, then the CPU and wall time of one MF-Diffuser episode and the process's
peak resident set (VmHWM). Each figure is the best of ``--repeats`` runs.
Run: ``python benchmarks/bench_scale.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_planner import best_cpu_time, peak_rss_mib  # noqa: E402  (benchmarks/ is on sys.path)
from mfdiffuser.envs import make  # noqa: E402

ENVS = ("gaussian-squeeze", "ising", "crowd")
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_024, 4_096)
TIMED = ("step", "grouping", "plan", "lifting", "bc act")
"""Stages timed in CPU seconds (the table's columns before the episode's times and the RSS)."""
PLAN_RATIO_TARGET = 1.5
RSS_TARGET_MIB = 2048.0


def measure(env_name: str, n: int, repeats: int, quick: bool) -> dict[str, float]:
    """Each stage's CPU seconds, one episode's CPU and wall seconds, the peak RSS (MiB) at ``n`` agents."""
    from mfdiffuser.algos import bc, mf_planner
    from mfdiffuser.algos import mf_diffuser as mfd
    from mfdiffuser.algos.common import Dims
    from mfdiffuser.diffusion import assign_blocks, state_order
    from mfdiffuser.eval.rollout import run_episode

    env = make(env_name, n_agents=n)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.n_actions, size=n)
    obs, info = env.reset(seed=0)
    out: dict[str, float] = {}

    def step() -> None:
        if env.t >= env.horizon:
            env.reset(seed=0)
        env.step(actions)

    out["step"] = best_cpu_time(step, repeats)
    obs, info = env.reset(seed=0)
    out["grouping"] = best_cpu_time(lambda: state_order(obs, rng), repeats)

    torch.manual_seed(0)
    small = {"hidden": 32, "levels": (16, 64), "steps_per_level": (2, 2), "diffusion_steps": 4}
    cfg = mfd.Config(horizon=4, **(small if quick else {}))
    learner = mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval()
    levels = cfg.level_schedule.capped(n)
    gen = torch.Generator().manual_seed(0)
    out["plan"] = best_cpu_time(
        lambda: mf_planner.sample_plan(learner, obs, info["summary"], 0, levels, rng, gen), repeats
    )
    order = state_order(obs, rng)
    particle_actions = rng.integers(0, env.n_actions, size=(levels.final_size, cfg.horizon))
    out["lifting"] = best_cpu_time(lambda: particle_actions[assign_blocks(order, levels.final_size)], repeats)

    dims = Dims(env.state_size, env.n_actions, env.summary_size, env.horizon)
    agent = bc.BC(bc.Config(hidden=32 if quick else 128), dims).eval()
    policy = bc.make_policy(agent, agent.config, env)
    policy.reset(env, np.random.default_rng(0))
    out["bc act"] = best_cpu_time(lambda: policy.act(obs, info), repeats)

    planner = mfd.make_policy(learner, cfg, env)
    t0, c0 = time.perf_counter(), time.process_time()
    episode = run_episode(env, planner, seed=0, episode=0)
    out["episode wall"] = time.perf_counter() - t0
    out["episode cpu"] = time.process_time() - c0
    out["episode steps"] = float(episode.steps)
    out["peak rss"] = peak_rss_mib()
    return out


def _child(env_name: str, n: int, repeats: int, quick: bool) -> dict[str, float]:
    """Run :func:`measure` in a fresh process, so that its peak RSS belongs to this (env, N) alone."""
    cmd = [sys.executable, __file__, "--child", env_name, str(n), "--repeats", str(repeats)]
    if quick:
        cmd.append("--quick")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{env_name} at N = {n} failed (exit {res.returncode}): {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _env_n(env_name: str, n: int) -> int:
    """Ising needs a perfect square: the nearest one (10^5 becomes 316^2 = 99,856, as ``ising-316x316``)."""
    if env_name != "ising":
        return n
    return round(n**0.5) ** 2


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def main(argv: list[str] | None = None) -> dict[tuple[str, int], dict[str, float]]:
    """Print the per-stage table for every env and N; return ``{(env, N): figures}``.

    ``argv`` defaults to no arguments (not ``sys.argv``), so other tools can call ``main()``.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N and a small model (for tests)")
    parser.add_argument("--envs", nargs="*", default=list(ENVS), help="envs to measure")
    parser.add_argument("--sizes", nargs="*", type=int, default=None, help="population sizes N")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per stage (best kept)")
    parser.add_argument("--child", nargs=2, metavar=("ENV", "N"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(1)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.child is not None:
        print(json.dumps(measure(args.child[0], int(args.child[1]), repeats, args.quick)))
        return {}
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    results: dict[tuple[str, int], dict[str, float]] = {}
    print("per-stage CPU ms on one thread (best of repeats); one MF-Diffuser episode, s; peak RSS MiB")
    header = "".join(f"{s:>10}" for s in TIMED)
    print(f"{'env':<18}{'N':>9}{header}{'episode CPU s':>15}{'wall s':>8}{'RSS MiB':>9}")
    for env_name in args.envs:
        for n in sizes:
            n_env = _env_n(env_name, n)
            r = _child(env_name, n_env, repeats, args.quick)
            results[(env_name, n_env)] = r
            cells = "".join(f"{_ms(r[s]):>10}" for s in TIMED)
            cpu, wall, rss = r["episode cpu"], r["episode wall"], r["peak rss"]
            print(f"{env_name:<18}{n_env:>9}{cells}{cpu:>15.2f}{wall:>8.2f}{rss:>9.0f}", flush=True)
        first = results[(env_name, _env_n(env_name, sizes[0]))]
        last = results[(env_name, _env_n(env_name, sizes[-1]))]
        ratio = last["plan"] / first["plan"]
        extra = last["peak rss"] - first["peak rss"]
        print(
            f"  {env_name}: plan N={sizes[-1]} / N={sizes[0]} = {ratio:.2f} (target <= {PLAN_RATIO_TARGET}); "
            f"peak RSS +{extra:.0f} MiB (target <= {RSS_TARGET_MIB:.0f})"
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
