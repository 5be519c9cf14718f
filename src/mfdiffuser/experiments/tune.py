"""Select each method's settings on validation: the tuning configuration and training budget to use.

A tuning grid (``experiments/tune.yaml``, ``split: validation``) gives every trained method the same
number of configurations and evaluates each run at several training budgets. For each method and
benchmark, :func:`select` takes the (configuration, budget) with the best mean validation score, then
the smallest budget of that configuration whose mean lies within the best's 95% interval (the learning
curve has flattened there). :func:`write_selection` writes the choices with their reasons as a YAML
file that a grid names with ``selected:`` (see :mod:`mfdiffuser.experiments.grid`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mfdiffuser.eval.stats import MeanCI, mean_ci


@dataclass(frozen=True)
class Candidate:
    """Validation score of one configuration at one training budget."""

    config: str
    """Tuning configuration label (``c0``, ...; empty when the method has no tuning list)."""
    budget: int
    """Training steps."""
    score: MeanCI
    """Mean normalized score over the records' episodes (qualities, training seeds, N), 95% interval."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The configuration's own settings (options, trainer, policy)."""


@dataclass(frozen=True)
class Choice:
    """The settings selected for one method on one benchmark, and why."""

    method: str
    benchmark: str
    chosen: Candidate
    best: Candidate
    """The candidate with the best mean (the chosen one has its configuration, perhaps a smaller budget)."""
    candidates: tuple[Candidate, ...]

    @property
    def settings(self) -> dict[str, Any]:
        """Options, trainer (with ``steps`` = the chosen budget) and policy settings to train with."""
        out = {k: dict(v) for k, v in self.chosen.settings.items() if v}
        out["trainer"] = {**out.get("trainer", {}), "steps": self.chosen.budget}
        return out

    @property
    def reason(self) -> str:
        """One line: the chosen score and interval, the best, and the other candidates."""
        c, b = self.chosen, self.best
        label = f"{c.config} " if c.config else ""
        text = (
            f"validation score {_fmt(c.score)} (n={c.score.n}) for {label}at {c.budget:,} steps"
            f"; best mean {_fmt(b.score)} at {b.budget:,} steps"
        )
        if c.budget != b.budget:
            text += "; the smallest budget within the best's 95% interval"
        others = [
            f"{x.config + '@' if x.config else ''}{x.budget}: {x.score.mean:.1f}"
            for x in self.candidates
            if (x.config, x.budget) != (c.config, c.budget)
        ]
        return text + (f"; others {', '.join(others)}" if others else "")


def _fmt(score: MeanCI) -> str:
    ci = "" if math.isnan(score.half_width) else f" ± {score.half_width:.1f}"
    return f"{score.mean:.1f}{ci}"


def record_score(record: Mapping[str, Any]) -> list[float]:
    """The normalized scores of a finished record: every evaluation episode at every N (empty if none).

    A metric stored without its values contributes its mean.
    """
    if record.get("status") != "done":
        return []
    out: list[float] = []
    for metrics in (record.get("metrics") or {}).values():
        score = metrics.get("score") if isinstance(metrics, dict) else None
        if score:
            values = score.get("values") or [score["mean"]]
            out.extend(float(v) for v in values if math.isfinite(float(v)))
    return out


def select(records: Iterable[Mapping[str, Any]]) -> list[Choice]:
    """Choose a configuration and a training budget per method and benchmark from validation records.

    Records without training (behaviour methods) are left out. Every evaluation episode of a
    candidate (over its qualities, training seeds and N) weighs the same.

    Raises:
        ValueError: a record of the test split (nothing is chosen on test episodes), or no record
            with a score.
    """
    groups: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = {}
    settings: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in records:
        if "train" not in rec and rec.get("status") == "done":
            continue  # a behaviour policy: nothing to select
        if rec.get("split") != "validation":
            raise ValueError(
                f"record {rec.get('id')} is of split {rec.get('split')!r}: settings are selected on "
                "validation records only"
            )
        values = record_score(rec)
        if not values:
            continue
        key = (str(rec["method"]), str(rec["benchmark"]))
        tuning = rec.get("tuning") or {}
        config = str(tuning.get("config", ""))
        budget = int(rec.get("budget") or rec["train"]["step"])
        groups.setdefault(key, {}).setdefault((config, budget), []).extend(values)
        settings[(key[0], key[1], config)] = dict(tuning.get("settings") or {})
    if not groups:
        raise ValueError("no finished record with a normalized score to select from")
    choices = []
    for (method, bench), cands in sorted(groups.items()):
        scored = tuple(
            Candidate(config, budget, mean_ci(vals), settings[(method, bench, config)])
            for (config, budget), vals in sorted(cands.items())
        )
        best = max(scored, key=lambda c: c.score.mean)
        floor = best.score.mean - (0.0 if math.isnan(best.score.half_width) else best.score.half_width)
        chosen = min(
            (c for c in scored if c.config == best.config and c.score.mean >= floor), key=lambda c: c.budget
        )
        choices.append(Choice(method, bench, chosen, best, scored))
    return choices


def write_selection(choices: list[Choice], out: str | Path, source: Mapping[str, Any]) -> Path:
    """Write the choices as a selection file (``methods: {method: {benchmark: settings}}``).

    Each entry holds the settings to train with and its ``reason``; ``source`` names the tuning grid
    and store. A grid uses the file with ``selected: <path relative to the grid>``.
    """
    from mfdiffuser.utils import atomic_path

    methods: dict[str, dict[str, Any]] = {}
    for c in choices:
        methods.setdefault(c.method, {})[c.benchmark] = {**c.settings, "reason": c.reason}
    header = (
        "# Settings selected on the validation split (mfd select): per method and benchmark, the\n"
        "# tuning configuration with the best mean validation score, trained to the smallest budget\n"
        "# whose score lies within the best's 95% interval. A grid uses them with `selected: <file>`.\n"
    )
    body = yaml.safe_dump({"source": dict(source), "methods": methods}, sort_keys=False, width=100)
    path = Path(out)
    with atomic_path(path) as tmp:
        tmp.write_text(header + body)
    return path


def plot_learning_curves(choices: list[Choice], path: str | Path) -> Path:
    """Write the learning curves as a PNG at ``path``: validation score against training steps.

    One panel per benchmark, a line per method and configuration (the selected one solid with its
    95% interval, the others dashed), the chosen budget starred. Each panel's vertical range follows
    the mean scores (an interval wider than that is cut at the panel's edge, so that one noisy
    configuration does not flatten every curve); one legend names the methods by colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from mfdiffuser.utils import save_figure

    benches = sorted({c.benchmark for c in choices})
    fig, axes = plt.subplots(1, len(benches), figsize=(4.2 * len(benches), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    methods = sorted({c.method for c in choices})
    for ax, bench in zip(axes[0], benches, strict=True):
        means = [x.score.mean for c in choices if c.benchmark == bench for x in c.candidates]
        for ch in (c for c in choices if c.benchmark == bench):
            colour = colours(methods.index(ch.method) % 10)
            for config in sorted({x.config for x in ch.candidates}):
                pts = sorted((x for x in ch.candidates if x.config == config), key=lambda x: x.budget)
                xs = [x.budget for x in pts]
                ys = [x.score.mean for x in pts]
                half = [0.0 if math.isnan(x.score.half_width) else x.score.half_width for x in pts]
                chosen = config == ch.chosen.config
                ax.plot(xs, ys, "-" if chosen else "--", color=colour, alpha=1.0 if chosen else 0.4,
                        marker="o")
                if chosen:
                    lo = [y - h for y, h in zip(ys, half, strict=True)]
                    hi = [y + h for y, h in zip(ys, half, strict=True)]
                    ax.fill_between(xs, lo, hi, color=colour, alpha=0.12)
            ax.plot([ch.chosen.budget], [ch.chosen.score.mean], "*", color=colour, markersize=12)
        ax.set_xscale("log")
        ax.set_title(bench)
        ax.set_xlabel("training steps")
        ax.set_ylabel("validation normalized score")
        ax.grid(alpha=0.3)
        finite = [m for m in means if math.isfinite(m)]
        if finite:
            pad = max(0.1 * (max(finite) - min(finite)), 1.0)
            ax.set_ylim(min(finite) - pad, max(finite) + pad)
    handles = [Line2D([], [], color=colours(i % 10), marker="o", label=m) for i, m in enumerate(methods)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return out
