import json

import numpy as np
import pytest

from mfdiffuser.cli import main
from mfdiffuser.experiments import build_report
from mfdiffuser.experiments.results import Results
from mfdiffuser.experiments.store import ResultStore
from mfdiffuser.experiments.tables import (
    cost_table,
    difference_table,
    exploitability_table,
    markdown_table,
    pairs_table,
    summary_table,
    sweep_table,
)


def _rec(method, seed, score, ret, status="done", episodes=None, **extra):
    """A record; ``episodes``: per-episode scores at N = 100 (with episode seeds 100, 101, ...)."""
    metrics = {}
    if status == "done":
        metrics = {
            "100": {"score": {"mean": score}, "return": {"mean": ret}, "act_ms": {"mean": 1.0},
                    "act_ms_max": {"mean": 4.0}, "peak_mem_mb": 2.0},
            "1000": {"score": {"mean": score - 10}, "return": {"mean": ret - 0.1}, "act_ms": {"mean": 1.5},
                     "act_ms_max": {"mean": 6.0}, "peak_mem_mb": 3.0},
        }
        if episodes is not None:
            metrics["100"]["score"] = {"mean": float(np.mean(episodes)), "values": list(episodes)}
            metrics["100"]["episode_seeds"] = list(range(100, 100 + len(episodes)))
    return {
        "id": f"gs__medium__{method}__s{seed}", "status": status, "benchmark": "gs", "quality": "medium",
        "method": method, "seed": seed, "fingerprint": "x", "metrics": metrics,
        "config": {"eval_points": [{"n_agents": 100}, {"n_agents": 1000}]}, **extra,
    }


def _row(table, n):
    return next(line for line in table.splitlines() if f"| {n} |" in line)


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(tmp_path / "res")
    # a: seeds 50, 52, 54; b: 51.5 on every seed (inside a's interval); c: 10; d: skipped; e: failed.
    for seed, v in enumerate([50.0, 52.0, 54.0]):
        s.write(_rec("a", seed, v, 1.0 + seed,
                     exploitability={"exploitability": 0.1 * (seed + 1), "kind": "exact", "n_agents": 1000}))
    for seed in range(3):
        s.write(_rec("b", seed, 51.5, 2.0, exploitability={"exploitability": 0.5, "kind": "exact",
                                                          "n_agents": 1000}))
        s.write(_rec("c", seed, 10.0, 0.5))
    s.write(_rec("d", 0, 0, 0, status="skipped", reason="skipped: needs 9 GiB / 99 s (budget 8 GiB / 60 s)"))
    s.write(_rec("e", 0, 0, 0, status="failed", error="RuntimeError: boom"))
    return s


def test_without_episode_seeds_winners_are_decided_by_overlapping_intervals(store):
    res = Results(store.records())
    assert res.methods == ["a", "b", "c", "d", "e"]
    # a's seeds 50, 52, 54: a resample of three seeds is all 50 with probability 1/27 = 0.037 > 0.025
    # (all 54 likewise), so the 95% interval is [50, 54]; it holds b's 51.5: a tie
    a = res.agg("gs", "medium", 100, "a", "score").stats
    assert (a.mean, a.lo, a.hi) == (52.0, 50.0, 54.0)
    verdict = res.verdict("gs", "medium", 100, "score")
    assert verdict.winners == [True, True, False, False, False]
    assert verdict.paired == [None, False, False, None, None]
    row = _row(markdown_table(res, "score"), 100)
    assert "**52.0 [50.0, 54.0]**" in row and "**51.5 [51.5, 51.5]**" in row
    assert "| 10.0 [10.0, 10.0] |" in row
    assert "| skipped | failed | intervals |" in row


def test_paired_comparison_on_shared_episodes_decides_the_winners(tmp_path):
    # Episodes vary by tens of points; on every shared episode a is 1 point above b: the seeds'
    # intervals overlap, the paired difference does not include 0, so b is not bold.
    s = ResultStore(tmp_path / "res")
    difficulty = np.linspace(0.0, 60.0, 10)
    for seed in range(3):
        s.write(_rec("a", seed, 0, 1.0, episodes=difficulty + 1.0 + 0.1 * seed))
        s.write(_rec("b", seed, 0, 1.0, episodes=difficulty + 0.1 * seed))
    res = Results(s.records())
    ia, ib = (res.agg("gs", "medium", 100, m, "score").stats for m in ("a", "b"))
    assert ia.lo < ib.hi  # overlapping intervals
    verdict = res.verdict("gs", "medium", 100, "score")
    assert verdict.winners == [True, False] and verdict.paired == [None, True]
    row = _row(markdown_table(res, "score"), 100)
    assert row.startswith("| gs | medium | 100 | **31.1 [") and row.endswith("| paired |")
    # N = 1,000 has no per-episode values: decided by intervals, a tie (both seeds' means 20.1 vs 21.1)
    assert _row(markdown_table(res, "score"), "1,000").endswith("| intervals |")


def test_difference_table_pairs_each_method_with_mf_diffuser_block_by_block(tmp_path):
    # A grid's layout: training seed s of every method ran episodes 100 + 10 s .. 109 + 10 s. bc is
    # 1 point above MF-Diffuser on each episode; rwbc is even with it, give or take 0.3.
    s = ResultStore(tmp_path / "res")
    rng = np.random.default_rng(0)
    for seed in range(3):
        difficulty = rng.uniform(0.0, 60.0, 10)
        for method, values in (("mf-diffuser", difficulty), ("bc", difficulty + 1.0),
                               ("rwbc", difficulty + rng.choice([-0.3, 0.3], 10))):
            rec = _rec(method, seed, 0, 1.0, episodes=values)
            rec["metrics"]["100"]["episode_seeds"] = list(range(100 + 10 * seed, 110 + 10 * seed))
            s.write(rec)
    res = Results(s.records())
    assert res.diffuser == "mf-diffuser"
    table = difference_table(res)
    assert "| bc − mf-diffuser | rwbc − mf-diffuser |" in table.splitlines()[0]
    cells = _row(table, 100).split(" | ")
    assert cells[4] == "**+1.0 [+1.0, +1.0]**"  # paired, every difference is 1
    assert cells[5].startswith("+0.") or cells[5].startswith("-0.")
    assert not cells[5].startswith("**") and "[" in cells[5]  # paired, not resolved
    assert "(unpaired)" in _row(table, "1,000")  # no per-episode values at N = 1,000


def test_pairs_table_compares_the_named_methods_two_by_two(tmp_path, capsys):
    # x-r1 is 2 points above x-r2 on every shared episode; y-r1 and y-r2 are even, give or take 0.3.
    s = ResultStore(tmp_path / "res")
    rng = np.random.default_rng(1)
    for seed in range(2):
        difficulty = rng.uniform(0.0, 60.0, 10)
        for method, values in (("x-r1", difficulty + 2.0), ("x-r2", difficulty),
                               ("y-r1", difficulty + rng.choice([-0.3, 0.3], 10)), ("y-r2", difficulty)):
            rec = _rec(method, seed, 0, 1.0, episodes=values)
            rec["metrics"]["100"]["episode_seeds"] = list(range(100 + 10 * seed, 110 + 10 * seed))
            s.write(rec)
    res = Results(s.records())
    table = pairs_table(res, [("x-r1", "x-r2"), ("y-r1", "y-r2")])
    assert table.splitlines()[0] == "| benchmark | quality | N | x-r1 − x-r2 | y-r1 − y-r2 |"
    cells = _row(table, 100).split(" | ")
    assert cells[3] == "**+2.0 [+2.0, +2.0]**"
    assert not cells[4].startswith("**") and "[" in cells[4]
    assert pairs_table(res, []) == ""
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "res"), "--out", str(out), "--pair", "x-r1", "x-r2"]) == 0
    text = (out / "report.md").read_text()
    assert "## Paired differences (normalized score)" in text and "| x-r1 − x-r2 |" in text
    # a method the store does not hold: one line, exit 2 (bad input), no report written
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "bad"), "--pair", "x-r1", "z"]) == 2
    err = capsys.readouterr().err
    assert "--pair" in err and "'z'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_episode_values_take_the_metrics_own_episode_seeds():
    from mfdiffuser.experiments.results import episode_values

    at_n = {
        "episode_seeds": [7, 8, 9],
        "score": {"mean": 2.0, "values": [1.0, 2.0, 3.0]},
        "kill_ratio": {"mean": 0.5, "values": [0.4, float("nan")], "episode_seeds": [7, 9]},
        "return": {"mean": 1.0},  # no per-episode values: the mean, no episodes
        "peak_mem_mb": 3.0,
    }
    vals, eps = episode_values(at_n, "score")
    assert vals.tolist() == [1.0, 2.0, 3.0] and eps.tolist() == [7, 8, 9]
    vals, eps = episode_values(at_n, "kill_ratio")  # its own seeds; the NaN episode left out
    assert vals.tolist() == [0.4] and eps.tolist() == [7]
    assert episode_values(at_n, "return")[0].tolist() == [1.0] and episode_values(at_n, "return")[1] is None
    assert episode_values(at_n, "peak_mem_mb")[0].tolist() == [3.0]
    assert episode_values(at_n, "win_rate") is None
    bad = {"score": {"values": [1.0, 2.0]}, "episode_seeds": [1, 2, 3]}  # misaligned: not paired
    assert episode_values(bad, "score")[1] is None


def test_behaviour_columns_are_references_never_bold(store):
    for seed in range(3):  # the data's behaviour scores above every trained method
        rec = _rec("behaviour", seed, 90.0, 9.0)
        rec["config"]["behaviour"] = "dataset"
        store.write(rec)
    res = Results(store.records())
    assert res.references == {"behaviour"}
    row = _row(markdown_table(res, "score"), 100)
    assert "| 90.0 [90.0, 90.0] |" in row
    assert "**52.0 [50.0, 54.0]**" in row and "**51.5 [51.5, 51.5]**" in row


def test_intervals_of_latency_are_never_below_zero_and_estimates_keep_their_sign(tmp_path):
    s = ResultStore(tmp_path / "res")
    for seed, v in enumerate([-0.3, 0.01, 0.02]):  # an estimate can come out below zero
        expl = {"exploitability": v, "kind": "estimate", "n_agents": 100}
        rec = _rec("a", seed, 50.0, 1.0, exploitability=expl)
        rec["metrics"]["100"]["act_ms"] = {"mean": 0.1, "values": [0.0, 0.0, 0.3]}
        s.write(rec)
    res = Results(s.records())
    expl = res.exploitability("gs", "medium", "a", 100).stats
    assert expl.lo == -0.3 <= expl.mean < 0.0 <= expl.hi  # the interval holds its own mean
    assert res.agg("gs", "medium", 100, "a", "act_ms").stats.lo >= 0.0


def test_exploitability_at_different_n_is_never_compared(tmp_path):
    s = ResultStore(tmp_path / "res")
    for seed in range(3):  # a slow planner measured at N = 100 only: lowest, but not against N = 1,000
        for method, value, n in (("a", 0.5, 1000), ("b", 0.9, 1000), ("c", 0.1, 100)):
            expl = {"exploitability": value, "kind": "exact", "n_agents": n}
            s.write(_rec(method, seed, 50.0, 1.0, exploitability=expl))
    res = Results(s.records())
    assert res.exploitability_ns("gs") == [1000, 100]  # most entries first
    assert res.exploitability("gs", "medium", "c", 1000) is None
    table = exploitability_table(res)
    at_1000, at_100 = _row(table, "1,000"), _row(table, "100")
    assert "**0.5000" in at_1000 and "**0.9000" not in at_1000 and "0.1000" not in at_1000
    assert "**0.1000" in at_100 and "0.5000" not in at_100


def test_a_tuning_store_is_refused_with_the_command_that_reads_it(tmp_path):
    from mfdiffuser.errors import MfdError

    s = ResultStore(tmp_path / "tune")
    for budget in (1000, 3000):  # one training run, recorded at two budgets
        s.write({**_rec("a", 0, 50.0, 1.0), "id": f"gs__medium__a__c0__s0__b{budget}", "budget": budget})
    with pytest.raises(MfdError, match="is a tuning store .* `mfd select"):
        build_report(s.root, tmp_path / "rep")
    assert not (tmp_path / "rep" / "report.md").exists()


def test_build_report_writes_aggregates_first_then_tables_and_plots(store, tmp_path):
    import yaml

    (store.root / "grid.yaml").write_text(yaml.safe_dump({"name": "tiny-grid"}))
    out = tmp_path / "rep"
    md = build_report(store.root, out).read_text()
    assert md.startswith("# Results: tiny-grid\n")  # the grid's name
    assert "name no split" in md and "name no evaluation episodes" in md  # old records: labelled
    order = [md.index(h) for h in ("## Aggregates over rows", "### IQM and mean", "### Performance profiles",
                                   "## Per row", "## Normalized score", "## Exploitability")]
    assert order == sorted(order)
    # target rows: medium at N = 1,000 only (a: 40, 42, 44); all rows: also N = 100 (50, 52, 54):
    # IQM of six cuts one at each end: (42 + 44 + 50 + 52) / 4 = 47.0
    target, every = md.split("### IQM and mean: ")[1:3]
    assert "1 rows: gs: medium 1,000." in target and "| a | 3 x 1 | 42.0 [" in target
    assert "| a | 3 x 2 | 47.0 [" in every and "| c | 3 x 2 | 5.0 [5.0, 5.0] |" in every
    assert "Not aggregated: d (entries on 0 of 2 rows); e (entries on 0 of 2 rows)." in every
    # skipped and failed cells: one table
    assert "| d | gs | all | skipped | 1 | skipped: needs 9 GiB / 99 s (budget 8 GiB / 60 s) |" in md
    assert "| e | gs | all | failed | 1 | RuntimeError: boom |" in md
    # exploitability: lower is better; a: 0.1, 0.2, 0.3 -> [0.1, 0.3] as above, clear of b's 0.5
    expl_row = next(line for line in md.splitlines() if line.startswith("| gs (exact)"))
    assert "**0.2000 [0.1000, 0.3000]**" in expl_row and "| 0.5000 [0.5000, 0.5000] |" in expl_row
    tex = (out / "tables.tex").read_text()
    assert r"\textbf{52.0 [50.0, 54.0]}" in tex and r"\toprule" in tex
    for name in ("return_vs_n.png", "score_by_quality.png", "exploitability.png", "latency_vs_n.png",
                 "memory_vs_n.png", "performance_profile.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md


def test_probability_of_improvement_table(tmp_path):
    s = ResultStore(tmp_path / "res")
    for seed in range(3):
        s.write(_rec("mf-diffuser", seed, 60.0 + seed, 1.0, split="test"))
        s.write(_rec("worse", seed, 20.0 + seed, 1.0, split="test"))
        s.write(_rec("same", seed, 60.0 + seed, 1.0, split="test"))
    md = build_report(s.root, tmp_path / "rep").read_text()
    assert "Split: test." in md and "different splits" not in md
    table = md.split("### Probability of improvement of mf-diffuser")[1]
    assert "| worse | 1 | 1.00 [1.00, 1.00] | 2 | 1.00 [1.00, 1.00] |" in table
    assert "| same | 1 | 0.50 [" in table
    assert "by IQM (of those aggregated): same (51.0 [50.0, 52.0]); P(mf-diffuser > same) = 0.50 [" in table


def test_mfd_report_cli(store, tmp_path, capsys):
    assert main(["report", str(store.root), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "no cell records" in capsys.readouterr().err


def test_mfd_report_refuses_unreadable_records_unless_told_to_skip_them(store, tmp_path, capsys):
    (store.cells_dir / "half.json").write_text('{"id": "gs__medium__a__s9", "stat')
    (store.cells_dir / "list.json").write_text("[1, 2]")
    (store.cells_dir / "nokeys.json").write_text('{"id": "x", "status": "done"}')
    assert main(["report", str(store.root), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "3 unreadable records" in err and "--skip-unreadable" in err
    assert "half.json (not JSON" in err and "list.json (not a JSON object)" in err
    assert "nokeys.json (no 'benchmark', 'quality', 'method')" in err
    assert not (tmp_path / "r").exists()  # nothing written
    assert main(["report", str(store.root), "--out", str(tmp_path / "r"), "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "3 unreadable records" in out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Left out:" in md and "half.json" in md and "11 cells from" in md


def test_mfd_bench_runs_scripts_and_reports_missing(tmp_path, capsys):
    (tmp_path / "bench_fast.py").write_text("print('figure: 42 agent-steps/s')\n")
    (tmp_path / "bench_broken.py").write_text("raise SystemExit(3)\n")
    assert main(["bench", "fast", "--dir", str(tmp_path)]) == 0
    # "envs" ships with the project but has no script in this directory: reported missing
    assert main(["bench", "fast", "broken", "envs", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "failed (exit 3)" in out and "envs         missing" in out
    assert main(["bench", "fast", "nothere", "--dir", str(tmp_path)]) == 2  # a name nothing has
    assert "unknown benchmark 'nothere'" in capsys.readouterr().err
    assert main(["bench", "--list", "--dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.split()
    assert {"envs", "fast", "broken"} <= set(listed)


def test_plot_colours_are_fixed_per_method_across_panels(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfdiffuser.experiments.plots import plot_vs_n

    recs = [_rec(m, 0, 50.0, 1.0) for m in ("a", "b")]
    # a second benchmark without method "a": its line for "b" must keep b's colour
    recs.append({**_rec("b", 0, 40.0, 0.5), "benchmark": "other", "id": "other__medium__b__s0"})
    res = Results(recs)
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    plot_vs_n(res, "score", tmp_path / "x.png", per_quality=False)
    (fig,) = figures
    colours = {  # errorbar containers carry the label; their first line carries the colour
        (ax.get_title(), c.get_label()): c.lines[0].get_color() for ax in fig.axes for c in ax.containers
    }
    assert colours[("gs", "b")] == colours[("other", "b")] != colours[("gs", "a")]
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["a", "b"]


def test_columns_follow_the_grid_spec_with_references_first(store):
    import yaml

    rec = _rec("behaviour", 0, 50.0, 1.0)
    rec["config"]["behaviour"] = "dataset"
    store.write(rec)
    spec = {"methods": {"c": {}, "behaviour": {}, "a": {}}}
    (store.root / "grid.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert Results(store.records()).methods[:2] == ["behaviour", "a"]  # no spec: references, then as met
    build_report(store.root, store.root / "rep")
    head = next(line for line in (store.root / "rep" / "report.md").read_text().splitlines()
                if line.startswith("| benchmark | quality | N |"))
    assert head.startswith("| benchmark | quality | N | behaviour | c | a | b |")


def test_report_leaves_out_records_whose_configuration_changed(tmp_path):
    import yaml

    from mfdiffuser.experiments import parse_grid

    spec = {
        "name": "tiny", "seeds": [0, 1],
        "benchmarks": {"gaussian-squeeze": {"train": 100, "eval": [100], "qualities": ["medium"]}},
        "methods": {"bc": {"algo": "bc"}, "expert": {"behaviour": "expert"}},
    }
    s = ResultStore(tmp_path / "res")
    (tmp_path / "res").mkdir(exist_ok=True)
    (tmp_path / "res" / "grid.yaml").write_text(yaml.safe_dump(spec))
    for cell in parse_grid(spec).cells:
        rec = _rec(cell.method, cell.seed, 40.0 + cell.seed, 1.0)
        rec.update(id=cell.id, benchmark=cell.benchmark, fingerprint=cell.fingerprint)
        if cell.id == "gaussian-squeeze__medium__bc__s1":
            rec.update(fingerprint="older", metrics={"100": {"score": {"mean": 99.0}}})
        s.write(rec)
    report = build_report(tmp_path / "res", tmp_path / "out").read_text()
    assert "1 record left out" in report and "gaussian-squeeze__medium__bc__s1" in report
    assert "99.0" not in report  # the stale record's score is in no table
    row = next(line for line in report.splitlines() if line.startswith("| gaussian-squeeze | medium | 100 |"))
    assert "40.0" in row and "40.5" in row  # bc from seed 0 alone; expert from both seeds


def test_head_to_head_summary_counts_winner_rows_and_gaps_to_the_best_other(store):
    for seed in range(3):  # a reference above everyone: never the "best other"
        rec = _rec("behaviour", seed, 90.0, 9.0)
        rec["config"]["behaviour"] = "dataset"
        store.write(rec)
    table = summary_table(Results(store.records()), "score")
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    # two rows (N = 100, 1,000), each: a 52.0, b 51.5 (inside a's interval), c 10.0; d and e have no entry
    assert set(lines) == {"a", "b", "c"}
    assert "| a | 2 | 2 (100%) | +0.5 (2) | +0.5 (2) |" in lines["a"]
    assert "| b | 2 | 2 (100%) | -0.5 (2) | -0.5 (2) |" in lines["b"]
    assert "| c | 2 | 0 (0%) | -42.0 (2) | -42.0 (2) |" in lines["c"]
    # lower is better: the sign turns, so ahead is still positive (c acts in 0.5 ms, a and b in 1.0 / 1.5)
    for seed in range(3):
        rec = _rec("c", seed, 10.0, 0.5)
        for at_n in rec["metrics"].values():
            at_n["act_ms"]["mean"] = 0.5
        store.write(rec)
    lines = summary_table(Results(store.records()), "act_ms").splitlines()
    assert "| c | 2 | 2 (100%) | +0.75 (2) | +0.75 (2) |" in lines
    assert "| a | 2 | 0 (0%) | -0.75 (2) | -0.75 (2) |" in lines


def test_cost_table_averages_minutes_per_cell_and_sums_core_hours(tmp_path):
    s = ResultStore(tmp_path / "res")
    for seed, (train, total) in enumerate([(60.0, 360.0), (180.0, 480.0)]):
        s.write(_rec("a", seed, 50.0, 1.0, timings={"train_s": train, "eval_s": 300.0, "total_s": total},
                     config={"resources": {"num_cpus": 2}, "eval_points": [{"n_agents": 100}]}))
    s.write(_rec("b", 0, 40.0, 1.0, timings={"eval_s": 36.0, "total_s": 36.0}))  # no training
    s.write(_rec("c", 0, 40.0, 1.0))  # no timings: not counted
    # d: trained by an earlier attempt (this one only loaded it in 6 s); the run's log says 240 s
    s.write(_rec("d", 0, 40.0, 1.0, timings={"train_s": 6.0, "train_run_s": 240.0, "total_s": 66.0},
                 train={"step": 10}))
    table, total, attempt_only = cost_table(Results(s.records()))
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    # a: train 2 min on average, the rest 5 min; (360 + 480) s x 2 cpus = 0.47 core-hours
    assert lines["a"] == "| a | 2.0 + 5.0 (2) | 0.47 |"
    assert lines["b"] == "| b | 0.0 + 0.6 (1) | 0.01 |"
    assert lines["d"] == "| d | 4.0 + 1.0 (1) | 0.08 |"  # (240 + 60) s
    assert "c" not in lines
    assert total == pytest.approx((360 + 480) * 2 / 3600 + 36 / 3600 + 300 / 3600)
    assert lines["total"].endswith(f"| {total:.2f} |")
    assert attempt_only == 0  # a has no "train" entry in this fixture, d has the run's own time
    s.write(_rec("e", 0, 40.0, 1.0, timings={"train_s": 6.0, "total_s": 66.0}, train={"step": 10}))
    assert cost_table(Results(s.records()))[2] == 1
    assert cost_table(Results([_rec("c", 0, 40.0, 1.0)])) == ("", 0.0, 0)


def test_sweep_log_gives_the_wall_time_table(tmp_path):
    s = ResultStore(tmp_path / "res")
    assert s.sweeps() == [] and sweep_table([]) == ("", 0.0)
    # A store from before the sweep log: its last sweep, from summary.json, when it ran cells.
    (s.root / "summary.json").parent.mkdir(parents=True)
    (s.root / "summary.json").write_text(json.dumps({"done": 0, "skipped_existing": 4, "seconds": 1.0}))
    assert s.sweeps() == []
    (s.root / "summary.json").write_text(json.dumps({"done": 4, "total": 4, "seconds": 7200.0}))
    assert [sw["seconds"] for sw in s.sweeps()] == [7200.0]
    s.log_sweep({"started_at": "2026-01-01T00:00:00Z", "seconds": 5400.0, "cpus": 2.0, "done": 3,
                 "skipped": 1, "failed": 0, "skipped_existing": 0, "interrupted": True})
    (s.root / "sweeps.jsonl").open("a").write("not json\n")
    s.log_sweep({"started_at": "2026-01-01T02:00:00Z", "seconds": 1800.0, "cpus": 2.0, "done": 2,
                 "skipped": 0, "failed": 1, "skipped_existing": 4, "interrupted": False})
    sweeps = s.sweeps()  # the log wins over summary.json; the unreadable line is left out
    assert [sw["seconds"] for sw in sweeps] == [5400.0, 1800.0]
    table, hours = sweep_table(sweeps)
    assert hours == pytest.approx(2.0)
    rows = table.splitlines()[2:]
    assert rows[0] == "| 2026-01-01T00:00:00Z | 1.50 | 2 | 3 / 1 / 0 | 0 | interrupted |"
    assert rows[1] == "| 2026-01-01T02:00:00Z | 0.50 | 2 | 2 / 0 / 1 | 4 |  |"
    s.write(_rec("a", 0, 50.0, 1.0, timings={"eval_s": 60.0, "total_s": 60.0}))
    md = build_report(s.root, tmp_path / "rep").read_text()
    assert "took 2.00 h in all" in md and rows[0] in md


def test_sweep_killed_before_its_end_line_is_measured_from_its_records(tmp_path):
    from mfdiffuser.algos.base import write_json

    s = ResultStore(tmp_path / "res")

    def record(name, status, written_at):
        rec = {**_rec(name, 0, 50.0, 1.0, status=status), "written_at": written_at}
        write_json(s.record_path(rec["id"]), rec)

    start = {"state": "started", "cpus": 2.0, "total": 9, "skipped_existing": 0}
    s.log_sweep({**start, "started_at": "2026-01-01T00:00:00Z"})  # killed: no end line
    record("a", "done", "2026-01-01T00:30:00Z")
    record("b", "skipped", "2026-01-01T01:15:00Z")
    record("old", "done", "2025-12-31T23:00:00Z")  # before it: not its work
    s.log_sweep({**start, "started_at": "2026-01-01T02:00:00Z", "skipped_existing": 2})
    record("c", "failed", "2026-01-01T02:10:00Z")  # the next sweep's
    s.log_sweep({"started_at": "2026-01-01T02:00:00Z", "seconds": 1800.0, "cpus": 2.0, "done": 0,
                 "skipped": 0, "failed": 1, "skipped_existing": 2, "interrupted": False})
    killed, resumed = s.sweeps()  # the resumed sweep's start line is paired with its end line
    assert killed["ended"] is False and killed["seconds"] == 4500.0  # to its last record, 01:15
    assert (killed["done"], killed["skipped"], killed["failed"], killed["cpus"]) == (1, 1, 0, 2.0)
    assert "state" not in killed and "ended" not in resumed and resumed["seconds"] == 1800.0
    table, hours = sweep_table([killed, resumed])
    assert hours == pytest.approx(1.75)
    assert table.splitlines()[2] == (
        "| 2026-01-01T00:00:00Z | 1.25 | 2 | 1 / 1 / 0 | 0 | "
        "no end logged (killed, or still running): wall time to its last record |"
    )
    # Still running, nothing written yet: zero hours so far.
    s.log_sweep({**start, "started_at": "2026-01-01T03:00:00Z"})
    assert s.sweeps()[-1]["seconds"] == 0.0 and s.sweeps()[-1]["done"] == 0


def test_report_page_takes_a_preface_and_links_plots_relative_to_the_page(store, tmp_path, capsys):
    preface = tmp_path / "preface.md"
    preface.write_text("## What the numbers say\n\nWritten by hand: a wins.\n")
    page = tmp_path / "RESULTS.md"
    out = tmp_path / "docs" / "results"
    args = ["report", str(store.root), "--out", str(out), "--preface", str(preface), "--page", str(page)]
    assert main(args) == 0
    report, results = (out / "report.md").read_text(), page.read_text()
    # the preface follows the opening paragraph and comes before the aggregates, in both files
    for md in (report, results):
        assert md.index("cells from") < md.index("Written by hand: a wins.") < md.index("## Aggregates")
    # the page is the report with its plots linked from the page's directory
    assert "](return_vs_n.png)" in report and "](docs/results/return_vs_n.png)" in results
    assert results.replace("docs/results/", "") == report
    for bad, match in (
        (["--preface", str(tmp_path / "none.md")], "--preface"),
        (["--page", str(tmp_path)], "is a directory"),
    ):
        assert main(["report", str(store.root), "--out", str(tmp_path / "r2"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1


def test_row_interval_draws_shared_episodes_once_for_all_seeds():
    from mfdiffuser.eval.stats import bootstrap_mean

    hard_to_easy = np.linspace(0.0, 60.0, 10)  # the same 10 episodes for every seed
    res = Results([_rec("a", s, 0.0, 0.0, episodes=hard_to_easy + 0.5 * s) for s in range(4)])
    agg = res.agg("gs", "medium", 100, "a", "score")
    values = [hard_to_easy + 0.5 * s for s in range(4)]
    assert agg.stats == bootstrap_mean(values, shared_episodes=True)
    assert agg.stats.hi - agg.stats.lo > 1.5 * np.ptp(bootstrap_mean(values)[1:3])  # not redrawn per seed
