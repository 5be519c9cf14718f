"""``mfd envs``: list the registered envs with their parameters, and the named settings."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("envs", help="list environments, their parameters and named settings")
    p.add_argument("--settings-only", action="store_true", help="print only the named settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mfdiffuser.envs import env_parameters, list_envs, list_settings

    # Cells are escaped: rich would read "[battle]" (an extra's name) or a list default as markup.
    console = Console()
    if not args.settings_only:
        table = Table(title="environments")
        table.add_column("env")
        table.add_column("parameters (defaults)")
        for name in list_envs():
            try:
                params = ", ".join(f"{k}={v}" for k, v in env_parameters(name).items())
            except ImportError as exc:  # optional engine missing: say which extra
                params = f"unavailable: {exc}"
            table.add_row(escape(name), escape(params))
        console.print(table)
    table = Table(title="named settings")
    table.add_column("setting")
    table.add_column("env")
    table.add_column("arguments")
    for name, spec in list_settings().items():
        env = spec.pop("env")
        table.add_row(escape(name), escape(env), escape(", ".join(f"{k}={v}" for k, v in spec.items())))
    console.print(table)
    return 0
