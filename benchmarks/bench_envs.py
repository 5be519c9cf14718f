"""Env throughput: agent-steps per second of ``env.step`` alone, random actions pre-generated.

Target (SPEC section 8): at least 1e7 agent-steps/s at N = 10,000 on one core for gaussian-squeeze,
ising and crowd. Run: ``python benchmarks/bench_envs.py`` (single-threaded BLAS recommended).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from mfdiffuser.envs import make  # noqa: E402

ENVS = ("gaussian-squeeze", "ising", "crowd", "crowd-2d")
SIZES = (100, 1000, 10000)
TARGET = 1e7
TARGET_ENVS = ("gaussian-squeeze", "ising", "crowd")


def _env_n(name: str, n: int) -> int:
    """Ising needs a perfect square: 1000 becomes 1024 (32 x 32); 100 and 10,000 are squares."""
    return 1024 if (name == "ising" and n == 1000) else n


def measure(name: str, n_agents: int, min_seconds: float = 0.5, n_actions_pool: int = 64) -> float:
    """Agent-steps per second of ``env.step`` for ``name`` at ``n_agents`` (resets excluded)."""
    env = make(name, n_agents=n_agents)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, env.n_actions, size=(n_actions_pool, env.n_agents), dtype=np.int64)
    env.reset(seed=0)
    steps, elapsed, k = 0, 0.0, 0
    while elapsed < min_seconds:
        t0 = time.perf_counter()
        for _ in range(env.horizon):
            env.step(pool[k % n_actions_pool])
            k += 1
        elapsed += time.perf_counter() - t0
        steps += env.horizon
        env.reset()
    return steps * env.n_agents / elapsed


def main(argv: list[str] | None = None) -> dict[tuple[str, int], float]:
    """Print agent-steps/s per env at N = 100, 1000, 10000; return ``{(env, N): rate}``.

    ``argv`` defaults to no arguments (not ``sys.argv``), so other tools can call ``main()``.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per (env, N)")
    parser.add_argument("--envs", nargs="*", default=list(ENVS), help="envs to measure")
    args = parser.parse_args([] if argv is None else argv)
    results: dict[tuple[str, int], float] = {}
    print(f"{'env':<18}{'N':>8}{'agent-steps/s':>16}  target (N = 10,000)")
    for name in args.envs:
        for n in SIZES:
            n_eff = _env_n(name, n)
            rate = measure(name, n_eff, args.seconds)
            results[(name, n_eff)] = rate
            note = ""
            if n == 10000 and name in TARGET_ENVS:
                note = "ok" if rate >= TARGET else f"MISSED (< {TARGET:.0e})"
            print(f"{name:<18}{n_eff:>8}{rate:>16.3e}  {note}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
