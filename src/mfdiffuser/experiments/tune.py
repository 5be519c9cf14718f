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
    """Mean normalized score over the records' (quality, training seed, N) values, 95% interval."""
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
    """The mean normalized score at each evaluated N of a finished record (empty if none)."""
    if record.get("status") != "done":
        return []
    out = []
    for metrics in (record.get("metrics") or {}).values():
        score = metrics.get("score") if isinstance(metrics, dict) else None
        if score and math.isfinite(float(score["mean"])):
            out.append(float(score["mean"]))
    return out


def select(records: Iterable[Mapping[str, Any]]) -> list[Choice]:
    """Choose a configuration and a training budget per method and benchmark from validation records.

    Records without training (behaviour methods) are left out. Every value of a candidate (one per
    record and evaluated N: qualities, training seeds, N) weighs the same.

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
