"""What one grid cell does, in plain Python (Ray only calls it): train, evaluate at every N, record.

``prepare_dataset`` generates a dataset once (resumable, written atomically by the data module);
``run_cell`` trains the cell's method on it with the shared trainer (resuming a killed attempt from
its checkpoint), evaluates the trained policy at every evaluation N, measures its exploitability
where the env has a measure, and writes the cell's record to the results store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mfdiffuser.errors import BudgetExceeded, MfdError
from mfdiffuser.experiments.grid import Cell, DatasetSpec
from mfdiffuser.experiments.store import ResultStore, versions
from mfdiffuser.utils import atomic_path


def prepare_dataset(spec: DatasetSpec, data_dir: str | Path, *, progress: bool = False) -> str:
    """Generate the dataset of ``spec`` under ``data_dir`` unless it exists; return its path.

    ``progress`` shows the generation's progress bar.
    """
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    path = spec.path(Path(data_dir))
    if path.is_file():
        return str(path)
    cfg = GenerateConfig(
        env=spec.env,
        out=str(path),
        env_args=dict(spec.env_args),
        quality=spec.quality,
        episodes=spec.episodes,
        seed=spec.seed,
        store_agents=spec.store_agents,
        ref_episodes=spec.ref_episodes,
        split=spec.split,
        progress=progress,
    )
    generate_dataset(cfg)
    return str(path)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<run_dir>.lock`` (``flock``): cells sharing a run train it in turn.

    Ray may start two cells of one run at once; the second waits here, then finds the run trained.
    The lock is advisory, per host (a cluster whose nodes share a results directory over a network
    file system gets whatever ``flock`` does there).
    """
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim_run(run_dir: Path, cell_id: str) -> str:
    """The id of the cell that trains the run: the first to claim it (call under ``run_lock``)."""
    path = run_dir.parent / f"{run_dir.name}.owner"
    if path.is_file():
        owner = path.read_text().strip()
        if owner:
            return owner
    with atomic_path(path) as tmp:
        tmp.write_text(cell_id + "\n")
    return cell_id


def _base_record(cell: Cell, attempt: int) -> dict[str, Any]:
    tuning = {"tuning": {"config": cell.config, "settings": cell.tuned}} if cell.config else {}
    return {
        **tuning,
        "id": cell.id,
        "fingerprint": cell.fingerprint,
        "benchmark": cell.benchmark,
        "quality": cell.quality,
        "method": cell.method,
        "seed": cell.seed,
        "split": cell.split,
        "config": cell.to_dict(),
        "attempt": attempt,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": versions(),
    }


def failed_record(cell: Cell, error: BaseException | str, attempts: int | None = None) -> dict[str, Any]:
    """The record of a cell whose every attempt failed."""
    rec = _base_record(cell, attempts or 0)
    rec.update(status="failed", error=one_line(error), metrics={}, timings={})
    if isinstance(error, BaseException):
        rec["traceback"] = "".join(traceback.format_exception(error))[-4000:]
    return rec


def one_line(error: BaseException | str) -> str:
    """``Type: first line`` of an exception (or the last line of an error text), for records."""
    if isinstance(error, str):
        return error.strip().splitlines()[-1] if error.strip() else "unknown error"
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def run_cell(
    cell: Cell,
    dataset_path: str | None,
    results_dir: str | Path,
    *,
    progress: bool = False,
    hook: Callable[[Cell, str], None] | None = None,
    only_budget: int | None = None,
) -> dict:
    """Train (unless a behaviour method), evaluate at every N and store the cell's record(s).

    Every random draw derives from the cell's seed: the global generators (Python, NumPy, torch) are
    reset to it first, so a cell gives the same record whatever ran before it in the process (a Ray
    worker's earlier cells). Training seed ``s`` is evaluated on its block of the split's stream
    (``Cell.episode_seeds_at``), the same for every method; each N's metrics carry their
    ``episode_seeds``.

    A cell with training ``budgets`` trains one run to each budget in turn (resuming it), evaluates
    it there and stores one record per budget (``Cell.record_id``); budgets already recorded with
    the cell's fingerprint are not evaluated again.

    ``BudgetExceeded`` raised by a method is stored as ``skipped`` with its message; other
    exceptions propagate (the runner records user errors as ``failed`` at once, and retries the
    others before storing ``failed``). ``hook(cell, results_dir)``
    runs first, once the attempt is counted.

    ``only_budget`` (one of the cell's budgets) writes that budget's record alone: the run is trained
    through the earlier budgets, stopping and resuming at each as a full run of the cell does, without
    evaluating them, and the later budgets are not run. ``progress`` shows the progress of training
    and evaluation (records do not depend on it).

    Returns:
        The last record written.
    """
    import torch

    from mfdiffuser.utils import seed_everything

    if only_budget is not None and only_budget not in cell.budgets:
        raise ValueError(f"cell {cell.id} has no training budget {only_budget} (has {list(cell.budgets)})")
    store = ResultStore(results_dir)
    attempt = store.start_attempt(cell.id)
    torch.set_num_threads(max(int(cell.resources.get("num_cpus", 1)), 1))
    budgets: list[int | None] = list(cell.budgets) or [None]
    record: dict[str, Any] = {}
    trained_s = 0.0  # the run's training time counted by earlier budgets' records
    for budget in budgets:
        if only_budget is not None and budget is not None and budget != only_budget:
            if budget > only_budget:
                break
            seed_everything(cell.seed)  # as before a budget that is evaluated
            _train_run(cell, dataset_path, store, budget, progress)
            continue
        if budget is not None and store.is_finished(cell.record_id(budget), cell.fingerprint):
            record = store.read(cell.record_id(budget)) or {}
        else:
            seed_everything(cell.seed)
            record = _run_budget(cell, dataset_path, results_dir, attempt, budget, progress, hook, trained_s)
            hook = None  # once per attempt
            store.write(record)
        trained_s += float((record.get("timings") or {}).get("train_run_s", 0.0))
    return record


def _run_budget(
    cell: Cell,
    dataset_path: str | None,
    results_dir: str | Path,
    attempt: int,
    budget: int | None,
    progress: bool,
    hook: Callable[[Cell, str], None] | None,
    trained_s: float = 0.0,
) -> dict[str, Any]:
    """One record of a cell: trained to ``budget`` steps (None: ``trainer.steps``) and evaluated.

    ``trained_s``: the run's training seconds already counted by the records of earlier budgets;
    this record's ``train_run_s`` is the rest, so a store's records add up to the run's time.
    """
    from mfdiffuser.eval.evaluate import DatasetBehaviourPolicy, evaluate_policy, references

    store = ResultStore(results_dir)
    record = _base_record(cell, attempt)
    if budget is not None:
        record.update(id=cell.record_id(budget), budget=budget)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        if hook is not None:
            hook(cell, str(results_dir))
        declined = declined_ns(cell)
        if declined and len(declined) == len(cell.eval_points):  # nothing to train for: no N is evaluated
            metrics = {str(n): {"n_agents": n, "status": "skipped", "reason": r} for n, r in declined.items()}
            record.update(status="skipped", reason="; ".join(sorted(set(declined.values()))), metrics=metrics)
            return record
        if cell.algo is not None:
            from mfdiffuser.algos.run import make_policy
            from mfdiffuser.algos.trainer import logged_train_seconds

            run, owner = _train_run(cell, dataset_path, store, budget, progress)
            run_dir = run.run_dir
            timings["train_s"] = time.perf_counter() - t0
            # the run's own training time, also when an earlier attempt trained it; counted in the
            # record of the cell that trained it only, so a store's records add up to its compute
            own = owner == cell.id
            timings["train_run_s"] = max(logged_train_seconds(run_dir) - trained_s, 0.0) if own else 0.0
            record["train"] = {"step": run.step, "run_dir": str(run_dir)}
            if not own:
                record["train"]["trained_by"] = owner
            record["dataset"] = {
                "path": str(dataset_path),
                "checksum": run.meta.checksum,
                "ref_returns": dict(run.meta.ref_returns),
            }

            def policy_for(env: Any) -> Any:
                return make_policy(run, env, **cell.policy)

        else:
            quality = cell.quality if cell.behaviour == "dataset" else str(cell.behaviour)

            def policy_for(env: Any) -> Any:
                return DatasetBehaviourPolicy(env, quality)

        t1 = time.perf_counter()
        points = {p.n_agents: p for p in cell.eval_points}
        train_env = cell.train_point

        # The same computed references for every method of a benchmark (the dataset's own stored
        # references come from other rollouts, and behaviour-policy methods have no dataset).
        def refs(n: int) -> dict[str, float]:
            return references(
                train_env.env,
                train_env.env_args,
                n,
                episodes=cell.ref_episodes,
                cache_dir=Path(results_dir) / "refs",
            )

        result: dict[str, Any] = {"results": {}}
        for n in points:
            part = evaluate_policy(
                lambda m: points[m].make(),
                policy_for,
                [n],
                cell.episode_seeds_at(n),
                1,
                refs,
                by="episode",
                progress=progress,
                label=cell.id,
            )
            result["results"].update(part["results"])
        timings["eval_s"] = time.perf_counter() - t1
        record["metrics"] = result["results"]
        evaluated = [int(n) for n, r in result["results"].items() if r.get("status") == "done"]
        if evaluated:
            max_n = int(cell.exploitability.get("max_n", max(evaluated)))
            at = [n for n in evaluated if n <= max_n]
            record["exploitability"] = _exploitability(cell, policy_for, max(at), timings) if at else {}
            record["status"] = "done"
        else:  # the method declined every evaluation N
            reasons = {r.get("reason", "") for r in result["results"].values()}
            record.update(status="skipped", reason="; ".join(sorted(reasons)))
    except BudgetExceeded as exc:
        record.update(status="skipped", reason=exc.record, metrics=record.get("metrics", {}))
    finally:  # also for the early return above: every record states its time
        timings["total_s"] = time.perf_counter() - t0
        record["timings"] = timings
    return record


def declined_ns(cell: Cell) -> dict[int, str]:
    """``N -> reason`` for each evaluation N the cell's method declines by its plan budget.

    A planner whose module exports ``plan_budget`` (``madiff``, ``dd-independent``) estimates a
    plan's memory and time from its sizes alone and declines an N beyond its budget
    (:class:`BudgetExceeded`), trained or not. Asked of an untrained model of the cell's
    configuration (sizes from the training env, no dataset needed), it tells before training where
    the cell will be evaluated: a run is never trained only to be skipped, and a grid's estimate
    does not count evaluations that will not happen. Empty for methods without a plan budget.
    """
    if cell.algo is None:
        return {}
    from mfdiffuser.algos.base import algo_module

    if not hasattr(algo_module(cell.algo), "plan_budget"):
        return {}
    points = tuple((p.n_agents, p.env, json.dumps(p.env_args, sort_keys=True)) for p in cell.eval_points)
    train = cell.train_point
    key = (cell.algo, json.dumps(cell.options, sort_keys=True), json.dumps(cell.policy, sort_keys=True))
    return dict(_declined(*key, train.env, json.dumps(train.env_args, sort_keys=True), points))


def env_sizes(env: str, env_args: dict[str, Any]) -> Any:
    """What building a model reads from a dataset's metadata, taken from ``env`` itself.

    The state, action and summary sizes, the horizon, the env's name and arguments: the sizes a
    dataset of ``env`` would record, without generating one.
    """
    from types import SimpleNamespace

    from mfdiffuser.envs import make

    instance = make(env, **env_args)
    try:
        return SimpleNamespace(
            env=env, env_args=dict(env_args), state_size=instance.state_size, n_actions=instance.n_actions,
            summary_size=instance.summary_size, horizon=instance.horizon,
        )  # fmt: skip
    finally:
        instance.close()


@functools.cache
def _declined(
    algo: str, options: str, policy: str, env: str, env_args: str, points: tuple[tuple[int, str, str], ...]
) -> tuple[tuple[int, str], ...]:
    """:func:`declined_ns` for one configuration (arguments in JSON, so that it can be cached)."""
    from mfdiffuser.algos.base import algo_module, config_from_dict
    from mfdiffuser.envs import make

    module = algo_module(algo)
    config = config_from_dict(module.Config, json.loads(options))
    if getattr(config, "max_memory_gib", None) is None and getattr(config, "max_plan_seconds", None) is None:
        return ()  # no budget: nothing is declined
    learner = module.build(config, env_sizes(env, json.loads(env_args)), None)
    out = []
    for n, name, args in points:
        point_env = make(name, **json.loads(args))
        try:
            module.make_policy(learner, config, point_env, **json.loads(policy))
        except BudgetExceeded as exc:
            out.append((n, exc.record))
        finally:
            point_env.close()
    return tuple(out)


def _train_run(
    cell: Cell, dataset_path: str | None, store: ResultStore, budget: int | None, progress: bool
) -> tuple[Any, str]:
    """Train (or resume, or load) the cell's run to ``budget`` steps (None: ``trainer.steps``).

    Returns:
        The loaded run and the id of the cell that trains it (the first to claim a shared run).

    Raises:
        MfdError: the run is already trained past ``budget``.
    """
    from mfdiffuser.algos.run import train
    from mfdiffuser.algos.trainer import TrainerConfig

    if cell.algo is None:
        raise ValueError(f"cell {cell.id} trains nothing (a behaviour policy)")
    if dataset_path is None:
        raise ValueError(f"cell {cell.id} needs a dataset")
    steps: dict[str, Any] = {"steps": budget} if budget is not None else {}
    trainer = TrainerConfig(**{"progress": progress, **cell.trainer, **steps, "seed": cell.seed})
    run_dir = store.run_dir(cell.run_name)
    with run_lock(run_dir):  # one cell at a time trains a shared run; the others then load it
        owner = claim_run(run_dir, cell.id)
        run = train(cell.algo, dataset_path, run_dir, dict(cell.options), trainer)
    if budget is not None and run.step != budget:
        raise MfdError(
            f"{run_dir} is trained to step {run.step}, past the budget {budget} to evaluate; "
            "delete it to evaluate the earlier budgets again"
        )
    return run, owner


def _exploitability(cell: Cell, policy_for: Any, n_agents: int, timings: dict[str, float]) -> dict[str, Any]:
    """Exploitability at ``n_agents`` (largest evaluated N up to ``max_n``) where the env has a measure."""
    from mfdiffuser.eval.exploitability import SUPPORTED, exploitability

    opts = cell.exploitability
    if not opts.get("enabled", True) or cell.train_point.env not in SUPPORTED:
        return {}
    t0 = time.perf_counter()
    point = next(p for p in cell.eval_points if p.n_agents == n_agents)
    env = point.make()
    try:
        episodes = int(opts.get("episodes", 4))
        res = exploitability(env, policy_for(env), cell.block_seeds(episodes))
    finally:
        env.close()
    timings["exploitability_s"] = time.perf_counter() - t0
    return {"n_agents": point.n_agents, **res}
