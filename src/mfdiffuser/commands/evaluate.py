"""``mfd evaluate``: evaluate a trained run, or a behaviour policy, at several N and seeds."""

from __future__ import annotations

import argparse
from typing import Any

from mfdiffuser.commands.train import THREADS_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained run or a behaviour policy at several population sizes",
        description=(
            "Roll out a policy at every --n-agents for --episodes episodes per seed and report the "
            "per-agent return, normalized score (reference returns of the random and expert "
            "behaviour at each N), Ising order parameter, battle win rate, kill ratio and survivors, act "
            "latency and memory: mean and 95% confidence interval over seeds. Episodes come from "
            "the validation split's evaluation seeds unless --split test is given: make every "
            "choice on validation and report test."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory written by `mfd train`")
    src.add_argument(
        "--behaviour", help="evaluate an env behaviour policy instead (expert, medium, random, mixed)"
    )
    p.add_argument("--env", help="env or setting name (with --behaviour)")
    p.add_argument(
        "--env-arg", action="append", default=[], metavar="KEY=VALUE", help="env argument (with --behaviour)"
    )
    p.add_argument(
        "--n-agents",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="population sizes (default: training N)",
    )
    p.add_argument("--episodes", type=int, default=20, help="episodes per seed")
    p.add_argument(
        "--seeds", type=int, default=3, help="number of evaluation seeds (the split's first k)"
    )
    p.add_argument(
        "--split",
        choices=["validation", "test"],
        default="validation",
        help="evaluation episodes of this split (default validation; test only for reported results)",
    )
    p.add_argument("--ref-episodes", type=int, default=10, help="episodes per reference policy at a new N")
    p.add_argument(
        "--policy-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of make_policy (repeatable)",
    )
    p.add_argument(
        "--exploitability", action="store_true", help="also measure exploitability at the largest N"
    )
    p.add_argument("--device", default="cpu", help="torch device of the learned policy (cpu, cuda, auto)")
    p.add_argument(
        "--wandb", action="store_true", help="also log the metrics to the run's W&B run (extra: wandb)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--force", action="store_true", help="start even when the estimated memory exceeds what is available"
    )
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.set_defaults(func=run)


def check_results_out(out: str) -> None:
    """Refuse an ``--out`` that would replace something other than a results file.

    The results are written by renaming a new file onto ``out``: that would replace a device, a pipe
    or a socket as well as a dataset or a checkpoint. An existing regular file is replaced only if it
    is empty or holds JSON (an earlier result); a directory is left to the write to refuse.

    Raises:
        ValueError: ``out`` exists and is neither a directory, an empty file nor a JSON file, or is
            a symbolic link to nothing.
    """
    import os
    import stat

    from mfdiffuser.utils import check_not_dangling

    check_not_dangling(out)
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return  # nothing there: a new file is written
    if stat.S_ISDIR(mode):
        return
    if not stat.S_ISREG(mode):
        raise ValueError(f"{out} exists and is not a regular file; --out must name a JSON results file")
    with open(out, "rb") as f:
        head = f.read(64).lstrip()
    if head and not head.startswith(b"{"):
        raise ValueError(f"{out} exists and is not a JSON results file; choose another --out or delete it")


def run(args: argparse.Namespace) -> int:
    from mfdiffuser.algos.base import write_json
    from mfdiffuser.commands.train import parse_options
    from mfdiffuser.envs import resolve
    from mfdiffuser.eval.evaluate import DatasetBehaviourPolicy, env_factory, evaluate_policy, references
    from mfdiffuser.splits import episode_seeds
    from mfdiffuser.utils import resolve_device

    if args.wandb:
        if not args.run:
            raise ValueError("--wandb logs to a run's W&B run: it goes with --run")
        from mfdiffuser.tracking import import_wandb

        import_wandb()  # a missing package fails now, not after the rollouts
    if args.episodes < 1 or args.seeds < 1 or args.ref_episodes < 1:
        raise ValueError("--episodes, --seeds and --ref-episodes must be >= 1")
    if args.n_agents is not None and any(n < 1 for n in args.n_agents):
        raise ValueError(f"--n-agents must be positive, got {args.n_agents}")
    if args.out:
        check_results_out(args.out)
    seeds = episode_seeds(args.split, args.seeds)
    policy_opts = parse_options(args.policy_opt)
    source: dict[str, Any]
    if args.run:
        from mfdiffuser.algos.run import load_run, make_policy

        if args.env or args.env_arg:
            raise ValueError("--env and --env-arg go with --behaviour; a run's env comes from its dataset")
        loaded = load_run(args.run, device=resolve_device(args.device))
        env_name, env_args = loaded.meta.env, dict(loaded.meta.env_args)
        stored = (loaded.meta.n_agents, loaded.meta.ref_returns)
        default_n = loaded.meta.n_agents

        def policy_for(env: Any) -> Any:
            return make_policy(loaded, env, **policy_opts)

        source = {"run": str(args.run), "algo": loaded.algo, "step": loaded.step}
    else:
        if not args.env:
            raise ValueError("--behaviour needs --env (an env or setting name)")
        if policy_opts:
            raise ValueError("--policy-opt sets acting options of a trained run: it goes with --run")
        quality = args.behaviour
        if quality not in ("expert", "medium", "random", "mixed"):
            raise ValueError(f"--behaviour must be expert, medium, random or mixed, got {quality!r}")
        env_name, env_args = resolve(args.env, **parse_options(args.env_arg))
        n_arg = env_args.get("n_agents")
        if n_arg is not None and (isinstance(n_arg, bool) or not isinstance(n_arg, int) or n_arg < 1):
            raise ValueError(f"--env-arg n_agents must be a positive integer, got {n_arg!r}")
        stored = None
        probe = env_factory(env_name, env_args)(env_args["n_agents"]) if "n_agents" in env_args else None
        if probe is None:
            from mfdiffuser.envs import make

            probe = make(env_name, **env_args)
        default_n = probe.n_agents
        probe.close()

        def policy_for(env: Any) -> Any:
            return DatasetBehaviourPolicy(env, quality)

        source = {"behaviour": quality}
    n_list = args.n_agents or [default_n]
    make_env = env_factory(env_name, env_args)

    def refs(n: int) -> dict[str, float]:
        return references(env_name, env_args, n, stored=stored, episodes=args.ref_episodes)

    from mfdiffuser.cost import check_evaluation
    from mfdiffuser.utils import set_threads

    print(set_threads(args.threads).describe())
    check_evaluation(
        make_env,
        policy_for,
        n_list,
        episodes=args.episodes,
        seeds=args.seeds,
        ref_episodes=args.ref_episodes,
        ref_n_agents=[n for n in n_list if stored is None or n != stored[0]],
        force=args.force,
    )
    result = evaluate_policy(
        make_env, policy_for, n_list, seeds, args.episodes, refs, by="seed", progress=not args.no_progress
    )
    result.update(source=source, env=env_name, env_args=env_args, split=args.split)
    if args.exploitability:
        from mfdiffuser.eval.exploitability import exploitability

        done = [int(n) for n, r in result["results"].items() if r.get("status") == "done"]
        if not done:
            raise ValueError("no N could be evaluated, so there is no exploitability to measure")
        env = make_env(max(done))
        try:
            result["exploitability"] = {
                "n_agents": env.n_agents,
                **exploitability(env, policy_for(env), seeds),
            }
        finally:
            env.close()
    _print(result)
    if args.out:
        from pathlib import Path

        write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    if args.run:
        import sys

        from mfdiffuser.tracking import log_evaluation

        try:
            where = log_evaluation(args.run, int(source["step"]), result, wandb=args.wandb)
        except OSError as exc:  # a read-only run directory: the results above stand
            print(f"note: the metrics were not logged in {args.run}: {exc}", file=sys.stderr)
            return 0
        print(f"logged the metrics to TensorBoard in {where}")
    return 0


def _cell(m: dict[str, Any] | None, dec: int) -> str:
    if not m:
        return "-"
    ci = m["ci"]
    return f"{m['mean']:.{dec}f}" + ("" if ci != ci else f" ± {ci:.{dec}f}")  # ci != ci: NaN, one seed


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    seeds = result["seeds"]
    table = Table(
        title=f"{result['env']}, {result['split']} split: {result['episodes']} episodes x {len(seeds)} "
        f"seeds ({seeds[0]}..{seeds[-1]})"
    )
    cols = [("return", "return", 3), ("score", "score", 1), ("order_parameter", "|m|", 3)]
    cols += [("win_rate", "win rate", 2), ("kill_ratio", "kill ratio", 2), ("survivors", "survivors", 2)]
    cols += [("act_ms", "act ms", 2)]
    present = [c for c in cols if any(c[0] in r for r in result["results"].values())]
    table.add_column("N", justify="right")
    for _, title, _ in present:
        table.add_column(title, justify="right")
    table.add_column("peak MiB", justify="right")
    for n, r in result["results"].items():
        if r.get("status") == "skipped":
            table.add_row(f"{int(n):,}", *([""] * len(present)), r["reason"])
            continue
        row = [f"{int(n):,}"] + [_cell(r.get(key), dec) for key, _, dec in present]
        table.add_row(*row, f"{r['peak_mem_mb']:.1f}")
    Console().print(table)
    if "exploitability" in result:
        e = result["exploitability"]
        print(f"exploitability ({e['kind']}) at N={e['n_agents']:,}: {e['exploitability']:.5f}")
