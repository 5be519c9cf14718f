"""The ``mfd`` command line: parses arguments and calls the library. Nothing else lives here.

Each subcommand is a module of :mod:`mfdiffuser.commands` with ``add_parser(subparsers)`` and
``run(args) -> int``. User errors (:class:`~mfdiffuser.errors.MfdError`, ``ValueError`` and
``OSError``: a missing file, a directory where a file is expected, no permission) and running out of
memory print one line and exit 2; ``MFD_DEBUG=1`` (or ``true``, ``yes``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mfdiffuser import __version__
from mfdiffuser.errors import MfdError, first_line

# subcommand -> module in mfdiffuser.commands (imported when the parser is built; keep them light).
COMMANDS: dict[str, str] = {
    "envs": "envs",
    "data": "data",
    "train": "train",
    "distill": "distill",
    "evaluate": "evaluate",
    "sweep": "sweep",
    "select": "select",
    "reproduce": "reproduce",
    "report": "report",
    "bench": "bench",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (argparse's usual code for usage errors)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mfd", description="Offline RL for populations of thousands of agents.")
    parser.add_argument("--version", action="version", version=f"mfdiffuser {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"mfdiffuser.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mfdiffuser.commands.{module}":
                raise
            continue  # command not part of this build
        mod.add_parser(sub)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """The full subcommand of parsed ``args``, e.g. ``"data generate"`` (used in error messages)."""
    words = [args.command]
    words += [str(v) for k, v in sorted(vars(args).items()) if k.endswith("_command") and v]
    return " ".join(words)


RESUMABLE = {
    "sweep": "finished cells are kept",
    "distill": "finished rounds and steps are kept",
    "demo": "finished cells are kept",
    "data generate": "finished episodes are kept in <out>.partial",
}
"""Commands that continue where they stopped when run again, and what they keep."""


def command_line(name: str) -> str:
    """The command line that started this process, as ``mfd ...`` when it was the ``mfd`` script.

    Args:
        name: the subcommand (``command_name``), used when the process was started some other way.
    """
    if Path(sys.argv[0]).name == "mfd":
        return shlex.join(["mfd", *sys.argv[1:]])
    if Path(sys.argv[0]).parts[-2:] == ("mfdiffuser", "cli.py"):
        return shlex.join(["python", "-m", "mfdiffuser.cli", *sys.argv[1:]])
    return f"`mfd {name}` with the same arguments"


def interrupted_message(name: str, kept: str | None = None) -> str:
    """The line printed when ``mfd <name>`` is interrupted, with how to resume where it resumes.

    Args:
        name: the subcommand.
        kept: what was saved (default: the ``RESUMABLE`` entry of ``name``; without one, the line
            says only that the command was interrupted).
    """
    kept = kept or RESUMABLE.get(name)
    if kept is None:
        return "mfd: interrupted"
    return f"mfd {name}: interrupted ({kept}); resume with the same command: {command_line(name)}"


def error_message(exc: BaseException) -> str:
    """One line describing a user-facing error.

    An ``OSError`` raised by the operating system reads ``<path>: <reason>`` (the destination of a
    rename, not its temporary source); any other error its first line.
    """
    if isinstance(exc, OSError) and exc.strerror and (exc.filename2 or exc.filename):
        return f"{exc.filename2 or exc.filename}: {exc.strerror}"
    return first_line(exc)


DEBUG_ON = frozenset({"1", "true", "yes"})
"""Values of ``MFD_DEBUG`` that turn debugging on (any case); anything else, ``0`` included, is off."""


def debug_enabled() -> bool:
    """Whether ``MFD_DEBUG`` asks for tracebacks instead of one-line errors."""
    return os.environ.get("MFD_DEBUG", "").strip().lower() in DEBUG_ON


def _exit_now_if_ray_hangs(code: int) -> None:
    """End the process at once when a Ray join attempt still hangs (see ``raycluster.join_abandoned``)."""
    from mfdiffuser.raycluster import join_abandoned

    if join_abandoned():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mfd`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        sys.stderr.write(interrupted_message(command_name(args)) + "\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`mfd envs | head -1`): stop quietly, as a shell tool does on SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (MfdError, ValueError, OSError) as exc:
        if debug_enabled():
            raise
        sys.stderr.write(f"mfd {command_name(args)}: error: {error_message(exc)}\n")
        if argv is None:  # run as the program (a caller passing argv keeps its process)
            _exit_now_if_ray_hangs(2)
        return 2
    except MemoryError as exc:  # past the cost estimates (pass --force, or an estimate too low)
        if debug_enabled():
            raise
        why = error_message(exc) if str(exc).strip() else "an allocation failed"
        sys.stderr.write(f"mfd {command_name(args)}: error: out of memory: {why}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
