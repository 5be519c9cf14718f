"""One module per ``mfd`` subcommand: ``add_parser(subparsers)`` registers it, ``args.func`` runs it."""
