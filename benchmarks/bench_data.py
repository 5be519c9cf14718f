"""Dataset pipeline benchmark: generation throughput per env, sampler throughput, sampler memory.

    python benchmarks/bench_data.py            # generation per env + sampler at N = 1,000 and 10,000
    python benchmarks/bench_data.py --big      # + peak RSS of sampling a > 2 GiB dataset (minutes)

Figures are printed as a table and, with ``--json PATH``, written as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (env, module that must exist, optional engine, env args, episodes) at N of about 1,000 and 10,000
GEN_CASES = [
    ("gaussian-squeeze", "mfdiffuser.envs.gaussian_squeeze", None, {"n_agents": 1000}, 400),
    ("gaussian-squeeze", "mfdiffuser.envs.gaussian_squeeze", None, {"n_agents": 10000}, 100),
    ("ising", "mfdiffuser.envs.ising", None, {"n_agents": 1024}, 40),
    ("ising", "mfdiffuser.envs.ising", None, {"n_agents": 10000}, 8),
    ("crowd", "mfdiffuser.envs.crowd", None, {"n_agents": 1000}, 60),
    ("crowd", "mfdiffuser.envs.crowd", None, {"n_agents": 10000}, 12),
    ("crowd-2d", "mfdiffuser.envs.crowd", None, {"n_agents": 1000}, 60),
    ("crowd-2d", "mfdiffuser.envs.crowd", None, {"n_agents": 10000}, 12),
    ("battle", "mfdiffuser.envs.battle", "magent2", {"n_agents": 256, "map_size": 80}, 4),
]


def _available(module: str, engine: str | None) -> bool:
    return importlib.util.find_spec(module) is not None and (
        engine is None or importlib.util.find_spec(engine) is not None
    )


def bench_generation(tmp: Path, quick: bool) -> list[dict]:
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset, rollout
    from mfdiffuser.envs import make

    rows = []
    for name, module, engine, args, episodes in GEN_CASES:
        if not _available(module, engine):
            print(f"  {name}: skipped (module or engine absent)")
            continue
        episodes = max(2, episodes // 4) if quick else episodes
        env = make(name, **args)
        # raw rollouts of the medium policy, recording all N agents, no I/O
        policy = env.behaviour_policy("medium")
        rollout(env, policy, 0, 0, None)  # warm up (policies may precompute, e.g. an equilibrium)
        t0, steps, i = time.perf_counter(), 0, 1
        while time.perf_counter() - t0 < (0.5 if quick else 2.0):
            steps += env.n_agents * rollout(env, policy, i, i, None).length
            i += 1
        raw = steps / (time.perf_counter() - t0)
        res = generate_dataset(GenerateConfig(
            env=name, env_args=args, out=str(tmp / f"gen-{name}-{env.n_agents}.h5"), quality="medium",
            episodes=episodes,
            ref_episodes=2, workers=1, progress=False, overwrite=True,
        ))
        size = (tmp / f"gen-{name}-{env.n_agents}.h5").stat().st_size
        rows.append({
            "env": name, "N": env.n_agents, "T": env.horizon, "episodes": episodes,
            "rollout_agent_steps_per_s": raw,
            "generate_agent_steps_per_s": res.agent_steps / res.seconds,
            "generate_seconds": res.seconds, "file_MiB": size / 2**20,
        })
        print(f"  {name:17s} N={env.n_agents:6d} T={env.horizon:4d}: rollout {raw:12,.0f} agent-steps/s, "
              f"end-to-end generate {res.agent_steps / res.seconds:12,.0f} agent-steps/s "
              f"({episodes} episodes + refs in {res.seconds:.1f} s, {size / 2**20:.1f} MiB)")
    return rows


def _time_sampler(sampler, seconds: float) -> float:
    sampler.sample(m=64)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        sampler.sample(m=64)
        n += 1
    return n / (time.perf_counter() - t0)


def bench_sampler(tmp: Path, quick: bool) -> list[dict]:
    import torch

    from mfdiffuser.data import WindowSampler, load_dataset
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    torch.set_num_threads(1)
    rows = []
    for n, episodes in ((1000, 60), (10000, 12)):
        path = tmp / f"sampler-{n}.h5"
        generate_dataset(GenerateConfig(
            env="gaussian-squeeze", env_args={"n_agents": n, "horizon": 20}, out=str(path), quality="medium",
            episodes=episodes, ref_episodes=1, workers=1, progress=False, overwrite=True,
        ))
        for mode in ("memory", "lazy"):
            ds = load_dataset(path, in_memory=(mode == "memory"))
            # lazy: a pool of about a third of the dataset, one chunk block swapped per batch
            cache = ds.nbytes // 3 if mode == "lazy" else 1 << 40
            s = WindowSampler(ds, horizon=8, batch_size=256, m_range=(64, 64), seed=0, cache_bytes=cache)
            rate = _time_sampler(s, 0.5 if quick else 2.0)
            rows.append({"N": n, "K": ds.meta.stored_agents, "mode": mode, "pool_episodes": s.pool_episodes,
                         "episodes": episodes, "batches_per_s": rate})
            print(f"  N={n:6d} K={ds.meta.stored_agents:5d} {mode:6s} (pool {s.pool_episodes}/{episodes} "
                  f"episodes): {rate:8.1f} batches/s (B=256, M=64, H=8)")
            ds.close()
    return rows


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(path: str, batches: int) -> None:
    """Run in a fresh process: load (with the full verification pass) and sample; print JSON."""
    import torch

    from mfdiffuser.data import WindowSampler, load_dataset

    torch.set_num_threads(1)
    base = _rss_mib()
    t0 = time.perf_counter()
    ds = load_dataset(path)
    load_s = time.perf_counter() - t0
    s = WindowSampler(ds, horizon=8, batch_size=256, m_range=(64, 64), seed=0)
    t0 = time.perf_counter()
    for _ in range(batches):
        s.sample()
    rate = batches / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "rss_after_imports_MiB": base, "peak_rss_MiB": peak, "load_verify_s": load_s,
        "in_memory": ds.in_memory, "pool_episodes": s.pool_episodes, "episodes": ds.n_episodes,
        "raw_GiB": ds.nbytes / 2**30, "batches_per_s": rate,
    }))


def bench_big(tmp: Path, workers: int) -> dict:
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    path = tmp / "big.h5"
    # gaussian-squeeze at N = 2,048 (all stored), T = 1,000: 27.4 MiB of raw arrays per episode, 80 episodes
    t0 = time.perf_counter()
    res = generate_dataset(GenerateConfig(
        env="gaussian-squeeze", env_args={"n_agents": 2048, "horizon": 1000}, out=str(path),
        quality="medium", episodes=80, ref_episodes=1, workers=workers, progress=True, overwrite=True,
        compression="none",
    ))
    gen_s = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"  generated {size / 2**30:.2f} GiB on disk in {gen_s:.0f} s "
          f"({res.agent_steps / res.seconds:,.0f} agent-steps/s, {workers} workers)")
    out = subprocess.run([sys.executable, __file__, "--_rss-child", str(path), "300"],
                         capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    child.update({"file_GiB": size / 2**30, "generate_s": gen_s})
    print(f"  sampling it: peak RSS {child['peak_rss_MiB']:.0f} MiB (after imports "
          f"{child['rss_after_imports_MiB']:.0f} MiB), pool {child['pool_episodes']}/{child['episodes']} "
          f"episodes, load+verify {child['load_verify_s']:.1f} s, {child['batches_per_s']:.1f} batches/s")
    return child


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="also measure sampling RSS on a > 2 GiB dataset")
    p.add_argument("--quick", action="store_true", help="fewer episodes and shorter timings")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the big dataset")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--dir", help="working directory for the datasets (default: a temp dir, removed)")
    p.add_argument("--_rss-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._rss_child:
        rss_child(args._rss_child[0], int(args._rss_child[1]))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        print("generation throughput (medium policy, workers=1):")
        figures: dict = {"generation": bench_generation(tmp, args.quick)}
        print("sampler throughput:")
        figures["sampler"] = bench_sampler(tmp, args.quick)
        if args.big:
            print("sampler memory on a > 2 GiB dataset:")
            figures["big"] = bench_big(tmp, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    np.set_printoptions()
    return 0


if __name__ == "__main__":
    sys.exit(main())
