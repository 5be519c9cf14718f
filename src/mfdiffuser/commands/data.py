"""``mfd data generate`` (seeded, parallel, resumable dataset generation) and ``mfd data info``."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from mfdiffuser.commands.train import THREADS_HELP

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

QUALITY_CHOICES = ("expert", "medium", "random", "mixed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate and inspect offline datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(p))
    dsub.required = True

    g = dsub.add_parser(
        "generate",
        help="roll out a behaviour policy and write an HDF5 dataset",
        description="Roll out an env's behaviour policy for E episodes and write one HDF5 dataset "
        "atomically. Killed runs resume from <out>.partial when started again with the same arguments.",
    )
    g.add_argument("--env", help="env name (see `mfd envs`); optional when --setting is given")
    g.add_argument("--setting", help="named benchmark setting, e.g. ising-32x32 (see `mfd envs`)")
    g.add_argument("--n-agents", type=int, help="population size N (overrides the setting's)")
    g.add_argument(
        "--env-arg", action="append", default=[], metavar="KEY=VALUE",
        help="extra env constructor argument, value parsed as a YAML scalar (repeatable)",
    )
    g.add_argument("--quality", required=True, choices=QUALITY_CHOICES,
                   help="behaviour quality; mixed = half random, half expert episodes")
    g.add_argument("--episodes", type=int, required=True, help="number of episodes E")
    g.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    g.add_argument("--out", required=True, help="output .h5 path")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel worker processes (default: CPU count; 1 = in this process)")
    g.add_argument("--store-agents", type=int, metavar="K",
                   help="store K random agents per episode plus the summary of all N "
                   "(default: all N up to 2,048, else 2,048)")
    g.add_argument("--ref-episodes", type=int, default=10,
                   help="episodes per reference policy (random, expert) for normalized scores (default 10)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing output and discard an unfinished run with other settings")
    g.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip",
                   help="HDF5 chunk compression (default gzip; lzf is faster but h5py-only)")
    g.add_argument("--ray", action="store_true", help="run episodes as Ray tasks (needs mfdiffuser[ray])")
    g.add_argument("--ray-address", help="Ray cluster address (default: local Ray)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=int, default=None, help=THREADS_HELP + " of this process")
    g.add_argument("--force", action="store_true",
                   help="start even when the estimated memory exceeds what the machine has available")
    g.set_defaults(func=run_generate)

    i = dsub.add_parser("info", help="validate a dataset and print its metadata, sizes and returns")
    i.add_argument("path", help="dataset .h5 file")
    i.add_argument("--no-verify", action="store_true",
                   help="skip the file digest, checksum and NaN passes (HDF5 then parses the file "
                   "unchecked; metadata, shapes and dtypes are still checked)")
    i.set_defaults(func=run_info)


def parse_env_args(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings, values as YAML scalars (``3`` int, ``0.5`` float, ``true`` bool)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--env-arg expects KEY=VALUE, got {item!r}")
        if key in out:
            raise ValueError(f"--env-arg {key} given twice")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ValueError(f"--env-arg {key}: cannot parse value {raw!r}") from None
        if isinstance(value, (dict, list)):
            raise ValueError(f"--env-arg {key}: expected a scalar value, got {raw!r}")
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        out[key] = value
    return out


def run_generate(args: argparse.Namespace) -> int:
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset
    from mfdiffuser.envs import list_settings
    from mfdiffuser.utils import choose_threads, set_threads

    env_args = parse_env_args(args.env_arg)
    if "n_agents" in env_args and args.n_agents is not None:
        raise ValueError("give the population size once: --n-agents or --env-arg n_agents=...")
    if args.n_agents is not None:
        env_args["n_agents"] = args.n_agents
    if args.setting:
        settings = list_settings()
        if args.setting not in settings:
            raise ValueError(f"unknown setting {args.setting!r}; choose from {', '.join(settings)}")
        if args.env and settings[args.setting]["env"] != args.env:
            raise ValueError(
                f"setting {args.setting!r} is for env {settings[args.setting]['env']!r}, not {args.env!r}"
            )
        name = args.setting
    elif args.env:
        name = args.env
    else:
        raise ValueError("give --env or --setting")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    threads = choose_threads(args.threads)
    cfg = GenerateConfig(
        env=name, out=args.out, env_args=env_args, quality=args.quality, episodes=args.episodes,
        seed=args.seed, store_agents=args.store_agents, ref_episodes=args.ref_episodes,
        workers=args.workers, use_ray=args.ray, ray_address=args.ray_address,
        overwrite=args.overwrite, progress=not args.quiet, compression=args.compression,
        force=args.force,
    )
    set_threads(threads.threads)
    res = generate_dataset(cfg)
    print(threads.describe())
    size = os.path.getsize(res.path)
    print(
        f"wrote {res.path}: {res.n_episodes} episodes, storing K={res.stored_agents} of "
        f"N={res.n_agents} agents per episode, {size / 2**20:.1f} MiB"
    )
    if res.resumed_episodes:
        print(f"resumed: {res.resumed_episodes} episodes were already finished in the work directory")
    rate = res.agent_steps / res.seconds if res.seconds > 0 else float("nan")
    print(
        f"reference returns (per agent): random {res.ref_returns['random']:.6g}, "
        f"expert {res.ref_returns['expert']:.6g}; {res.seconds:.1f} s, {rate:,.0f} agent-steps/s"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mfdiffuser.data.dataset import load_dataset

    ds = load_dataset(args.path, verify=not args.no_verify, in_memory=False)
    m = ds.meta
    console = Console()
    # Paths, env arguments and labels come from the user or the file: never read them as rich markup.
    table = Table(title=escape(str(args.path)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    lengths = ds.length
    size = os.path.getsize(args.path)
    raw = ds.nbytes
    rows = [
        ("env", m.env),
        ("env args", ", ".join(f"{k}={v}" for k, v in sorted(m.env_args.items()))),
        ("quality", m.quality),
        ("behaviour policy", ", ".join(f"{k}: {v}" for k, v in sorted(m.behaviour_policy.items()))),
        ("N (agents)", f"{m.n_agents:,}"),
        ("K (stored agents)", f"{m.stored_agents:,} " + ("(all)" if m.all_agents_stored else "(subset)")),
        ("E (episodes)", f"{m.n_episodes:,}"),
        ("T (horizon)", str(m.horizon)),
        ("episode length", f"min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}; "
                           f"{int(ds.terminated.sum())} terminated early"),
        ("S, A, P", f"{m.state_size}, {m.n_actions}, {m.summary_size}"),
        ("seed", str(m.seed)),
        ("reference returns", f"random {m.ref_returns['random']:.6g}, expert {m.ref_returns['expert']:.6g} "
                              f"({m.ref_episodes} episodes each)"),
        ("size", f"{size / 2**20:,.1f} MiB on disk, {raw / 2**20:,.1f} MiB uncompressed "
                 f"(x{raw / max(size, 1):.1f})"),
        ("schema / library", f"{m.schema_version} / mfdiffuser {m.library_version}"),
        ("created", str(ds.attrs.get("created", "?"))),
        ("file digest", f"sha256 {ds.file_digest[:16]}... " + ("verified" if ds.verified else "not verified")
         if ds.file_digest else "none (written before datasets carried one)"),
        ("checksum", f"sha256 {m.checksum[:16]}... " + ("verified" if ds.verified else "not verified")),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    console.print(table)
    rt = Table(title="per-agent episode return by behaviour")
    for col in ("behaviour", "episodes", "mean", "std", "min", "max", "normalized"):
        rt.add_column(col, justify="right" if col != "behaviour" else "left")
    groups = ds.returns_by_quality()
    groups["all"] = ds.episode_returns
    for q, r in groups.items():
        norm = float(np.mean(ds.normalized_score(r))) if r.size else float("nan")
        stats = (f"{r.mean():.6g}", f"{r.std():.3g}", f"{r.min():.6g}", f"{r.max():.6g}", f"{norm:.1f}")
        rt.add_row(escape(str(q)), str(r.size), *stats)
    console.print(rt)
    ds.close()
    return 0
