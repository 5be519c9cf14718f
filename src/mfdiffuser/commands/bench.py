"""``mfd bench``: run the performance scripts of ``benchmarks/`` (all, or the ones named).

Options for the scripts follow ``--`` (``mfd bench data -- --quick``) or are given one by one with
``--arg VALUE`` (dash-led values too: ``mfd bench envs --arg --seconds --arg 0.1``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

KNOWN: tuple[str, ...] = ("envs", "battle", "data", "planner", "scale", "train")
"""Benchmarks the project ships (``benchmarks/bench_<name>.py``); others found there run too."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the performance benchmarks (benchmarks/bench_*.py)",
        usage="mfd bench [-h] [--dir DIR] [--list] [--arg ARG] [names ...] [-- SCRIPT_ARG ...]",
        description=(
            "Run each benchmark script as its own process and print its figures, then a summary. "
            "A name that is neither a shipped benchmark nor a script in the directory is an error; a shipped "
            "benchmark whose script is missing is reported, not fatal; the exit code is 1 if any script "
            "failed or is missing. "
            "Everything after -- is passed to every script (mfd bench data -- --quick)."
        ),
    )
    # argparse cannot hand a dash-led word to an option, and drops or misplaces a bare "--" inside a
    # subcommand: the script's arguments are taken out before this parser sees them.
    p.parse_known_args = functools.partial(_split_script_args, p.parse_known_args)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all; known: {', '.join(KNOWN)})")
    p.add_argument(
        "--dir", default=None, help="benchmarks directory (default: ./benchmarks or the source tree's)"
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="ARG",
        help="argument passed to every script, dash-led ones too (repeatable)",
    )
    p.set_defaults(func=run)


def _split_script_args(
    parse: Callable[..., tuple[argparse.Namespace, list[str]]],
    args: Sequence[str] | None = None,
    namespace: argparse.Namespace | None = None,
) -> tuple[argparse.Namespace, list[str]]:
    """Parse the words before the first ``--``; the words after it become ``script_args``.

    ``--arg WORD`` is read as ``--arg=WORD`` so that a dash-led WORD (``--arg --quick``) is a value.
    """
    words = list(sys.argv[1:] if args is None else args)
    script: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, script = words[:cut], words[cut + 1 :]
    joined: list[str] = []
    i = 0
    while i < len(words):
        if words[i] == "--arg" and i + 1 < len(words):
            joined.append(f"--arg={words[i + 1]}")
            i += 2
        else:
            joined.append(words[i])
            i += 1
    ns, extra = parse(joined, namespace)
    ns.script_args = script
    return ns, extra


def find_dir(explicit: str | None) -> Path:
    """The benchmarks directory: ``explicit``, else ``./benchmarks``, else the installed scripts.

    The installed scripts are the package ``mfdiffuser.benchmarks`` (the repository's
    ``benchmarks/`` in a source checkout or an editable install, a copy inside a wheel).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise FileNotFoundError(f"benchmarks directory {path} not found")
        return path
    cand = Path.cwd() / "benchmarks"
    if cand.is_dir():
        return cand
    spec = importlib.util.find_spec("mfdiffuser.benchmarks")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise FileNotFoundError("no benchmarks/ directory here and none installed; pass --dir")


def discover(bench_dir: Path) -> list[str]:
    """Names of the known benchmarks, then any other ``bench_*.py`` found in ``bench_dir``."""
    found = sorted(p.stem.removeprefix("bench_") for p in bench_dir.glob("bench_*.py"))
    return list(KNOWN) + [n for n in found if n not in KNOWN]


def _script_name(name: str) -> str:
    """The benchmark a command-line name means (``planner``, ``bench_planner``, ``bench_planner.py``)."""
    return name.removeprefix("bench_").removesuffix(".py")


def run(args: argparse.Namespace) -> int:
    bench_dir = find_dir(args.dir)
    names = args.names or discover(bench_dir)
    found = discover(bench_dir)
    unknown = [n for n in names if _script_name(n) not in found]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(found)}")
    if args.list:
        for name in discover(bench_dir):
            status = "" if (bench_dir / f"bench_{name}.py").is_file() else "  (missing)"
            print(f"{name}{status}")
        return 0
    results: list[tuple[str, str, float]] = []
    for name in names:
        script = bench_dir / f"bench_{_script_name(name)}.py"
        if not script.is_file():
            print(f"== {name}: missing ({script} not found)", flush=True)
            results.append((name, "missing", 0.0))
            continue
        print(f"== {name}: {script}", flush=True)
        t0 = time.perf_counter()
        script_args = [*args.arg, *getattr(args, "script_args", [])]
        proc = subprocess.run([sys.executable, str(script), *script_args], check=False)
        seconds = time.perf_counter() - t0
        results.append((name, "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})", seconds))
    print("\nbenchmark summary")
    for name, status, seconds in results:
        print(f"  {name:12s} {status:20s} {seconds:8.1f} s")
    return 0 if all(status == "ok" for _, status, _ in results) else 1
