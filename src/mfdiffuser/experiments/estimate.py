"""Time a grid's unfinished cells will take, estimated from the timings of finished records.

A grid is sized before it runs (``mfd sweep SPEC --dry-run --estimate STORE``): each unfinished cell
costs its training steps times a measured seconds-per-step, plus its evaluation episodes at each N
times a measured seconds-per-episode, plus its exploitability if it has one. The rates come from the
reference stores' records of the same benchmark and algorithm (or behaviour policy):

* training: ``train_run_s / steps`` of every record that trained its run (records that reused a
  run another cell trained carry no training time and are left out); the median over records, with
  the training batch matched where a record with the same ``batch_size`` exists, else scaled in
  proportion to the batch (marked ``~``);
* evaluation: ``wall_s / episodes`` at the same N; at an N no reference measured, the nearest
  measured N scaled in proportion to N (per-agent policies cost O(N); the planner less, so this is an
  upper bound for it; marked ``~``);
* exploitability: the median ``exploitability_s`` of the references, per cell.

An N that the method's plan budget declines costs nothing, and a cell declined at every N neither
trains nor evaluates (:func:`~mfdiffuser.experiments.cell.declined_ns`, as the sweep does).

A cell with no reference for its benchmark and algorithm is listed and left out of the totals. The
estimate is only as good as the references' machine and load: timings taken on a busy machine
overstate an idle one. Cells that share one training run (planner variants) count it once; budget
cells whose first budgets are recorded count only the steps still to train.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mfdiffuser.experiments.cell import declined_ns
from mfdiffuser.experiments.grid import Cell


def batch_size(trainer: Mapping[str, Any]) -> int:
    """The training batch of a cell's or record's trainer settings (the trainer's default if unset)."""
    from mfdiffuser.algos.trainer import TrainerConfig

    return int(trainer.get("batch_size", TrainerConfig.batch_size))


def cell_kind(algo: str | None, behaviour: str | None) -> str:
    """What a cell runs, for matching rates: the algorithm, or ``behaviour:<quality>`` without one."""
    return algo if algo else f"behaviour:{behaviour}"


@dataclass
class Rates:
    """Measured costs per (benchmark, kind), gathered from finished records (:meth:`add`)."""

    train: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    """(benchmark, kind) -> (seconds per training step, batch size) per record that trained its run."""
    episode: dict[tuple[str, str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    """(benchmark, kind, N) -> seconds per evaluation episode, per record."""
    exploit: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    """(benchmark, kind) -> exploitability seconds per record."""
    records: int = 0
    """Records that contributed at least one rate."""

    def add(self, record: Mapping[str, Any]) -> None:
        """Take the rates of one finished record (others are ignored)."""
        cfg = record.get("config") or {}
        timings = record.get("timings") or {}
        if record.get("status") != "done" or not cfg.get("benchmark"):
            return
        key = (str(cfg["benchmark"]), cell_kind(cfg.get("algo"), cfg.get("behaviour")))
        used = False
        trainer = cfg.get("trainer") or {}
        steps = (record.get("train") or {}).get("step") or trainer.get("steps")
        train_s = float(timings.get("train_run_s") or 0.0)
        if cfg.get("algo") and steps and train_s > 0 and not (record.get("train") or {}).get("trained_by"):
            self.train[key].append((train_s / float(steps), batch_size(trainer)))
            used = True
        for n, at_n in (record.get("metrics") or {}).items():
            if not isinstance(at_n, dict) or at_n.get("status", "done") != "done":
                continue
            wall, episodes = at_n.get("wall_s"), at_n.get("episodes")
            if wall and episodes:
                self.episode[(key[0], key[1], int(at_n.get("n_agents", n)))].append(
                    float(wall) / float(episodes)
                )
                used = True
        if timings.get("exploitability_s"):
            self.exploit[key].append(float(timings["exploitability_s"]))
            used = True
        self.records += used

    def train_s_per_step(self, benchmark: str, kind: str, batch: int) -> tuple[float, bool] | None:
        """Median seconds per step at ``batch`` and whether it was scaled from another batch size."""
        samples = self.train.get((benchmark, kind))
        if not samples:
            return None
        same = [s for s, b in samples if b == batch]
        if same:
            return statistics.median(same), False
        return statistics.median(s * batch / b for s, b in samples if b > 0), True

    def s_per_episode(self, benchmark: str, kind: str, n: int) -> tuple[float, bool] | None:
        """Median seconds per episode at N, and whether it was scaled from the nearest measured N."""
        measured = {m: v for (b, k, m), v in self.episode.items() if (b, k) == (benchmark, kind) and v}
        if not measured:
            return None
        if n in measured:
            return statistics.median(measured[n]), False
        nearest = min(measured, key=lambda m: abs(m - n))
        return statistics.median(measured[nearest]) * n / nearest, True


def gather(records: Iterable[Mapping[str, Any]]) -> Rates:
    """The rates of every finished record."""
    rates = Rates()
    for r in records:
        rates.add(r)
    return rates


@dataclass(frozen=True)
class CellEstimate:
    """Estimated core-seconds of one unfinished cell (None where a part has no reference)."""

    cell: Cell
    train_s: float | None
    eval_s: float | None
    exploit_s: float
    scaled: bool
    """A rate was scaled from another batch size or N."""

    @property
    def known(self) -> bool:
        """Whether every part of the cell had a reference."""
        return self.train_s is not None and self.eval_s is not None

    @property
    def total_s(self) -> float:
        """Core-seconds of the cell (0 if unknown)."""
        return (self.train_s or 0.0) + (self.eval_s or 0.0) + self.exploit_s if self.known else 0.0


def estimate_cell(
    cell: Cell, rates: Rates, done_budgets: Sequence[int] = (), trains: bool = True
) -> CellEstimate:
    """Core-seconds of ``cell``'s remaining work.

    Args:
        cell: the cell.
        rates: measured rates.
        done_budgets: budgets of the cell already recorded (their evaluations are not counted, and
            training resumes from the largest).
        trains: False where another unfinished cell trains the same run (counted there).
    """
    kind = cell_kind(cell.algo, cell.behaviour)
    declined = declined_ns(cell)  # evaluations the method's plan budget will decline: not run
    if cell.eval_points and len(declined) == len(cell.eval_points):
        return CellEstimate(cell, 0.0, 0.0, 0.0, False)  # recorded as skipped before training
    scaled = False
    train_s: float | None = 0.0
    if cell.algo and trains:
        target = max(cell.budgets) if cell.budgets else int(cell.trainer.get("steps", 0))
        steps = target - max(done_budgets, default=0)
        rate = rates.train_s_per_step(cell.benchmark, kind, batch_size(cell.trainer))
        if rate is None:
            train_s = None
        else:
            train_s, scaled = rate[0] * steps, rate[1]
    evaluations = len([b for b in cell.budgets if b not in done_budgets]) if cell.budgets else 1
    eval_s: float | None = 0.0
    for point in cell.eval_points:
        if point.n_agents in declined:
            continue
        per = rates.s_per_episode(cell.benchmark, kind, point.n_agents)
        if per is None:
            eval_s = None
            break
        assert eval_s is not None
        eval_s += per[0] * cell.episodes_at(point.n_agents) * evaluations
        scaled |= per[1]
    exploit = rates.exploit.get((cell.benchmark, kind))
    expl_on = bool(cell.exploitability) and cell.exploitability.get("enabled", True)
    exploit_s = statistics.median(exploit) * evaluations if (exploit and expl_on) else 0.0
    cpus = float(cell.resources.get("num_cpus", 1))
    return CellEstimate(
        cell,
        None if train_s is None else train_s * cpus,
        None if eval_s is None else eval_s * cpus,
        exploit_s * cpus,
        scaled,
    )


@dataclass(frozen=True)
class GridEstimate:
    """Estimates of a grid's unfinished cells and what they add up to."""

    cells: list[CellEstimate]

    @property
    def core_s(self) -> float:
        """Core-seconds of the cells with references."""
        return sum(c.total_s for c in self.cells)

    @property
    def longest_s(self) -> float:
        """Seconds of the longest single cell (a lower bound of the wall time however many CPUs)."""
        return max(
            (c.total_s / float(c.cell.resources.get("num_cpus", 1)) for c in self.cells if c.known),
            default=0.0,
        )

    def wall_s(self, num_cpus: int) -> float:
        """Wall seconds on ``num_cpus`` CPUs, packed perfectly (never below the longest cell)."""
        return max(self.core_s / num_cpus, self.longest_s)

    @property
    def unknown(self) -> list[Cell]:
        """Cells left out of the totals for want of a reference."""
        return [c.cell for c in self.cells if not c.known]


def estimate_grid(
    cells: Sequence[Cell], done: Mapping[str, Sequence[int] | None], rates: Rates
) -> GridEstimate:
    """Estimate every cell not finished.

    Args:
        cells: the grid's cells.
        done: per cell id, None if the cell is finished, else the budgets already recorded (empty
            when nothing is).
        rates: measured rates.
    """
    out = []
    trained: set[str] = set()
    for cell in cells:
        budgets = done.get(cell.id, ())
        if budgets is None:
            continue
        shared = not cell.budgets and cell.run_name in trained
        trained.add(cell.run_name)
        out.append(estimate_cell(cell, rates, budgets, trains=not shared))
    return GridEstimate(out)


def estimate_table(est: GridEstimate, num_cpus: int) -> str:
    """Plain-text table: core-hours of training and evaluation per benchmark x method, and totals."""
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0])
    for c in est.cells:
        row = rows[(c.cell.benchmark, c.cell.method)]
        row[0] += 1
        if c.known:
            row[1] += (c.train_s or 0.0) / 3600
            row[2] += ((c.eval_s or 0.0) + c.exploit_s) / 3600
        row[3] += c.scaled
    lines = [f"{'benchmark':18s} {'method':20s} {'cells':>5s} {'train h':>8s} {'eval h':>7s}"]
    for (b, m), (n, tr, ev, sc) in sorted(rows.items()):
        mark = "~" if sc else " "
        lines.append(f"{b:18s} {m:20s} {n:5d} {tr:8.2f} {ev:7.2f} {mark}")
    lines.append(
        f"{len(est.cells)} unfinished cells: {est.core_s / 3600:.1f} core-hours, about "
        f"{est.wall_s(num_cpus) / 3600:.1f} h of wall time on {num_cpus} CPUs "
        f"(longest cell {est.longest_s / 3600:.2f} h)"
    )
    if any(c.scaled for c in est.cells):
        lines.append("~: some rates scaled from another batch size or N (mfdiffuser.experiments.estimate)")
    if est.unknown:
        names = ", ".join(sorted({f"{c.benchmark}/{cell_kind(c.algo, c.behaviour)}" for c in est.unknown}))
        lines.append(f"{len(est.unknown)} cells have no reference and are not counted: {names}")
    return "\n".join(lines)
