"""MF-Diffuser planner costs: plan latency vs N, coarse-to-fine vs single level, training step vs N, memory.

Targets (SPEC section 8): representatives-mode plan latency at N = 10,000 at most 1.5x that at N = 100;
K critic-ranked candidate plans at most 1.5x of one plan (``candidates``) at N = 10,000;
coarse-to-fine to N = 1,000 at most 0.35x single-level denoising of 1,000 particles with the same K;
training step time independent of N; peak planning memory flat in N. With ``--fidelity`` a small model
is trained on a dataset (beta = 0) and its plans' first actions, decoded from the action channels
or by the action head, are compared with the data's actions in the same states (total variation).
Timings are process CPU time on one thread (the machine is shared).
Run: ``python benchmarks/bench_planner.py [--fidelity [--fidelity-data PATH]]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfdiffuser.algos import mf_diffuser as mfd  # noqa: E402
from mfdiffuser.algos import mf_planner  # noqa: E402
from mfdiffuser.diffusion import LevelSchedule  # noqa: E402
from mfdiffuser.envs import make  # noqa: E402

SIZES = (100, 1000, 10000)
SCHEDULES = {
    "single 1000 x 20": LevelSchedule((1000,), (20,)),
    "128/256/1000, 12/4/4": LevelSchedule((128, 256, 1000), (12, 4, 4)),
    "16/128/1000, 8/7/5": LevelSchedule((16, 128, 1000), (8, 7, 5)),
    "16/128/1000, 6/6/8": LevelSchedule((16, 128, 1000), (6, 6, 8)),
}


def _learner(env, horizon: int = 4, **options) -> tuple[mfd.MFDiffuser, mfd.Config]:
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=horizon, replan_every=1, **options)
    return mfd.MFDiffuser(cfg, env.state_size, env.n_actions, env.summary_size, env.horizon).eval(), cfg


def best_cpu_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest process CPU time of ``repeats`` calls of ``fn`` after one warm-up call.

    The best of several runs is the figure least disturbed by other work on a shared machine.
    """
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _cpu_time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats


def plan_latency(levels: LevelSchedule, sizes=SIZES, repeats: int = 3) -> dict[int, float]:
    """CPU seconds per plan in representatives mode on ``crowd`` at each N."""
    out = {}
    for n in sizes:
        env = make("crowd", n_agents=n)
        learner, _ = _learner(env)
        obs, info = env.reset(seed=0)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        lv = levels.capped(n)
        plan = functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen)
        out[n] = _cpu_time(plan, repeats)
    return out


SECTIONS = ("latency", "fast", "width", "stride", "c2f", "madiff", "train", "memory", "candidates")
"""Sections of the benchmark (``--only``)."""
STRIDES = (20, 10, 8, 5)
"""Sampling steps per plan compared at N = 10,000 (20 = K: the default schedule, no stride)."""


def stride_latency(n: int = 10000, strides=STRIDES, repeats: int = 3) -> dict[int, float]:
    """CPU seconds per plan (default levels, representatives mode, crowd) at each number of sampling steps.

    Fewer steps than the K = 20 training steps are a DDIM stride over them (``sample_steps``), shared
    among the levels in proportion to the default 12/4/4. Best of ``repeats`` after a warm-up.
    """
    env = make("crowd", n_agents=n)
    learner, cfg = _learner(env)
    obs, info = env.reset(seed=0)
    out = {}
    for k in strides:
        lv = dataclasses.replace(cfg, sample_steps=k).level_schedule.capped(n)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        out[k] = best_cpu_time(
            functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen), repeats
        )
    return out


DEFAULT_LEVELS = (mfd.Config().levels, mfd.Config().steps_per_level)
"""The planner's default (particles, steps) per level."""
FAST_VARIANTS = (
    ("default, eager", DEFAULT_LEVELS, None, False, "float32"),
    ("10 steps, eager", DEFAULT_LEVELS, 10, False, "float32"),
    ("8 steps, eager", DEFAULT_LEVELS, 8, False, "float32"),
    ("fast-512, eager", ((128, 256, 512), (6, 2, 2)), None, False, "float32"),
    ("fast-256, eager", ((64, 128, 256), (12, 4, 4)), None, False, "float32"),
    ("fast-coarse, eager", ((128, 256, 512), (12, 2, 1)), None, False, "float32"),
    ("fast-64, eager", ((64, 256, 512), (12, 2, 2)), None, False, "float32"),
    ("default, bfloat16", DEFAULT_LEVELS, None, False, "bfloat16"),
    ("bf16-512, bfloat16", ((128, 256, 512), (12, 2, 2)), None, False, "bfloat16"),
    ("bf16-10, bfloat16", DEFAULT_LEVELS, 10, False, "bfloat16"),
    ("default, compiled", DEFAULT_LEVELS, None, True, "float32"),
    ("10 steps, compiled", DEFAULT_LEVELS, 10, True, "float32"),
    ("8 steps, compiled", DEFAULT_LEVELS, 8, True, "float32"),
)
"""(label, (particles, steps) per level, sample_steps, compile, precision) of the plans timed by
:func:`fast_variants` (sample_steps None: the steps as listed). The ``fast-*`` and ``bf16*`` schedules
are rows of experiments/ablation.yaml."""


def cpu_features() -> str:
    """The vector instructions torch uses on this CPU, and whether it has bfloat16 matrix instructions."""
    probes = (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
    bf16 = [name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)()]
    return f"{torch.backends.cpu.get_cpu_capability()}, bfloat16: {'+'.join(bf16) or 'none'}"


FAST_TARGET_MS = 120.0
"""Target cost of one plan at N = 10,000 on one CPU thread."""


class FastVariant(NamedTuple):
    """Cost of one planner variant at N = 10,000."""

    plan_s: float
    """Best CPU seconds per plan after the warm-up."""
    first_s: float
    """Wall seconds of the first plan (the compilation of every level, for a compiled variant)."""
    steps: tuple[int, ...]
    """Denoising steps per level."""
    sizes: tuple[int, ...]
    """Particles per level."""


def fast_variants(
    n: int = 10000, variants=FAST_VARIANTS, repeats: int = 3, compile: bool = True
) -> dict[str, FastVariant]:
    """CPU seconds per plan of the default planner and of its fast variants (crowd, representatives mode).

    Every variant plans the same states: eager (``torch.inference_mode``, conditioning once per level),
    compiled (:func:`mf_planner.compiled_denoiser`, static shapes, compiled at the first plan), with the
    denoiser in bfloat16 (:func:`mf_planner.reduced_precision_denoiser`), with fewer sampling steps
    (``sample_steps``: a DDIM stride over the K = 20 training steps), or with other particles and steps
    per level. ``compile=False`` leaves the compiled variants out.
    """
    env = make("crowd", n_agents=n)
    learner, cfg = _learner(env)
    obs, info = env.reset(seed=0)
    out: dict[str, FastVariant] = {}
    for label, (levels, per_level), sample_steps, compiled, precision in variants:
        if compiled and not compile:
            continue
        schedule = dataclasses.replace(
            cfg, levels=levels, steps_per_level=per_level, sample_steps=sample_steps
        )
        lv = schedule.level_schedule.capped(n)
        denoise = mf_planner.planning_denoiser(learner, precision, compiled)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        plan = functools.partial(
            mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen, denoise=denoise
        )
        t0 = time.perf_counter()
        plan()
        first = time.perf_counter() - t0
        out[label] = FastVariant(best_cpu_time(plan, repeats), first, lv.steps, lv.sizes)
    return out


WIDTHS = ((96, 3), (64, 3), (64, 2), (48, 3), (48, 2), (32, 3))
"""(channels, block pairs) of the denoisers timed by :func:`width_latency`; the first is the default, and
48 x 2 is the ablation grid's ``small`` row."""


def width_latency(
    n: int = 10000, widths=WIDTHS, repeats: int = 3
) -> dict[tuple[int, int], tuple[float, int]]:
    """CPU seconds per default plan (crowd, representatives mode) and parameter count of each denoiser size.

    The weights are untrained (a plan's cost does not depend on their values). Best of ``repeats``
    after a warm-up, all sizes planning the same states in one process.
    """
    env = make("crowd", n_agents=n)
    obs, info = env.reset(seed=0)
    out: dict[tuple[int, int], tuple[float, int]] = {}
    for hidden, n_blocks in widths:
        learner, cfg = _learner(env, hidden=hidden, n_blocks=n_blocks)
        lv = cfg.level_schedule.capped(n)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        plan = functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen)
        size = sum(p.numel() for p in learner.denoiser.parameters())
        out[(hidden, n_blocks)] = (best_cpu_time(plan, repeats), size)
    return out


CANDIDATES = (1, 2, 4, 8)
"""K, candidate plans ranked by the critic, timed at N = 10,000 (1: today's planner, no critic call)."""
CANDIDATE_STEPS = ((12, 4, 4), (6, 10, 4), (4, 12, 4))
"""Steps per level (128/256/1,024 particles) timed with candidates: fewer coarse steps make K cheaper."""


def candidate_latency(
    n: int = 10000, ks=CANDIDATES, step_sets=CANDIDATE_STEPS, repeats: int = 3
) -> dict[tuple[int, ...], dict[int, float]]:
    """CPU seconds per plan (representatives mode, crowd, agent critic) for K candidates and steps per level.

    Best of ``repeats`` after a warm-up. The reference of every ratio is K = 1 with the default steps.
    """
    env = make("crowd", n_agents=n)
    learner, cfg = _learner(env, critic="agent")
    obs, info = env.reset(seed=0)
    out: dict[tuple[int, ...], dict[int, float]] = {}
    for steps in step_sets:
        lv = LevelSchedule(cfg.levels, steps).capped(n)
        out[steps] = {}
        for k in ks:
            rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
            plan = functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen,
                                     candidates=k)
            out[steps][k] = best_cpu_time(plan, repeats)
    return out


def coarse_to_fine(repeats: int = 2) -> dict[str, tuple[float, int]]:
    """CPU seconds and particle-steps of each schedule planning N = 1,000 agents."""
    env = make("crowd", n_agents=1000)
    learner, _ = _learner(env)
    obs, info = env.reset(seed=0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    out = {}
    for name, lv in SCHEDULES.items():
        plan = functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, lv, rng, gen)
        out[name] = (_cpu_time(plan, repeats), lv.cost())
    return out


def versus_madiff(n: int = 1000, repeats: int = 1) -> dict[str, float]:
    """CPU seconds per plan of MF-Diffuser (defaults) and of ``madiff`` for N agents of ``crowd``.

    Both plan H = 4 steps with K = 20 denoising steps and untrained weights (timing does not depend on
    them); madiff attends over all N x H tokens of the population, MF-Diffuser over M_L particles.
    """
    from mfdiffuser.algos import madiff
    from mfdiffuser.algos.common import Dims
    from mfdiffuser.algos.return_diffusion import ReturnDiffuser

    env = make("crowd", n_agents=n)
    obs, info = env.reset(seed=0)
    learner, cfg = _learner(env)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    levels = cfg.level_schedule.capped(n)
    plan = functools.partial(mf_planner.sample_plan, learner, obs, info["summary"], 0, levels, rng, gen)
    ours = _cpu_time(plan, repeats)
    torch.manual_seed(0)
    mcfg = madiff.Config(horizon=4, diffusion_steps=20, sample_steps=20)
    joint = ReturnDiffuser(mcfg, Dims(env.state_size, env.n_actions, env.summary_size, env.horizon),
                           scope="joint", population_return=True).eval()
    with torch.no_grad():
        theirs = _cpu_time(functools.partial(joint.plan, obs, info, gen, mcfg), repeats)
    return {"mf-diffuser": ours, "madiff": theirs}


def _train_step(learner: mfd.MFDiffuser, sampler, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    learner.loss(sampler.sample()).loss.backward()
    opt.step()


def train_step_time(sizes=SIZES, steps: int = 10) -> dict[int, float]:
    """CPU seconds per training step on gaussian-squeeze data (H = 4 steps) generated at each N."""
    from mfdiffuser.data import GenerateConfig, WindowSampler, generate_dataset, load_dataset

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"gs-{n}.h5"
            gen_cfg = GenerateConfig(
                env="gaussian-squeeze", out=str(path), quality="medium", episodes=4,
                env_args={"n_agents": n, "horizon": 8}, ref_episodes=1, progress=False,
            )
            generate_dataset(gen_cfg)
            ds = load_dataset(path)
            cfg = mfd.Config(horizon=4, replan_every=1, stats_batches=2)
            torch.manual_seed(0)
            learner = mfd.build(cfg, ds.meta, ds)
            sampler = WindowSampler(ds, horizon=4, batch_size=64, m_range=(32, 32), seed=0)
            opt = torch.optim.AdamW(learner.parameters(), lr=3e-4)
            out[n] = _cpu_time(functools.partial(_train_step, learner, sampler, opt), steps)
    return out


def _peak_rss_child(n: int) -> None:
    env = make("crowd", n_agents=n)
    learner, cfg = _learner(env)
    obs, info = env.reset(seed=0)
    levels = cfg.level_schedule.capped(n)
    rng, gen = np.random.default_rng(0), torch.Generator()
    mf_planner.sample_plan(learner, obs, info["summary"], 0, levels, rng, gen)
    print(f"{peak_rss_mib():.1f}")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; ``ru_maxrss`` would include the parent's before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(sizes=SIZES) -> dict[int, float]:
    """Peak resident set (MiB) of a fresh process that builds the env and plans once at each N."""
    out = {}
    for n in sizes:
        res = subprocess.run([sys.executable, __file__, "--peak-rss-child", str(n)], capture_output=True,
                             text=True, check=True)
        out[n] = float(res.stdout.strip().splitlines()[-1])
    return out


class Fidelity(NamedTuple):
    """How well a decoding reproduces the data's actions in the data's own states (one trained model)."""

    tv: float
    """Total variation between the pooled generated and data histograms of the first planned action."""
    ratios: dict[int, float]
    """Generated share over data share of every action with at least 1% of the data's actions."""


def fidelity(
    steps: int,
    plans: int = 20,
    data: str | None = None,
    decodes: tuple[str, ...] = ("categorical", "head"),
    seed: int = 0,
) -> dict[str, Fidelity]:
    """Train beta = 0 on a dataset (default: gaussian-squeeze ``medium``, N = 1,000), then plan from the data.

    ``plans`` (episode, step) pairs are drawn from the dataset; at each, every stored agent's state and
    the stored summary are given to the planner (default levels), once per decoding. The first
    planned action of the live agents is pooled over plans and compared with the actions the data
    took there. H is 1 on one-step episodes (gaussian-squeeze), 4 otherwise.
    """
    from mfdiffuser.algos.trainer import TrainerConfig, fit
    from mfdiffuser.data import GenerateConfig, WindowSampler, generate_dataset, load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(data) if data else Path(tmp) / "gs.h5"
        if not data:
            generate_dataset(GenerateConfig(env="gaussian-squeeze", out=str(path), quality="medium",
                                            episodes=60, env_args={"n_agents": 1000}, ref_episodes=2,
                                            progress=False))
        ds = load_dataset(path)
        horizon = 1 if ds.meta.horizon == 1 else 4
        cfg = mfd.Config(horizon=horizon, replan_every=1, beta=0.0)
        torch.manual_seed(seed)
        learner = mfd.build(cfg, ds.meta, ds)
        sampler = WindowSampler(ds, horizon=horizon, batch_size=32, m_range=cfg.m_range, seed=seed)
        res = fit(learner, sampler, Path(tmp) / "run", TrainerConfig(steps=steps, batch_size=32, lr=1e-3,
                                                                     progress=False, ema_start=100))
        ema = res.ema.eval()
        rng = np.random.default_rng(seed + 1)
        n_actions = ds.meta.n_actions
        data_counts = np.zeros(n_actions)
        counts = {d: np.zeros(n_actions) for d in decodes}
        for _ in range(plans):
            ep = ds.episode(int(rng.integers(ds.n_episodes)))
            t = int(rng.integers(ep.length))
            alive = ep.alive[t]
            data_counts += np.bincount(ep.actions[t][alive], minlength=n_actions)
            for d in decodes:
                gen = torch.Generator().manual_seed(int(rng.integers(2**32)))
                plan = mf_planner.sample_plan(ema, ep.states[t], ep.summaries[t], t, cfg.level_schedule,
                                       np.random.default_rng(rng.integers(2**32)), gen, action_decode=d)
                counts[d] += np.bincount(plan.actions[alive, 0], minlength=n_actions)
    share = data_counts / data_counts.sum()
    out = {}
    for d, c in counts.items():
        gen = c / c.sum()
        ratios = {int(a): float(gen[a] / share[a]) for a in np.flatnonzero(share >= 0.01)}
        out[d] = Fidelity(float(0.5 * np.abs(gen - share).sum()), ratios)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Print every planner figure; return them in a dict.

    ``argv`` defaults to no arguments (not ``sys.argv``), so other tools can call ``main()``.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fidelity", action="store_true", help="also train a model and compare histograms")
    parser.add_argument("--fidelity-steps", type=int, default=1500, help="training steps of that model")
    parser.add_argument("--fidelity-data", default=None,
                        help="dataset to measure on (default: generate gaussian-squeeze medium, N = 1,000)")
    parser.add_argument("--fidelity-plans", type=int, default=20, help="(episode, step) pairs planned from")
    parser.add_argument("--fidelity-decode", nargs="+", default=["categorical", "head"],
                        choices=mfd.DECODERS, help="action decodings compared")
    parser.add_argument(
        "--only", nargs="*", choices=SECTIONS, default=list(SECTIONS), help="sections to run (default: all)"
    )
    parser.add_argument("--no-compile", action="store_true",
                        help="leave the compiled variants out of the fast section (compiling takes minutes)")
    parser.add_argument("--peak-rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    only = set(args.only)
    torch.set_num_threads(1)
    if args.peak_rss_child is not None:
        _peak_rss_child(args.peak_rss_child)
        return {}
    results: dict[str, object] = {}

    if "latency" in only:
        print("plan latency, representatives mode (crowd, H = 4, hidden 96, K = 20), CPU s per plan")
        for label, lv in (("M_L = 64 (16/64, 10/10)", LevelSchedule((16, 64), (10, 10))),
                          ("default 128/256/1024, 12/4/4", mfd.Config().level_schedule)):
            lat = plan_latency(lv)
            results[f"latency {label}"] = lat
            cells = "  ".join(f"N={n}: {s * 1000:.0f} ms" for n, s in lat.items())
            print(f"  {label:<28} {cells}  ratio 10k/100 = {lat[10000] / lat[100]:.2f} (target <= 1.5)")

    if "fast" in only:
        print("default plan and fast variants at N = 10,000 (crowd; particles and steps per level), "
              f"CPU ms per plan, one thread (target <= {FAST_TARGET_MS:.0f} ms; "
              f"CPU instructions: {cpu_features()})")
        fast = fast_variants(compile=not args.no_compile)
        results["fast"] = fast
        base = next(iter(fast.values())).plan_s
        for label, row in fast.items():
            steps = "/".join(map(str, row.steps))
            particles = "/".join(map(str, row.sizes))
            mark = "meets" if row.plan_s * 1000 <= FAST_TARGET_MS else "misses"
            print(f"  {label:<20} ({particles:>12}, {steps:>7}) {row.plan_s * 1000:7.0f} ms  "
                  f"{row.plan_s / base:.2f}x  first plan {row.first_s:6.1f} s wall  {mark} the target")

    if "width" in only:
        print("default plan at N = 10,000 (crowd, 128/256/1,024, 12/4/4) vs the denoiser's size, "
              f"CPU ms per plan, one thread (target <= {FAST_TARGET_MS:.0f} ms)")
        widths = width_latency()
        results["width"] = widths
        base = widths[WIDTHS[0]][0]
        for (hidden, n_blocks), (sec, size) in widths.items():
            mark = "meets" if sec * 1000 <= FAST_TARGET_MS else "misses"
            print(f"  {hidden:3d} channels x {n_blocks} blocks ({size:7,d} parameters) {sec * 1000:7.0f} ms  "
                  f"{sec / base:.2f}x  {mark} the target")

    if "stride" in only:
        print("plan latency at N = 10,000 vs sampling steps (DDIM stride over K = 20), CPU ms per plan")
        stride = stride_latency()
        results["stride_latency"] = stride
        for k, sec in stride.items():
            levels = dataclasses.replace(mfd.Config(), sample_steps=k).level_schedule
            steps = "/".join(map(str, levels.steps))
            ratio = sec / stride[STRIDES[0]]
            print(f"  {k:2d} steps ({steps:>7}) {sec * 1000:7.0f} ms  {ratio:.2f}x of K = 20")

    if "c2f" in only:
        print("coarse-to-fine vs single level, N = 1,000, K = 20 (CPU s per plan, particle-steps)")
        c2f = coarse_to_fine()
        results["coarse_to_fine"] = c2f
        base = c2f["single 1000 x 20"][0]
        for name, (sec, cost) in c2f.items():
            ratio = f"{sec / base:.2f}x (target <= 0.35)"
            print(f"  {name:<22} {sec * 1000:7.0f} ms  {cost:6d} particle-steps  {ratio}")

    if "madiff" in only:
        print("plan at N = 1,000 (crowd, H = 4, K = 20): MF-Diffuser defaults vs madiff, CPU s per plan")
        vs = versus_madiff()
        results["versus_madiff"] = vs
        speedup = vs["madiff"] / vs["mf-diffuser"]
        print(f"  mf-diffuser {vs['mf-diffuser'] * 1000:.0f} ms  madiff {vs['madiff'] * 1000:.0f} ms  "
              f"speedup {speedup:.1f}x (target >= 20)")

    if "train" in only:
        print("training step (B = 64, M = 32, H = 4) on data generated at each N, CPU s")
        ts = train_step_time()
        results["train_step"] = ts
        print("  " + "  ".join(f"N={n}: {s * 1000:.0f} ms" for n, s in ts.items()))

    if "memory" in only:
        print("peak RSS of a process planning once (default levels, representatives), MiB")
        mem = peak_memory()
        results["peak_memory"] = mem
        print("  " + "  ".join(f"N={n}: {v:.1f}" for n, v in mem.items()))

    if "candidates" in only:
        print("critic-guided search at N = 10,000 (crowd, agent critic, 128/256/1,024), CPU ms per plan")
        cand = candidate_latency()
        results["candidates"] = cand
        base = cand[CANDIDATE_STEPS[0]][1]
        for steps, by_k in cand.items():
            cells = "  ".join(f"K={k}: {sec * 1000:.0f} ms ({sec / base:.2f}x)" for k, sec in by_k.items())
            print(f"  steps {'/'.join(map(str, steps)):>7}  {cells}  (target <= 1.5x of K=1 12/4/4)")

    if args.fidelity:
        where = args.fidelity_data or "gaussian-squeeze medium (N = 1,000)"
        print(f"action fidelity on {where}, beta = 0, {args.fidelity_steps} steps, "
              f"{args.fidelity_plans} plans "
              "from data states: pooled TV to the data (target <= 0.01), generated / data share of "
              "each action with >= 1% of the data (target 0.9-1.1)")
        fid = fidelity(
            args.fidelity_steps, args.fidelity_plans, args.fidelity_data, tuple(args.fidelity_decode)
        )
        results["fidelity"] = fid
        for name, row in fid.items():
            ratios = " ".join(f"{a}:{r:.2f}" for a, r in row.ratios.items())
            print(f"  {name:<12} TV {row.tv:.4f}  ratios {ratios}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
