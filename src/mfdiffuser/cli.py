"""The ``mfd`` command line: parses arguments and calls the library. Nothing else lives here.

Each subcommand is a module of :mod:`mfdiffuser.commands` with ``add_parser(subparsers)`` and
``run(args) -> int``. User errors (:class:`~mfdiffuser.errors.MfdError`, ``ValueError``,
``FileNotFoundError``) print one line and exit 2; ``MFD_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mfdiffuser import __version__
from mfdiffuser.errors import MfdError

# subcommand -> module in mfdiffuser.commands (imported when the parser is built; keep them light).
COMMANDS: dict[str, str] = {
    "envs": "envs",
    "data": "data",
    "train": "train",
    "evaluate": "evaluate",
    "sweep": "sweep",
    "report": "report",
    "bench": "bench",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (argparse's usual code for usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("mfd: interrupted\n")
        return 130
    except (MfdError, ValueError, FileNotFoundError, FileExistsError) as exc:
        if os.environ.get("MFD_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"mfd {args.command}: error: {message}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
