"""Progress of long commands: a rich bar in a terminal, one plain line at a time otherwise.

Piped or logged output (``make demo | tee log``, a batch job) cannot show a redrawn bar: there each
:class:`ProgressBar` prints a line when it starts, at every tenth of its total, at most once a
``min_interval`` seconds otherwise, and when it closes, with the elapsed time and an estimate of the
time left.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``3725.0 -> "1h 02m"``, ``125.0 -> "2m 05s"``, ``7.4 -> "7s"`` (for ETA lines)."""
    s = max(int(round(seconds)), 0)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class ProgressBar:
    """Progress over ``total`` units of work, drawn as a bar in a terminal and as lines elsewhere.

    Args:
        total: units of work (steps, episodes, cells).
        label: text in front of the bar or line (``describe`` changes it).
        done: units already done (a resumed run).
        stream: where to write (default ``sys.stdout``); the bar is drawn only if it is a terminal.
        min_interval: seconds between two lines in line mode, besides the lines at each tenth.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        done: int = 0,
        stream: TextIO | None = None,
        min_interval: float = 60.0,
    ) -> None:
        self.total, self.done, self.label = max(int(total), 0), int(done), label
        self.fields = ""
        self._stream = stream if stream is not None else sys.stdout
        self._min_interval = float(min_interval)
        self._start = time.perf_counter()
        self._start_done = self.done
        self._last_line = self._start
        self._last_tenth = self._tenth()
        self._rich: Any = None
        if _is_terminal(self._stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[fields]}"),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
            )
            self._task = self._rich.add_task(label, total=self.total, completed=self.done, fields="")
            self._rich.start()
        else:
            self._line("started")

    def _tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 10

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate measured since this bar started; None before any unit is done."""
        done_here = self.done - self._start_done
        if done_here <= 0:
            return None
        rate = done_here / max(time.perf_counter() - self._start, 1e-9)
        return max(self.total - self.done, 0) / rate

    def describe(self, label: str) -> None:
        """Change the label (e.g. the N and seed being evaluated)."""
        self.label = label
        if self._rich is not None:
            self._rich.update(self._task, description=label)

    def update(self, advance: int = 1, fields: str | None = None) -> None:
        """Count ``advance`` more units done; ``fields`` is extra text (``loss 0.123``)."""
        self.done += int(advance)
        if fields is not None:
            self.fields = fields
        if self._rich is not None:
            self._rich.update(self._task, advance=advance, fields=self.fields)
            return
        now, tenth = time.perf_counter(), self._tenth()
        if tenth > self._last_tenth or now - self._last_line >= self._min_interval:
            self._last_tenth = tenth
            self._line()

    def _line(self, note: str = "") -> None:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.label}: {self.done:,}/{self.total:,}{pct}"]
        if self.fields:
            parts.append(self.fields)
        parts.append(f"{format_duration(time.perf_counter() - self._start)} elapsed")
        eta = self.eta_seconds()
        if eta is not None and self.done < self.total:
            parts.append(f"about {format_duration(eta)} left")
        if note:
            parts.append(note)
        self._last_line = time.perf_counter()
        print(", ".join(parts), file=self._stream, flush=True)

    def close(self) -> None:
        """Stop the bar, or print the closing line (unless the line at 100% was the last one)."""
        if self._rich is not None:
            self._rich.stop()
        elif self.done < self.total or self._last_tenth < 10:
            self._line("stopped" if self.done < self.total else "")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
