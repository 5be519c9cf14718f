"""Sizing a grid from finished records: rates, budgets, shared runs, scaling and the CLI's table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from grid_specs import TINY_GRID, with_changes
from mfdiffuser.experiments.estimate import estimate_cell, estimate_grid, estimate_table, gather
from mfdiffuser.experiments.grid import parse_grid


def record(
    benchmark: str = "gs",
    algo: str | None = "bc",
    *,
    step: int = 100,
    batch: int = 64,
    train_run_s: float = 10.0,
    walls: dict[int, tuple[float, int]] | None = None,
    exploit_s: float | None = None,
    trained_by: str | None = None,
    status: str = "done",
) -> dict[str, Any]:
    """A finished record with the timing fields the estimate reads."""
    walls = {100: (4.0, 2)} if walls is None else walls
    timings: dict[str, float] = {"train_run_s": train_run_s}
    if exploit_s is not None:
        timings["exploitability_s"] = exploit_s
    train: dict[str, Any] = {"step": step}
    if trained_by:
        train["trained_by"] = trained_by
    return {
        "id": "x",
        "status": status,
        "config": {
            "benchmark": benchmark,
            "algo": algo,
            "behaviour": None if algo else "dataset",
            "trainer": {"batch_size": batch, "steps": step},
        },
        "timings": timings,
        "train": train if algo else None,
        "metrics": {str(n): {"n_agents": n, "wall_s": w, "episodes": e} for n, (w, e) in walls.items()},
    }


def test_rates_are_medians_per_step_and_per_episode() -> None:
    rates = gather([record(train_run_s=10.0), record(train_run_s=30.0), record(train_run_s=20.0)])
    assert rates.train_s_per_step("gs", "bc", 64) == (pytest.approx(0.2), False)
    assert rates.s_per_episode("gs", "bc", 100) == (pytest.approx(2.0), False)
    # another batch: scaled in proportion; another N: the nearest N scaled in proportion
    assert rates.train_s_per_step("gs", "bc", 32) == (pytest.approx(0.1), True)
    assert rates.s_per_episode("gs", "bc", 1000) == (pytest.approx(20.0), True)
    assert rates.train_s_per_step("gs", "mf-iql", 64) is None


def test_reused_failed_and_untrained_records_give_no_training_rate() -> None:
    rates = gather(
        [
            record(trained_by="other-cell", train_run_s=0.0),
            record(status="failed"),
            record(algo=None, train_run_s=0.0),
        ]
    )
    assert rates.train_s_per_step("gs", "bc", 64) is None
    assert rates.s_per_episode("gs", "behaviour:dataset", 100) == (pytest.approx(2.0), False)
    assert rates.records == 2  # the reused run's record still measures its evaluation


def test_cell_cost_counts_steps_episodes_budgets_and_cpus() -> None:
    spec = with_changes(TINY_GRID, trainer={"steps": 50, "batch_size": 64}, eval={"episodes": 3})
    spec["resources"] = {"num_cpus": 2}
    (cell,) = parse_grid(spec).cells
    rates = gather([record(train_run_s=10.0, walls={100: (4.0, 2)})])  # 0.1 s/step, 2 s/episode
    est = estimate_cell(cell, rates)
    assert est.known and not est.scaled
    assert est.train_s == pytest.approx(50 * 0.1 * 2)  # steps x rate x CPUs
    assert est.eval_s == pytest.approx(3 * 2.0 * 2)

    spec = with_changes(TINY_GRID, eval={"episodes": 3})
    spec["budgets"] = [20, 60, 100]
    (cell,) = parse_grid(spec).cells
    fresh = estimate_cell(cell, rates)
    assert fresh.train_s == pytest.approx(100 * 0.1)
    assert fresh.eval_s == pytest.approx(3 * 3 * 2.0)  # one evaluation per budget
    resumed = estimate_cell(cell, rates, done_budgets=[20, 60])
    assert resumed.train_s == pytest.approx(40 * 0.1)
    assert resumed.eval_s == pytest.approx(3 * 2.0)


def test_grid_counts_a_shared_run_once_and_reports_cells_without_reference(tmp_path: Path) -> None:
    spec = with_changes(TINY_GRID, trainer={"steps": 100, "batch_size": 64})
    spec["methods"] = {
        "bc": {"algo": "bc"},
        "bc-cold": {"algo": "bc", "policy": {"temperature": 0.5}},  # same training, another policy
        "iql": {"algo": "mf-iql"},
    }
    cells = parse_grid(spec).cells
    by = {c.method: c for c in cells}
    assert by["bc"].run_name == by["bc-cold"].run_name
    rates = gather([record(train_run_s=10.0)])
    done: dict[str, list[int] | None] = {c.id: [] for c in cells}
    est = estimate_grid(cells, done, rates)
    trains = sorted(e.train_s for e in est.cells if e.known)
    assert trains == [pytest.approx(0.0), pytest.approx(10.0)]
    assert [c.method for c in est.unknown] == ["iql"]
    assert est.core_s == pytest.approx(10.0 + 2 * 2.0)
    assert est.wall_s(2) == pytest.approx(max(7.0, 12.0))  # never below the longest cell
    done[by["bc"].id] = None  # finished: not counted, and bc-cold now trains the run
    again = estimate_grid(cells, done, rates)
    assert [e.cell.method for e in again.cells] == ["bc-cold", "iql"]
    assert again.cells[0].train_s == pytest.approx(10.0)
    table = estimate_table(est, 2)
    assert "1 cells have no reference and are not counted: gs/mf-iql" in table
    assert "3 unfinished cells" in table


def test_sweep_dry_run_prints_the_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mfdiffuser.cli import main

    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(json.dumps(with_changes(TINY_GRID, trainer={"steps": 100, "batch_size": 64})))
    ref = tmp_path / "ref"
    (ref / "cells").mkdir(parents=True)
    (ref / "cells" / "a.json").write_text(json.dumps(record(train_run_s=36.0)))
    rc = main(
        ["sweep", str(spec_path), "--results", str(tmp_path / "res"), "--dry-run", "--estimate", str(ref)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "rates from 1 finished records" in out
    # 100 steps x 0.36 s = 0.01 h of training, 1 episode x 2 s = 0.0006 h of evaluation
    assert re.search(r"^gs +bc +1 +0\.01 +0\.00", out, re.M)
    assert "1 unfinished cells: 0.0 core-hours" in out


def test_evaluations_a_plan_budget_declines_cost_nothing() -> None:
    small = {"hidden": 16, "n_layers": 1, "n_heads": 2, "horizon": 1, "replan_every": 1}

    def madiff_cell(seconds: float) -> Any:
        spec = with_changes(TINY_GRID, trainer={"steps": 50, "batch_size": 64}, eval={"episodes": 3})
        spec["benchmarks"]["gs"]["eval"] = [100, 1000]
        spec["methods"] = {"m": {"algo": "madiff", "options": {**small, "max_plan_seconds": seconds}}}
        (cell,) = parse_grid(spec).cells
        return cell

    rates = gather([record(algo="madiff", train_run_s=10.0, walls={100: (4.0, 2), 1000: (40.0, 2)})])
    full = estimate_cell(madiff_cell(1e9), rates)  # 50 steps x 0.1 s; 3 episodes x (2 + 20) s
    assert (full.train_s, full.eval_s) == (pytest.approx(5.0), pytest.approx(66.0))
    none = estimate_cell(madiff_cell(1e-9), rates)  # declined at every N: recorded before training
    assert none.known and none.total_s == 0.0
    from mfdiffuser.algos import madiff
    from mfdiffuser.experiments.cell import declined_ns, env_sizes

    # a budget between N = 100 and N = 1,000 (sizes as gaussian-squeeze's): only N = 100 is counted
    point = madiff_cell(1e9).train_point
    learner = madiff.build(madiff.Config(**small), env_sizes(point.env, point.env_args), None)
    cheap, dear = (learner.plan_cost(n, madiff.Config.assumed_gflops)[1] for n in (100, 1000))
    between = madiff_cell((cheap * dear) ** 0.5)
    assert list(declined_ns(between)) == [1000]
    part = estimate_cell(between, rates)
    assert (part.train_s, part.eval_s) == (pytest.approx(5.0), pytest.approx(6.0))

