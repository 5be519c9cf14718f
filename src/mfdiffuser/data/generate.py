"""Seeded, parallel, resumable generation of offline datasets with the envs' behaviour policies.

Episode i gets its seeds from ``SeedSequence(seed).spawn(2)[0].spawn(E)[i]``, split into an env seed
(``env.reset(seed=...)``), a policy seed (the behaviour policy's generator) and a subset seed (which
K agents are stored), so results do not depend on the number of workers or on interruptions.
Finished episodes land as files in ``<out>.partial/``; finalizing writes the HDF5 file atomically.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfdiffuser.cost import CostEstimate
from mfdiffuser.data.dataset import (
    DATASET_QUALITIES,
    SCHEMA_VERSION,
    DatasetMeta,
    EpisodeRecord,
    action_dtype,
    write_dataset,
)
from mfdiffuser.errors import MfdError
from mfdiffuser.progress import ProgressBar
from mfdiffuser.utils import atomic_path, check_not_dangling, die_with_parent, utc_timestamp

DEFAULT_MAX_STORED_AGENTS = 2048
"""Without ``store_agents``, all N agents are stored up to this N, and this many otherwise."""
REFERENCE_QUALITIES: tuple[str, ...] = ("random", "expert")
COMPRESSIONS: tuple[str, ...] = ("gzip", "lzf", "none")


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate; every field but the execution ones is part of the dataset's identity."""

    env: str
    """Env name or named setting (``mfd envs``)."""
    out: str
    """Output ``.h5`` path."""
    env_args: dict[str, Any] = field(default_factory=dict)
    """Env constructor arguments (override a setting's), e.g. ``{"n_agents": 1000}``."""
    quality: str = "medium"
    """expert, medium, random or mixed (even episodes random, odd episodes expert)."""
    episodes: int = 100
    """E, number of episodes."""
    seed: int = 0
    """Master seed."""
    store_agents: int | None = None
    """K agents stored per episode (random subset); None: all up to 2,048, else 2,048."""
    ref_episodes: int = 10
    """Episodes per reference policy (random, expert) for the reference returns."""
    split: str = ""
    """Split the dataset belongs to (``test``, ``validation``; empty: none); ``seed`` must lie in
    that split's range (:func:`mfdiffuser.splits.data_seed`). Recorded in the metadata."""
    workers: int = 1
    """Parallel worker processes (or Ray tasks in flight); <= 1 runs in this process."""
    use_ray: bool = False
    """Run episodes as Ray tasks (``ray.init(address=ray_address)``)."""
    ray_address: str | None = None
    """Ray cluster address; None starts or joins a local Ray."""
    overwrite: bool = False
    """Replace an existing output file, and discard an unfinished run with other settings."""
    compression: str = "gzip"
    """HDF5 chunk compression: gzip (portable), lzf (faster, h5py only) or none."""
    compression_level: int = 4
    """gzip level of the HDF5 chunks."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Start even when the estimated memory exceeds what the machine has available."""


@dataclass(frozen=True)
class GenerateResult:
    """Outcome of :func:`generate_dataset`."""

    path: Path
    n_episodes: int
    resumed_episodes: int
    """Episodes found finished in the work directory (not rerun)."""
    stored_agents: int
    n_agents: int
    agent_steps: int
    """Agent-steps simulated in this call (data and reference episodes, all N agents)."""
    seconds: float
    checksum: str
    ref_returns: dict[str, float]


@dataclass(frozen=True)
class _Job:
    """Picklable description of the run shared by all tasks."""

    env: str
    env_args: dict[str, Any]
    stored_agents: int
    workdir: str


@dataclass(frozen=True)
class _Task:
    """A shard of consecutive data episodes ``start:stop``, or one reference rollout."""

    kind: str  # "shard" or "ref"
    start: int
    stop: int
    qualities: tuple[str, ...]
    seeds: tuple[tuple[int, ...], ...]
    """Per episode ``(env_seed, policy_seed, subset_seed)`` (reference: ``(env_seed, policy_seed)``)."""

    @property
    def n_episodes(self) -> int:
        return self.stop - self.start

    @property
    def filename(self) -> str:
        if self.kind == "shard":
            return f"ep-{self.start:07d}-{self.stop:07d}.npz"
        return f"ref-{self.qualities[0]}-{self.start:05d}.json"


# ---------------------------------------------------------------------------------------- seeds
def _ints(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0])


def episode_seeds(seed: int, n_episodes: int) -> list[tuple[int, int, int]]:
    """``(env_seed, policy_seed, subset_seed)`` of each data episode, from the master seed."""
    data_root = np.random.SeedSequence(seed).spawn(2)[0]
    return [tuple(_ints(s) for s in child.spawn(3)) for child in data_root.spawn(n_episodes)]  # type: ignore[misc]


def reference_seeds(seed: int, quality: str, n_episodes: int) -> list[tuple[int, int]]:
    """``(env_seed, policy_seed)`` of the reference rollouts of ``quality`` (random or expert)."""
    ref_root = np.random.SeedSequence(seed).spawn(2)[1]
    q_root = ref_root.spawn(len(REFERENCE_QUALITIES))[REFERENCE_QUALITIES.index(quality)]
    return [tuple(_ints(s) for s in child.spawn(2)) for child in q_root.spawn(n_episodes)]  # type: ignore[misc]


def episode_quality(quality: str, index: int) -> str:
    """Behaviour label of episode ``index`` in a dataset of ``quality`` (mixed: even random, odd expert)."""
    if quality == "mixed":
        return "random" if index % 2 == 0 else "expert"
    return quality


def default_stored_agents(n_agents: int) -> int:
    return min(n_agents, DEFAULT_MAX_STORED_AGENTS)


def shard_size(n_episodes: int, stored_agents: int, state_size: int, horizon: int) -> int:
    """Episodes per work unit: about one HDF5 chunk row (1 MiB of states), and >= 16 units when E >= 16.

    Depends only on the dataset's identity, never on the worker count, so a resumed run with other
    workers finds the same units.
    """
    episode_bytes = max(1, stored_agents * state_size * 4 * (horizon + 1))
    return max(1, min((1 << 20) // episode_bytes, n_episodes // 16))


# ------------------------------------------------------------------------------------ rollouts
def rollout(
    env: Any,
    policy: Any,
    env_seed: int,
    policy_seed: int,
    agent_index: np.ndarray | None,
    quality: str = "",
) -> EpisodeRecord:
    """Run one episode and record it for the agents in ``agent_index`` (all N when None).

    The env's randomness comes from ``env.reset(seed=env_seed)`` only and the policy's from a
    generator seeded with ``policy_seed``, so replaying the stored actions after
    ``env.reset(seed=env_seed)`` reproduces the observations and rewards.
    """
    n, t_max = env.n_agents, env.horizon
    idx = np.arange(n) if agent_index is None else np.asarray(agent_index)
    k = idx.shape[0]
    all_agents = agent_index is None or k == n
    states = np.zeros((t_max + 1, k, env.state_size), dtype=np.float32)
    actions = np.zeros((t_max, k), dtype=action_dtype(env.n_actions))
    rewards = np.zeros((t_max, k), dtype=np.float32)
    alive = np.zeros((t_max + 1, k), dtype=bool)
    summaries = np.zeros((t_max + 1, env.summary_size), dtype=np.float32)
    pop_reward = np.zeros(t_max, dtype=np.float64)

    def pick(x: np.ndarray) -> np.ndarray:
        return x if all_agents else x[idx]

    obs, info = env.reset(seed=env_seed)
    policy.reset(env, np.random.default_rng(policy_seed))
    states[0], alive[0], summaries[0] = pick(obs), pick(info["alive"]), info["summary"]
    terminated = truncated = False
    t = 0
    while t < t_max and not (terminated or truncated):
        a = policy.act(obs, info)
        obs, r, terminated, truncated, info = env.step(a)
        actions[t], rewards[t] = pick(a), pick(r)
        pop_reward[t] = float(np.mean(r, dtype=np.float64))
        t += 1
        states[t], alive[t], summaries[t] = pick(obs), pick(info["alive"]), info["summary"]
    states[t + 1 :] = states[t]
    summaries[t + 1 :] = summaries[t]
    return EpisodeRecord(
        states=states, actions=actions, rewards=rewards, alive=alive, summaries=summaries,
        pop_reward=pop_reward, length=t, terminated=bool(terminated), truncated=bool(truncated),
        quality=quality, env_seed=int(env_seed), policy_seed=int(policy_seed),
        agent_index=idx.astype(np.int32),
    )


def reference_return(env: Any, policy: Any, env_seed: int, policy_seed: int) -> float:
    """Per-agent mean undiscounted return of one episode (mean over all N agents)."""
    obs, info = env.reset(seed=env_seed)
    policy.reset(env, np.random.default_rng(policy_seed))
    total = 0.0
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(policy.act(obs, info))
        total += float(np.mean(r, dtype=np.float64))
        done = terminated or truncated
    return total


_ENV_CACHE: dict[str, Any] = {}


def _job_env(job: _Job) -> Any:
    key = json.dumps([job.env, job.env_args], sort_keys=True)
    if key not in _ENV_CACHE:
        from mfdiffuser.envs import make

        _ENV_CACHE.clear()
        _ENV_CACHE[key] = make(job.env, **job.env_args)
    return _ENV_CACHE[key]


_POLICY_CACHE: dict[str, Any] = {}


def _job_policy(job: _Job, env: Any, quality: str) -> Any:
    """The env's behaviour policy, built once per process (some precompute, e.g. an equilibrium)."""
    key = json.dumps([job.env, job.env_args, quality], sort_keys=True)
    if key not in _POLICY_CACHE:
        _POLICY_CACHE[key] = env.behaviour_policy(quality)
    return _POLICY_CACHE[key]


def _compute(job: _Job, task: _Task) -> tuple[Any, int]:
    """Run a task; return (stacked episode arrays or a reference return, agent-steps simulated)."""
    env = _job_env(job)
    if task.kind == "ref":
        es, ps = task.seeds[0]
        ret = reference_return(env, _job_policy(job, env, task.qualities[0]), es, ps)
        return ret, env.n_agents * env.horizon
    n, k = env.n_agents, job.stored_agents
    rows, steps = [], 0
    for quality, (es, ps, ss) in zip(task.qualities, task.seeds, strict=True):
        subset = None
        if k < n:
            subset = np.sort(np.random.default_rng(ss).choice(n, size=k, replace=False))
        rec = rollout(env, _job_policy(job, env, quality), es, ps, subset, quality=quality)
        rows.append(rec.arrays())
        steps += n * rec.length
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}, steps


def _save(workdir: Path, task: _Task, payload: Any) -> None:
    """Write a finished task's file atomically (temp file + rename): its existence marks it done."""
    with atomic_path(workdir / task.filename) as tmp:
        if task.kind == "ref":
            tmp.write_text(json.dumps({"return": float(payload)}))
        else:
            with open(tmp, "wb") as fh:
                np.savez(fh, **payload)


def _run_and_save(job: _Job, task: _Task) -> tuple[_Task, int]:
    payload, steps = _compute(job, task)
    _save(Path(job.workdir), task, payload)
    return task, steps


def _ray_compute(job: _Job, task: _Task) -> tuple[_Task, Any, int]:
    payload, steps = _compute(job, task)
    return task, payload, steps


# ------------------------------------------------------------------------------------- driver
def work_dir(out: str | Path) -> Path:
    """The unfinished-run directory of an output path: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _resolve(cfg: GenerateConfig) -> tuple[str, dict[str, Any], Any]:
    from mfdiffuser.envs import make, resolve

    env_name, args = resolve(cfg.env, **cfg.env_args)
    env = make(env_name, **args)
    return env_name, env.config(), env


def _validate(cfg: GenerateConfig) -> None:
    if cfg.quality not in DATASET_QUALITIES:
        raise ValueError(f"unknown quality {cfg.quality!r}; choose from {', '.join(DATASET_QUALITIES)}")
    if int(cfg.episodes) != cfg.episodes or cfg.episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {cfg.episodes!r}")
    if int(cfg.seed) != cfg.seed or cfg.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {cfg.seed!r}")
    if int(cfg.ref_episodes) != cfg.ref_episodes or cfg.ref_episodes < 1:
        raise ValueError(f"--ref-episodes must be a positive integer, got {cfg.ref_episodes!r}")
    if cfg.store_agents is not None and (int(cfg.store_agents) != cfg.store_agents or cfg.store_agents < 1):
        raise ValueError(f"--store-agents must be a positive integer, got {cfg.store_agents!r}")
    if cfg.quality == "mixed" and cfg.episodes < 2:
        raise ValueError(
            f"--quality mixed alternates random and expert episodes: it needs --episodes >= 2, "
            f"got {cfg.episodes}"
        )
    if cfg.split:
        from mfdiffuser.splits import check_split, split_of_data_seed

        check_split(cfg.split)
        if split_of_data_seed(int(cfg.seed)) != cfg.split:
            raise ValueError(f"seed {cfg.seed} lies outside the {cfg.split} split's range of dataset seeds")
    if cfg.compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {cfg.compression!r}; choose from {', '.join(COMPRESSIONS)}")
    if cfg.ray_address is not None:
        if not cfg.use_ray:
            raise ValueError("--ray-address goes with --ray (without it episodes run in local processes)")
        from mfdiffuser.raycluster import check_ray_address

        check_ray_address(cfg.ray_address, "--ray-address")
    if not 0 <= cfg.compression_level <= 9:
        raise ValueError(f"compression level must lie in [0, 9], got {cfg.compression_level}")


def estimate_cost(cfg: GenerateConfig) -> CostEstimate | None:
    """Estimate the memory and time of ``cfg`` and refuse it when the machine lacks the memory.

    The stored episodes are counted from K, T and the env's sizes. Above the larger probe size the
    env and the behaviour policies it runs are probed at small N (see
    :func:`mfdiffuser.cost.probe_agent_cost`); below it they count as the arrays an env step returns,
    and the time is not estimated. None when the env cannot be built (its own error comes later).

    Raises:
        MfdError: the estimate exceeds the memory available and ``cfg.force`` is false.
    """
    from mfdiffuser.cost import (
        PROBE_SIZES,
        AgentCost,
        check_memory,
        episode_record_bytes,
        generation_cost,
        probe_agent_cost,
        step_array_bytes,
    )
    from mfdiffuser.envs import make, resolve

    env_name, args = resolve(cfg.env, **cfg.env_args)
    n = int(args.get("n_agents") or 0)
    big = n > PROBE_SIZES[1]

    def make_at(size: int) -> Any:
        return make(env_name, **{**args, "n_agents": size})

    try:  # a small population is built as it is (cheap); a large one at the probe size first
        probe = make_at(PROBE_SIZES[0]) if big else make(env_name, **args)
    except (ValueError, MfdError):
        return None  # the env cannot run at the probe size; building it at N reports its own error
    n = probe.n_agents if not big else n
    qualities = sorted({episode_quality(cfg.quality, i) for i in range(min(cfg.episodes, 2))}
                       | set(REFERENCE_QUALITIES))
    try:
        dims = (probe.horizon, probe.state_size, probe.n_actions, probe.summary_size)
    finally:
        probe.close()
    horizon, state_size, n_actions, summary_size = dims
    if big:
        agent = probe_agent_cost(
            make_at, lambda env: [env.behaviour_policy(q) for q in qualities], state_size, n_actions
        )
    else:
        agent = AgentCost(0.0, float(step_array_bytes(state_size, n_actions)), 0.0, 0.0, measured=False)
    k = default_stored_agents(n) if cfg.store_agents is None else min(int(cfg.store_agents), n)
    episode_bytes = episode_record_bytes(k, horizon, state_size, n_actions, summary_size)
    estimate = generation_cost(
        agent, n_agents=n, horizon=horizon, episode_bytes=episode_bytes,
        shard_episodes=shard_size(cfg.episodes, k, state_size, horizon), episodes=cfg.episodes,
        ref_episodes=cfg.ref_episodes, processes=max(1, cfg.workers),
    )
    check_memory(estimate, force=cfg.force)
    return estimate


def check_output_path(out: Path, *, overwrite: bool) -> None:
    """Refuse an output path that can never receive the dataset, before any episode is rolled out.

    Missing parent directories are fine (they are created when writing); the nearest existing one
    must be a directory in which files can be created, probed with a temporary file.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false, or ``out`` is a directory.
        ValueError: ``out`` is a symbolic link to nothing.
        NotADirectoryError: a parent of ``out`` is a file.
        OSError: no file can be created in the nearest existing parent directory (e.g. permission
            denied, read-only file system), naming that directory.
    """
    check_not_dangling(out)
    if out.is_dir():
        raise FileExistsError(f"{out} exists and is a directory; --out must name a file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
    except OSError as exc:  # the OS's own reason (permission denied, read-only file system, ...)
        raise type(exc)(exc.errno, exc.strerror, str(parent)) from None
    os.close(fd)
    os.unlink(probe)


def _policy_names(env: Any, quality: str) -> dict[str, str]:
    labels = ("random", "expert") if quality == "mixed" else (quality,)
    names = {}
    for q in sorted(set(labels) | set(REFERENCE_QUALITIES)):
        pol = env.behaviour_policy(q)
        names[q] = f"{type(pol).__module__}.{type(pol).__qualname__}"
    return names


def _cleanup_tmp(out: Path, workdir: Path) -> None:
    """Remove temp files left by a killed run (never complete files)."""
    for p in out.parent.glob(f".{out.name}.*.tmp"):
        p.unlink(missing_ok=True)
    if workdir.is_dir():
        for p in workdir.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def _prepare_workdir(workdir: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    path = workdir / "manifest.json"
    if workdir.exists() and not path.exists() and not any(workdir.glob("[er]*-*")):
        shutil.rmtree(workdir)  # killed before its manifest was written: nothing to resume
    if workdir.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != manifest:
            if not overwrite:
                diff = sorted(k for k in manifest if old is None or old.get(k) != manifest[k])
                what = ", ".join(diff) or "unreadable manifest"
                raise MfdError(
                    f"{workdir} holds an unfinished run with other settings ({what}); "
                    "pass --overwrite to discard it"
                )
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _execute(
    job: _Job,
    tasks: list[_Task],
    cfg: GenerateConfig,
    on_done: Callable[[_Task, int], None],
) -> None:
    workdir = Path(job.workdir)
    if cfg.use_ray:
        from mfdiffuser.raycluster import init_ray

        init_ray(cfg.ray_address)  # names the missing extra when Ray is not installed
        import ray
        remote = ray.remote(_ray_compute)
        in_flight: list[Any] = []
        pending = list(tasks)
        limit = max(1, cfg.workers) * 2
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                in_flight.append(remote.remote(job, pending.pop(0)))
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            task, payload, steps = ray.get(ready[0])
            _save(workdir, task, payload)
            on_done(task, steps)
        return
    if cfg.workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task, steps = _run_and_save(job, task)
            on_done(task, steps)
        return
    import multiprocessing

    # spawn, not fork: the parent may hold threads (progress bar) and torch state.
    ctx = multiprocessing.get_context("spawn")
    # Workers get SIGKILL when this process dies, even by kill -9; the resource tracker then exits too
    # (it ends when the last process holding its pipe is gone).
    with ProcessPoolExecutor(
        max_workers=min(cfg.workers, len(tasks)), mp_context=ctx,
        initializer=die_with_parent, initargs=(os.getpid(),),
    ) as pool:
        futures = [pool.submit(_run_and_save, job, t) for t in tasks]
        try:
            for fut in as_completed(futures):
                task, steps = fut.result()
                on_done(task, steps)
        except BrokenProcessPool as exc:
            for fut in futures:
                fut.cancel()
            raise MfdError(
                "a worker process died (killed by a signal, e.g. by the system when memory ran out); "
                "finished episodes are kept: rerun the same command to resume"
            ) from exc
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def generate_dataset(cfg: GenerateConfig) -> GenerateResult:
    """Generate (or finish) the dataset described by ``cfg`` and write it atomically to ``cfg.out``.

    Raises:
        ValueError: bad arguments (unknown env, quality, non-positive counts, K > N).
        FileExistsError: the output exists and ``overwrite`` is false, or is a directory.
        OSError: no file can be created where the output goes (see :func:`check_output_path`).
        MfdError: ``<out>.partial`` holds an unfinished run with other settings.
    """
    from mfdiffuser import __version__

    _validate(cfg)
    out = Path(cfg.out)
    check_output_path(out, overwrite=cfg.overwrite)
    estimate_cost(cfg)  # before the env is built at N: a lattice env allocates its N spins at once
    env_name, env_args, env = _resolve(cfg)
    n = env.n_agents
    k = default_stored_agents(n) if cfg.store_agents is None else int(cfg.store_agents)
    if k > n:
        raise ValueError(f"--store-agents {k} exceeds the population size N={n}")
    policies = _policy_names(env, cfg.quality)  # also checks the env ships the needed qualities
    workdir = work_dir(out)
    manifest = {
        "env": env_name,
        "env_args": env_args,
        "quality": cfg.quality,
        "episodes": int(cfg.episodes),
        "seed": int(cfg.seed),
        "stored_agents": k,
        "ref_episodes": int(cfg.ref_episodes),
        **({"split": cfg.split} if cfg.split else {}),
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
    }
    fresh = not workdir.exists()
    _prepare_workdir(workdir, manifest, cfg.overwrite)
    _cleanup_tmp(out, workdir)
    job = _Job(env_name, env_args, k, str(workdir))
    _ENV_CACHE.clear()
    _ENV_CACHE[json.dumps([env_name, env_args], sort_keys=True)] = env  # reused by in-process runs

    tasks: list[_Task] = []
    seeds = episode_seeds(cfg.seed, cfg.episodes)
    size = shard_size(cfg.episodes, k, env.state_size, env.horizon)
    for s0 in range(0, cfg.episodes, size):
        s1 = min(cfg.episodes, s0 + size)
        labels = tuple(episode_quality(cfg.quality, i) for i in range(s0, s1))
        tasks.append(_Task("shard", s0, s1, labels, tuple(seeds[s0:s1])))
    for q in REFERENCE_QUALITIES:
        for j, pair in enumerate(reference_seeds(cfg.seed, q, cfg.ref_episodes)):
            tasks.append(_Task("ref", j, j + 1, (q,), (pair,)))
    todo = [t for t in tasks if not (workdir / t.filename).exists()]
    pending = set(todo)
    resumed = sum(t.n_episodes for t in tasks if t.kind == "shard" and t not in pending)

    start = time.perf_counter()
    steps_done = 0
    total = sum(t.n_episodes for t in tasks)
    bar = (
        ProgressBar(
            total,
            f"{env_name} N={n} K={k} {cfg.quality}: episodes + reference rollouts",
            done=total - sum(t.n_episodes for t in todo),
            stream=sys.stderr,
        )
        if cfg.progress
        else None
    )

    def on_done(task: _Task, steps: int) -> None:
        nonlocal steps_done
        steps_done += steps
        rate = steps_done / max(time.perf_counter() - start, 1e-9)
        if bar is not None:
            bar.update(task.n_episodes, f"{rate:,.0f} agent-steps/s")

    try:
        _execute(job, todo, cfg, on_done)
    except BaseException:
        if fresh and not any(workdir.glob("[er]*-*")):  # nothing finished: nothing to resume
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    refs: dict[str, float] = {}
    for q in REFERENCE_QUALITIES:
        vals = [
            json.loads((workdir / t.filename).read_text())["return"]
            for t in tasks
            if t.kind == "ref" and t.qualities[0] == q
        ]
        refs[q] = float(np.mean(vals))
    meta = DatasetMeta(
        env=env_name, env_args=env_args, n_agents=n, quality=cfg.quality, horizon=env.horizon,
        state_size=env.state_size, n_actions=env.n_actions, summary_size=env.summary_size,
        n_episodes=int(cfg.episodes), stored_agents=k, ref_returns=refs,
        ref_episodes=int(cfg.ref_episodes), seed=int(cfg.seed), behaviour_policy=policies,
        split=cfg.split, view_size=math.prod(env.observation_view(env.config()) or (0,)),
    )

    def rows() -> Iterator[dict[str, np.ndarray]]:
        for t in tasks:
            if t.kind == "shard":
                with np.load(workdir / t.filename) as z:
                    shard = {name: z[name] for name in z.files}
                for i in range(t.n_episodes):
                    yield {name: a[i] for name, a in shard.items()}

    with atomic_path(out) as tmp:
        checksum = write_dataset(
            tmp, meta, rows(), compression_level=cfg.compression_level,
            compression=None if cfg.compression == "none" else cfg.compression,
            extra_attrs={"created": utc_timestamp()},
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return GenerateResult(
        path=out, n_episodes=int(cfg.episodes), resumed_episodes=resumed, stored_agents=k, n_agents=n,
        agent_steps=steps_done, seconds=time.perf_counter() - start, checksum=checksum, ref_returns=refs,
    )
