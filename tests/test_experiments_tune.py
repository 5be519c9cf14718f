"""Tuning lists, training budgets from one run, and the selection a grid reads back."""

import json
from pathlib import Path

import pytest
import yaml

from mfdiffuser.algos.trainer import read_checkpoint
from mfdiffuser.cli import main
from mfdiffuser.experiments.cell import prepare_dataset, run_cell
from mfdiffuser.experiments.grid import parse_grid
from mfdiffuser.experiments.store import ResultStore
from mfdiffuser.experiments.tune import select

ROOT = Path(__file__).resolve().parents[1]


def _spec(**extra):
    return {
        "name": "tiny-tune",
        "split": "validation",
        "seeds": [0],
        "data": {"episodes": 6, "ref_episodes": 2},
        "eval": {"episodes": 2},
        "trainer": {"batch_size": 4, "log_every": 1, "checkpoint_every": 1},
        "exploitability": {"enabled": False},
        "budgets": [2, 4],
        "benchmarks": {"gaussian-squeeze": {"train": 100, "eval": [100], "qualities": ["medium"]}},
        "methods": {
            "bc": {"algo": "bc", "tune": [{"trainer": {"lr": 1.0e-3}}, {"trainer": {"lr": 3.0e-3}}]},
            "behaviour": {"behaviour": "dataset"},
        },
        **extra,
    }


def test_tuning_lists_expand_into_labelled_cells_with_budgets():
    grid = parse_grid(_spec())
    bc = [c for c in grid.cells if c.method == "bc"]
    assert [c.id for c in bc] == [f"gaussian-squeeze__medium__bc__c{i}__s0" for i in (0, 1)]
    assert [c.trainer["lr"] for c in bc] == [1.0e-3, 3.0e-3] and {c.trainer["steps"] for c in bc} == {4}
    assert bc[0].record_ids == [bc[0].id + "__b2", bc[0].id + "__b4"]
    (beh,) = [c for c in grid.cells if c.method == "behaviour"]
    assert beh.budgets == () and beh.record_ids == [beh.id]


@pytest.mark.parametrize(
    ("methods", "match"),
    [
        (
            {"bc": {"algo": "bc", "tune": [{"trainer": {"lr": 1e-3}}, {"trainer": {"lr": 3e-3}}]},
             "awbc": {"algo": "awbc", "tune": [{"trainer": {"lr": 1e-3}}]}},
            r"benchmark gaussian-squeeze: every trained method needs the same number of tuning "
            r"configurations; got bc 2, awbc 1",
        ),
        (
            {"bc": {"algo": "bc", "tune": [{"options": {"hidden": 64, "layers": 1, "dropout": 0.1}}]}},
            r"varies 3 method-specific knobs \(dropout, hidden, layers\); at most 2",
        ),
        ({"bc": {"algo": "bc", "tune": [{"trainer": {"steps": 10}}]}}, r"tune\[0\]\.trainer: unknown key"),
        ({"bc": {"algo": "bc", "tune": [{"trainer": {"lr": 1e-3}}] * 2}}, r"two configurations are the same"),
        ({"bc": {"algo": "bc", "tune": []}}, r"non-empty list"),
        ({"x": {"behaviour": "expert", "tune": [{"trainer": {"lr": 1e-3}}]}}, r"behaviour method is not"),
        ({"bc": {"algo": "bc", "budgets": [3, 3]}}, r"budgets must be a non-empty list of distinct"),
        ({"bc": {"algo": "bc", "tune": [{"options": {"hiddn": 64}}]}}, r"tune c0\)\.options: .*hiddn"),
    ],
)
def test_bad_tuning_lists_fail_at_parse_time(methods, match):
    spec = _spec(methods=methods)
    spec.pop("budgets")
    with pytest.raises(ValueError, match=match):
        parse_grid(spec)


def test_budgets_come_from_one_run_and_selection_feeds_a_grid(tmp_path):
    grid = parse_grid(_spec())
    bc0 = next(c for c in grid.cells if c.id.endswith("bc__c0__s0"))
    data = prepare_dataset(bc0.dataset, tmp_path / "data")
    res = tmp_path / "res"
    for cell in grid.cells:
        run_cell(cell, data if cell.algo else None, res)
    store = ResultStore(res)
    recs = {r["id"]: r for r in store.records()}
    assert set(recs) == {
        "gaussian-squeeze__medium__bc__c0__s0__b2", "gaussian-squeeze__medium__bc__c0__s0__b4",
        "gaussian-squeeze__medium__bc__c1__s0__b2", "gaussian-squeeze__medium__bc__c1__s0__b4",
        "gaussian-squeeze__medium__behaviour__s0",
    }
    b2, b4 = recs[bc0.id + "__b2"], recs[bc0.id + "__b4"]
    assert (b2["budget"], b2["train"]["step"], b4["budget"], b4["train"]["step"]) == (2, 2, 4, 4)
    assert b2["train"]["run_dir"] == b4["train"]["run_dir"]  # one run, resumed from 2 to 4 steps
    from mfdiffuser.algos.trainer import logged_train_seconds

    # each budget's record counts its own stretch of training: together, the run's time
    total = logged_train_seconds(b4["train"]["run_dir"])
    assert 0 < b2["timings"]["train_run_s"] < total
    assert b2["timings"]["train_run_s"] + b4["timings"]["train_run_s"] == pytest.approx(total)
    assert b4["tuning"] == {"config": "c0", "settings": {"trainer": {"lr": 1.0e-3}}}
    # Resuming at a budget gives what one straight run to it gives.
    straight = parse_grid({**_spec(budgets=[4])}).cells[0]
    rec = run_cell(straight, data, tmp_path / "straight")
    assert rec["metrics"]["100"]["return"] == b4["metrics"]["100"]["return"]
    import torch

    ckpt = [read_checkpoint(Path(r) / "checkpoint.pt")["ema"]
            for r in (b4["train"]["run_dir"], rec["train"]["run_dir"])]
    assert all(torch.equal(ckpt[0][k], ckpt[1][k]) for k in ckpt[0])
    # a second call finds every budget recorded and evaluates nothing again
    stamps = {k: r["written_at"] for k, r in recs.items()}
    run_cell(bc0, data, res)
    assert {r["id"]: r["written_at"] for r in store.records()} == stamps

    # Selection: scores set by hand make the choice known; c1 at 2 steps lies within c1@4's interval.
    def set_scores(rid, values):
        rec = json.loads(store.record_path(rid).read_text())
        from mfdiffuser.eval.stats import mean_ci

        rec["metrics"]["100"]["score"] = {**mean_ci(values).as_dict(), "values": values}
        store.write(rec)

    set_scores(bc0.id + "__b2", [10.0, 12.0])
    set_scores(bc0.id + "__b4", [20.0, 22.0])
    c1 = "gaussian-squeeze__medium__bc__c1__s0"
    set_scores(c1 + "__b2", [40.0, 60.0])
    set_scores(c1 + "__b4", [50.0, 54.0])
    (choice,) = select(store.records())
    # best: c1 at 4 steps, 52 +- t(0.975, 1) * 2 = 52 +- 25.4; c1 at 2 steps (50) lies inside it
    assert (choice.best.config, choice.best.budget) == ("c1", 4) and choice.best.score.mean == 52.0
    assert choice.best.score.half_width == pytest.approx(12.7062 * 2.0, rel=1e-4)
    assert (choice.chosen.config, choice.chosen.budget) == ("c1", 2)
    assert choice.settings == {"trainer": {"lr": 3.0e-3, "steps": 2}}
    assert choice.reason.startswith("validation score 50.0 ± 127.1 (n=2) for c1 at 2 steps; best mean 52.0")

    out = tmp_path / "grids" / "selected.yaml"
    assert main(["select", str(res), "--out", str(out), "--plot", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = yaml.safe_load(out.read_text())
    assert written["methods"]["bc"]["gaussian-squeeze"]["trainer"] == {"lr": 3.0e-3, "steps": 2}
    assert written["methods"]["bc"]["gaussian-squeeze"]["reason"].startswith("validation score 50.0")
    # A test grid names the file; its cells train with the selected settings.
    test_spec = _spec(split="test", selected="selected.yaml", methods={"bc": {"algo": "bc"}})
    test_spec.pop("budgets")
    (out.parent / "test.yaml").write_text(yaml.safe_dump(test_spec))
    (cell,) = parse_grid(out.parent / "test.yaml").cells
    assert (cell.trainer["lr"], cell.trainer["steps"], cell.split) == (3.0e-3, 2, "test")
    with pytest.raises(ValueError, match="not found"):
        parse_grid({**test_spec, "selected": str(tmp_path / "nope.yaml")})

    # Every method is selected over the same tuning budget: a store missing records of its grid is
    # refused unless --partial.
    (res / "grid.yaml").write_text(yaml.safe_dump(_spec()))
    assert main(["select", str(res), "--out", str(out)]) == 0
    store.record_path(c1 + "__b4").unlink()
    assert main(["select", str(res), "--out", str(out)]) == 2
    assert main(["select", str(res), "--out", str(out), "--partial"]) == 0
    assert yaml.safe_load(out.read_text())["source"]["missing"] == 1


def test_selection_refuses_test_records_and_picks_the_smallest_flat_budget():
    def rec(budget, values, split="validation"):
        metrics = {str(i): {"score": {"mean": v}} for i, v in enumerate(values)}
        return {"id": f"x{budget}", "status": "done", "split": split, "method": "m", "benchmark": "b",
                "budget": budget, "train": {"step": budget}, "metrics": metrics}

    records = [rec(1000, [40, 42, 44]), rec(3000, [60, 62, 64]), rec(10000, [61, 63, 65])]
    (choice,) = select(records)
    # best mean 63 at 10,000 (interval 63 +- 4.97); 3,000 steps scores 62, inside it: chosen
    assert (choice.best.budget, choice.chosen.budget) == (10000, 3000)
    assert "the smallest budget within the best's 95% interval" in choice.reason
    with pytest.raises(ValueError, match="split 'test'"):
        select([*records, rec(1, [1.0], split="test")])


def test_shipped_tuning_grid_parses_on_validation_with_equal_configurations():
    grid = parse_grid(ROOT / "experiments" / "tune.yaml")
    assert grid.split == "validation"
    trained = [c for c in grid.cells if c.algo is not None]
    assert {c.benchmark for c in trained} == {"gaussian-squeeze", "ising", "crowd", "crowd-2d", "battle"}
    assert {c.method for c in trained} == {
        "mf-diffuser", "bc", "rwbc", "awbc", "mf-cql", "mf-iql", "dd-independent", "madiff"
    }
    main_spec = yaml.safe_load((ROOT / "experiments" / "main.yaml").read_text())
    assert set(grid.spec["benchmarks"]) == set(main_spec["benchmarks"])
    for bench in {c.benchmark for c in trained}:
        counts = {}
        for c in trained:
            if c.benchmark == bench:
                counts.setdefault(c.method, set()).add(c.config)
        assert len({len(v) for v in counts.values()}) == 1, bench
    assert all(c.budgets for c in trained)


def test_shipped_main_grid_trains_every_method_with_its_selected_settings():
    grid = parse_grid(ROOT / "experiments" / "main.yaml")
    chosen = yaml.safe_load((ROOT / "experiments" / "selected.yaml").read_text())["methods"]
    trained = [c for c in grid.cells if c.algo is not None]
    assert grid.split == "test" and {c.method for c in trained} == set(chosen)
    for cell in trained:
        entry = chosen[cell.method][cell.benchmark]
        for key, value in entry.get("trainer", {}).items():
            assert cell.trainer[key] == value, (cell.id, key)
        for key, value in entry.get("options", {}).items():
            assert cell.options[key] == value, (cell.id, key)


def test_a_variant_borrows_a_selection_beneath_its_own_settings(tmp_path):
    chosen = {
        "source": {},
        "methods": {
            "bc": {"gaussian-squeeze": {"trainer": {"lr": 3.0e-3, "steps": 2}, "options": {"hidden": 64}}},
            "awbc": {"gaussian-squeeze": {"trainer": {"lr": 1.0e-4, "steps": 9}}},
        },
    }
    # a benchmark the grid does not run: a grid that borrows takes its own benchmarks' entries only
    chosen["methods"]["bc"]["battle"] = {"trainer": {"lr": 1.0, "steps": 7}}
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump(chosen))
    methods = {
        "same": {"algo": "bc", "selected_as": "bc"},
        "narrow": {"algo": "bc", "selected_as": "bc", "options": {"hidden": 32}, "trainer": {"lr": 1.0e-2}},
    }
    spec = _spec(selected="chosen.yaml", methods=methods)
    spec.pop("budgets")
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(spec))
    cells = {c.method: c for c in parse_grid(tmp_path / "ablation.yaml").cells}
    same, narrow = cells["same"], cells["narrow"]
    # the borrowed selection beats the grid's trainer defaults; the variant's own settings beat it
    assert (same.trainer["lr"], same.trainer["steps"], same.options["hidden"]) == (3.0e-3, 2, 64)
    assert (narrow.trainer["lr"], narrow.trainer["steps"], narrow.options["hidden"]) == (1.0e-2, 2, 32)
    # the grid parsed although awbc's entry and bc's battle entry are not its own: a grid that
    # borrows may take part of a selection
    bad = [
        ({"x": {"algo": "bc", "selected_as": "mf-diffuser"}}, "selected_as names 'mf-diffuser'"),
        ({"x": {"behaviour": "dataset", "selected_as": "bc"}}, "a behaviour method is not trained"),
    ]
    for methods, match in bad:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "methods": methods}))
        with pytest.raises(ValueError, match=match):
            parse_grid(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="names no 'selected:' file"):
        parse_grid({**spec, "selected": None})
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump({"methods": {"bc": {}}}))
    with pytest.raises(ValueError, match="selected_as bc: no selection for gaussian-squeeze"):
        parse_grid(tmp_path / "ablation.yaml")
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump(chosen))
    # without a borrowing method, a selection of a method the grid lacks is still an error
    (tmp_path / "own.yaml").write_text(yaml.safe_dump({**spec, "methods": {"bc": {"algo": "bc"}}}))
    with pytest.raises(ValueError, match="name method 'awbc', not in the grid"):
        parse_grid(tmp_path / "own.yaml")
    # without one, a selection of a benchmark the grid lacks is an error too
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump({"methods": {"bc": chosen["methods"]["bc"]}}))
    both = {**spec, "methods": {"bc": {"algo": "bc"}, "awbc": {"algo": "awbc"}}}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    with pytest.raises(ValueError, match="method bc.benchmarks: 'battle' names no benchmark of the grid"):
        parse_grid(tmp_path / "both.yaml")
    # a trained method the selection lacks is an error, not a silent fall back to the grid's settings
    only_bc = {"bc": {"gaussian-squeeze": chosen["methods"]["bc"]["gaussian-squeeze"]}}
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump({"methods": only_bc}))
    with pytest.raises(ValueError, match="method awbc: chosen.yaml selects nothing for benchmark"):
        parse_grid(tmp_path / "both.yaml")
