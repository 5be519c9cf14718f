"""Error types shared by the library; the CLI turns them into a one-line message and exit code 2."""


class MfdError(Exception):
    """Base class for user-facing errors (bad input, bad file, missing optional dependency)."""


class MissingExtraError(MfdError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"the optional dependency '{package}' is not installed: pip install 'mfdiffuser[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra.

    Args:
        module: importable module name, e.g. ``"magent2"``.
        extra: the ``pip install 'mfdiffuser[extra]'`` that provides it.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra) from exc


class BudgetExceeded(MfdError):
    """A run would exceed its configured memory or time budget, so it is skipped rather than started.

    ``record`` is the one-line reason that evaluation grids store, e.g.
    ``"skipped: needs 12.5 GiB / 340 s (budget 8 GiB / 120 s)"``; a limit that is infinite is left out.
    """

    def __init__(self, needs_gib: float, needs_seconds: float, max_gib: float, max_seconds: float) -> None:
        self.needs_gib = float(needs_gib)
        self.needs_seconds = float(needs_seconds)
        limits = [f"{v:.3g} {u}" for v, u in ((max_gib, "GiB"), (max_seconds, "s")) if v != float("inf")]
        self.record = (
            f"skipped: needs {needs_gib:.3g} GiB / {needs_seconds:.3g} s (budget {' / '.join(limits)})"
        )
        super().__init__(self.record)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
