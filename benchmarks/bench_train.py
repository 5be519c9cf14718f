"""Training throughput and acting latency on each device: CPU, and CUDA where present.

For MF-Diffuser and mf-iql with their default configs (batch 64): training steps per second through
the shared trainer (sampling, forward, backward, AdamW, EMA; the rate of the last logged interval
after a warm-up), and the wall time of one act for N = 10,000 agents on crowd (an MF-Diffuser plan
in representatives mode, 128/256/1,024 particles; an mf-iql forward over all agents). CUDA timings
synchronise the device. ``--bf16`` also trains under bfloat16 autocast on CUDA.
``--algos`` measures other learners (``all``: every one), ``--no-act`` training only, ``--threads`` sets
torch's CPU threads (1: the one-thread figure a sweep's runs see).
Run: ``python benchmarks/bench_train.py [--quick] [--algos all] [--no-act] [--devices cpu cuda]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mfdiffuser.algos.base import ALGOS as ALL_ALGOS
from mfdiffuser.algos.run import load_run, make_policy, train
from mfdiffuser.algos.trainer import TrainerConfig
from mfdiffuser.data.generate import GenerateConfig, generate_dataset
from mfdiffuser.envs import make

ALGOS = ("mf-diffuser", "mf-iql")
N_ACT = 10_000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def steps_per_second(algo: str, dataset: Path, run_dir: Path, device: str, warmup: int, steps: int,
                     bf16: bool = False) -> float:
    """Trainer steps/s on ``device``: ``warmup`` steps first, then the rate over ``steps`` more."""
    # one log line at the end of each call: the second one's rate covers exactly the measured steps
    common = {"batch_size": 64, "device": device, "progress": False, "bf16": bf16, "log_every": 10**6}
    train(algo, dataset, run_dir, {}, TrainerConfig(steps=warmup, **common))
    _sync(device)
    train(algo, dataset, run_dir, {}, TrainerConfig(steps=warmup + steps, **common))
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return float(last["steps_per_s"])


def act_seconds(run_dir: Path, device: str, repeats: int) -> float:
    """Median wall seconds of one act (a full plan for MF-Diffuser) for N = 10,000 agents on crowd."""
    run = load_run(run_dir, device=device)
    env = make("crowd", n_agents=N_ACT)
    policy = make_policy(run, env)
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    policy.act(obs, info)  # warm-up
    times = []
    for _ in range(repeats):
        policy.reset(env, np.random.default_rng(0))  # forces a new plan
        _sync(device)
        t0 = time.perf_counter()
        policy.act(obs, info)
        _sync(device)
        times.append(time.perf_counter() - t0)
    env.close()
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--devices", nargs="+", default=None, help="devices (default: cpu, and cuda if present)")
    p.add_argument("--bf16", action="store_true", help="also train under bf16 autocast on CUDA")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--dir", help="working directory (default: a temp dir, removed)")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=[*ALL_ALGOS, "all"],
                   help=f"learners to measure (default: {' '.join(ALGOS)}; all: every one)")
    p.add_argument("--no-act", action="store_true", help="measure training only, not acting")
    p.add_argument("--steps", type=int, help="measured training steps (default 50, 10 with --quick)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    algos = list(ALL_ALGOS) if "all" in args.algos else args.algos
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    warmup, steps, repeats = (3, 10, 2) if args.quick else (10, 50, 5)
    steps = args.steps or steps
    figures: dict[str, dict] = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "os_cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        }
    }
    gpu = figures["machine"]["cuda"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp)
        data = work / "crowd-medium.h5"
        if not data.is_file():
            generate_dataset(GenerateConfig(
                env="crowd", out=str(data), env_args={"n_agents": 1000}, quality="medium", episodes=8,
                ref_episodes=2, progress=False,
            ))
        for device in devices:
            for algo in algos:
                variants = [False] + ([True] if args.bf16 and device.startswith("cuda") else [])
                for bf16 in variants:
                    name = f"{algo}{' bf16' if bf16 else ''} on {device}"
                    run_dir = work / f"{algo}-{device}{'-bf16' if bf16 else ''}"
                    rate = steps_per_second(algo, data, run_dir, device, warmup, steps, bf16)
                    figures[name] = {"train_steps_per_s": rate}
                    line = f"{name:28s} train {rate:8.2f} steps/s"
                    if not args.no_act:
                        act = act_seconds(run_dir, device, repeats)
                        figures[name]["act_s_at_10000"] = act
                        line += f"   act at N=10,000 {act * 1000:9.1f} ms"
                    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
