"""The experiment grid on a real local Ray (2 CPUs, one session for the module)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mfdiffuser.algos.trainer import read_checkpoint
from mfdiffuser.experiments import parse_grid, run_grid
from mfdiffuser.experiments.store import ResultStore, stable

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    if ray.is_initialized():  # a session left by another test module: start a clean one with 2 CPUs
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _spec(methods, seeds=(0, 1), eval_episodes=2):
    return {
        "name": "tiny",
        "seeds": list(seeds),
        "max_retries": 1,
        "data": {"episodes": 6, "ref_episodes": 2},
        "eval": {"episodes": eval_episodes},
        "trainer": {"steps": 10, "batch_size": 4, "log_every": 5, "checkpoint_every": 5},
        "exploitability": {"episodes": 1},
        "benchmarks": {"gaussian-squeeze": {"train": 100, "eval": [100, 1000], "qualities": ["medium"]}},
        "methods": methods,
    }


def test_parse_grid_expands_and_validates():
    grid = parse_grid(_spec({"bc": {"algo": "bc"}, "expert": {"behaviour": "expert"}}, seeds=(0, 1, 2)))
    assert len(grid.cells) == 6 and len(grid.datasets()) == 1
    cell = grid.cells[0]
    assert [p.n_agents for p in cell.eval_points] == [100, 1000] and cell.train_point.n_agents == 100
    battle = parse_grid({"benchmarks": {"battle": {"train": "battle-256", "eval": ["battle-64", 1024]}},
                         "methods": {"x": {"behaviour": "random"}}})
    assert [p.env_args["map_size"] for p in battle.cells[0].eval_points][0] == 40
    per_n = parse_grid({**_spec({"x": {"behaviour": "random", "eval": {"episodes_by_n": {1000: 1}}}}),
                        "eval": {"episodes": 5}})
    assert (per_n.cells[0].episodes_at(100), per_n.cells[0].episodes_at(1000)) == (5, 1)
    spec = _spec({"x": {"behaviour": "random", "eval": {"episodes_by_n": {1000: 1}}}})
    spec["benchmarks"]["gaussian-squeeze"]["qualities"] = ["expert", "medium"]
    spec["eval"] = {"episodes": 10, "episodes_by_quality": {"medium": 6}}
    by_q = {c.quality: (c.episodes_at(100), c.episodes_at(1000)) for c in parse_grid(spec).cells}
    assert by_q == {"expert": (10, 1), "medium": (6, 1)}
    # a more specific level wins: the method's episodes over the grid's episodes_by_quality, and
    # episodes_by_n entries add up over the levels
    spec["eval"]["episodes_by_n"] = {1000: 1}
    spec["methods"]["x"]["eval"] = {"episodes": 4, "episodes_by_n": {100: 2}}
    by_q = {c.quality: (c.episodes_at(100), c.episodes_at(1000)) for c in parse_grid(spec).cells}
    assert by_q == {"expert": (2, 1), "medium": (2, 1)}
    spec["methods"]["x"]["eval"] = {"episodes": 4}
    by_q = {c.quality: (c.episodes_at(100), c.episodes_at(1000)) for c in parse_grid(spec).cells}
    assert by_q == {"expert": (4, 1), "medium": (4, 1)}
    # training seed s runs its own block of episodes; every method's seed s the same block
    blocks = parse_grid(_spec({"x": {"behaviour": "random"}, "y": {"behaviour": "expert"}}, seeds=(0, 2)))
    seeds = {(c.method, c.seed): c.episode_seeds_at(1000) for c in blocks.cells}
    assert seeds[("x", 2)] == seeds[("y", 2)] and seeds[("x", 2)][0] - seeds[("x", 0)][0] == 4
    assert not set(seeds[("x", 0)]) & set(seeds[("x", 2)])
    for bad, msg in [
        ({"methods": {"x": {"algo": "nope"}}}, "unknown algorithm"),
        ({"methods": {"x": {"algo": "bc", "behaviour": "expert"}}}, "exactly one"),
        ({"methods": {"x": {"algo": "bc", "trainer": {"stepz": 1}}}}, "unknown key"),
        ({"seeds": []}, "seeds"),
        ({"eval": {"episodes_by_quality": {"medum": 6}}}, "episodes_by_quality names medum"),
        ({"eval": {"episodes_by_quality": {"medium": 0}}}, ">= 1"),
        ({"seeds": [500_000], "eval": {"episodes": 2}}, "runs past the split's"),
    ]:
        spec = _spec({"bc": {"algo": "bc"}})
        spec.update(bad)
        with pytest.raises(ValueError, match=msg):
            parse_grid(spec)


def test_grid_retries_records_failures_and_reruns_only_missing(ray_session, tmp_path):
    results = tmp_path / "res"

    def hook(cell, results_dir):
        import os as _os
        from pathlib import Path as _Path

        from mfdiffuser.errors import BudgetExceeded

        if cell.method == "bc" and cell.seed == 1:  # the worker dies on the first attempt only
            marker = _Path(results_dir) / "killed-once"
            if not marker.exists():
                marker.write_text("x")
                _os.kill(_os.getpid(), 9)
        if cell.method == "expert" and cell.seed == 0:
            raise RuntimeError("boom in cell")
        if cell.method == "expert" and cell.seed == 1:
            raise BudgetExceeded(12.0, 300.0, 8.0, 60.0)
        if cell.method == "random":  # user errors fail the same way every time: never retried
            from mfdiffuser.errors import MfdError

            raise ValueError("bad input in cell") if cell.seed == 0 else MfdError("missing thing")

    spec = _spec({"bc": {"algo": "bc"}, "expert": {"behaviour": "expert"}, "random": {"behaviour": "random"}})
    summary = run_grid(spec, results, progress=False, hook=hook)
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 3)
    store = ResultStore(results)
    recs = {r["id"]: r for r in store.records()}
    assert len(recs) == 6
    user0, user1 = recs["gaussian-squeeze__medium__random__s0"], recs["gaussian-squeeze__medium__random__s1"]
    assert user0["status"] == "failed" and user0["error"] == "ValueError: bad input in cell"
    assert user0["attempt"] == 1 and user1["attempt"] == 1 and "missing thing" in user1["error"]
    assert len((results / "attempts" / user0["id"]).read_text().splitlines()) == 1
    bc0, bc1 = recs["gaussian-squeeze__medium__bc__s0"], recs["gaussian-squeeze__medium__bc__s1"]
    assert bc0["status"] == bc1["status"] == "done"
    assert bc1["attempt"] == 2 and (results / "killed-once").exists()  # retried after the worker died
    assert bc0["train"]["step"] == 10 and set(bc0["metrics"]) == {"100", "1000"}
    assert 0 < bc0["timings"]["train_run_s"] <= bc0["timings"]["train_s"]  # trained in this attempt
    assert "score" in bc0["metrics"]["1000"] and bc0["versions"]["ray"] == ray.__version__
    assert bc0["exploitability"]["kind"] == "exact"
    failed = recs["gaussian-squeeze__medium__expert__s0"]
    assert failed["status"] == "failed" and "boom in cell" in failed["error"] and failed["attempt"] == 2
    skipped = recs["gaussian-squeeze__medium__expert__s1"]
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("skipped: needs 12 GiB")

    before = {k: (r["written_at"], r["pid"]) for k, r in recs.items() if r["status"] != "failed"}
    again = run_grid(spec, results, progress=False)  # no fault this time: only the failed cell reruns
    assert (again.skipped_existing, again.done, again.failed) == (3, 3, 0)
    after = {r["id"]: r for r in store.records()}
    assert all((after[k]["written_at"], after[k]["pid"]) == v for k, v in before.items())
    assert after["gaussian-squeeze__medium__expert__s0"]["status"] == "done"
    # One dataset, generated once for both bc seeds.
    assert len(list((results / "datasets").glob("*.h5"))) == 1
    # One sweep-log line per call that ran cells, with the wall time and the cluster's CPUs.
    run_grid(spec, results, progress=False)  # nothing left to run: no line
    first, second = store.sweeps()
    assert (first["done"], first["skipped"], first["failed"], first["skipped_existing"]) == (2, 1, 3, 0)
    assert (second["done"], second["skipped_existing"]) == (3, 3)
    assert first["cpus"] == 2.0 and 0 < first["seconds"] and not first["interrupted"]
    assert first["started_at"] <= second["started_at"]
    lines = [json.loads(x) for x in (results / "sweeps.jsonl").read_text().splitlines()]
    assert [x.get("state") for x in lines] == ["started", None, "started", None]  # a start and an end each


def test_interrupted_sweep_is_logged_with_its_wall_time(ray_session, tmp_path, monkeypatch):
    results = tmp_path / "res"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "wait", stop)
    with pytest.raises(KeyboardInterrupt):
        run_grid(_spec({"expert": {"behaviour": "expert"}}), results, progress=False)
    (entry,) = ResultStore(results).sweeps()
    assert entry["interrupted"] and entry["done"] == 0 and entry["seconds"] > 0
    assert json.loads((results / "summary.json").read_text())["interrupted"]


DRIVER = """
import sys, time
from mfdiffuser.experiments import run_grid
spec = {spec!r}
run_grid(spec, {results!r}, address={address!r}, progress=False,
         hook=lambda cell, results_dir: time.sleep(1.0))
"""


def test_driver_killed_midway_then_rerun_completes_missing(ray_session, tmp_path):
    results = tmp_path / "res"
    spec = _spec({"expert": {"behaviour": "expert"}, "random": {"behaviour": "random"},
                  "medium": {"behaviour": "medium"}}, seeds=(0, 1, 2), eval_episodes=1)
    code = DRIVER.format(spec=spec, results=str(results), address=ray_session)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cells = results / "cells"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and len(list(cells.glob("*.json"))) < 2:
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)  # let Ray reap the dead driver's tasks
    before = {p.stem: json.loads(p.read_text())["written_at"] for p in cells.glob("*.json")}
    assert 2 <= len(before) < 9
    summary = run_grid(spec, results, progress=False)
    assert summary.skipped_existing >= len(before)
    assert summary.done + summary.skipped_existing == 9 and summary.failed == 0
    recs = {r["id"]: r for r in ResultStore(results).records()}
    assert len(recs) == 9 and all(r["status"] == "done" for r in recs.values())
    assert all(recs[k]["written_at"] == v for k, v in before.items())
    for k in before:  # finished cells were not started again
        assert len(Path(results, "attempts", k).read_text().splitlines()) == 1


@pytest.mark.parametrize("name", ["main", "tune", "ablation", "replan", "weighting", "demo"])
def test_shipped_grids_parse_with_valid_options(name, tmp_path, capsys):
    from mfdiffuser.algos.base import algo_module, config_from_dict
    from mfdiffuser.cli import main

    root = Path(__file__).resolve().parents[1]
    demo = root / "src/mfdiffuser/presets/demo.yaml"
    path = demo if name == "demo" else root / "experiments" / f"{name}.yaml"
    grid = parse_grid(path)
    assert grid.name == name
    for cell in grid.cells:
        if cell.algo is not None:
            config_from_dict(algo_module(cell.algo).Config, cell.options)
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("todo") == len(grid.cells) and f"{len(grid.cells)} cells" in out


def test_weighting_grid_trains_mf_diffuser_as_the_main_grid_does():
    """Its rows are main.yaml's MF-Diffuser on mixed data but for ``weighting``; main takes the chosen mode.

    The default row is main.yaml's weighting when the grid ran (per segment on gaussian-squeeze), the
    others each one mode; main.yaml now weighs per agent everywhere, the mode the grid chose.
    """
    weighting_when_measured = {"gaussian-squeeze": "segment", "ising": "agent", "crowd": "agent"}
    main_cells = {c.id: c for c in parse_grid("experiments/main.yaml").cells}
    rows = parse_grid("experiments/weighting.yaml").cells
    for cell in rows:
        if cell.method == "behaviour":
            continue
        assert cell.algo == "mf-diffuser"
        ref = main_cells[f"{cell.benchmark}__mixed__mf-diffuser__s{cell.seed}"]
        assert (cell.trainer["steps"], cell.trainer["lr"]) == (ref.trainer["steps"], ref.trainer["lr"])
        assert cell.trainer["batch_size"] == ref.trainer["batch_size"]
        assert cell.policy == ref.policy
        options = {k: v for k, v in cell.options.items() if k != "weighting"}
        assert options == {k: v for k, v in ref.options.items() if k != "weighting"}
        measured = weighting_when_measured[cell.benchmark]
        if cell.method == "default":
            assert cell.options.get("weighting", "segment") == measured
        else:
            assert cell.options["weighting"] == cell.method != measured
        assert ref.options["weighting"] == "agent"


def test_select_cells_keeps_identities_and_rejects_bad_filters():
    from mfdiffuser.experiments.grid import parse_grid, select_cells

    grid = parse_grid("experiments/main.yaml")
    subset = select_cells(grid.cells, ["benchmark=gaussian-squeeze", "quality=medium,mixed", "seed=0"])
    assert {c.benchmark for c in subset} == {"gaussian-squeeze"}
    assert {c.quality for c in subset} == {"medium", "mixed"} and {c.seed for c in subset} == {0}
    full = {c.id: c.fingerprint for c in grid.cells}
    assert all(full[c.id] == c.fingerprint for c in subset)
    for bad in (["bogus=1"], ["method"], ["method=nope"]):
        with pytest.raises(ValueError):
            select_cells(grid.cells, bad)


def test_fill_train_times_adds_the_runs_own_training_time_once(tmp_path):
    store = ResultStore(tmp_path / "res")
    run = store.root / "runs" / "c__s0-abcd1234"  # found under the store though the record's path moved
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "steps_per_s": 2.0, "interval_s": 5.0}) + "\n")
    timings = {"train_s": 0.5, "total_s": 9.0}
    done = {"status": "done", "timings": timings}
    store.write({"id": "c__s0", **done, "train": {"run_dir": f"/gone/{run.name}"}})
    store.write({"id": "d__s0", **done, "train": {"run_dir": "/gone/d"}})  # its run is gone
    store.write({"id": "e__s0", "status": "done", "timings": {"total_s": 1.0}})  # nothing trained
    before = {r["id"]: r for r in store.records()}
    assert store.fill_train_times() == 1
    after = {r["id"]: r for r in store.records()}
    assert after["c__s0"]["timings"] == {**timings, "train_run_s": 5.0}
    assert after["c__s0"]["written_at"] == before["c__s0"]["written_at"]
    assert after["d__s0"] == before["d__s0"] and after["e__s0"] == before["e__s0"]
    assert store.fill_train_times() == 0


def _repro_spec():
    spec = _spec(
        {
            "bc": {"algo": "bc"},
            "mf-diffuser": {
                "algo": "mf-diffuser",
                "options": {"horizon": 1, "stats_batches": 1},
                "policy": {"levels": [8, 16], "steps_per_level": [2, 1]},
            },
        },
        seeds=(0, 1),
    )
    spec["trainer"]["steps"] = 4
    spec["benchmarks"]["gaussian-squeeze"]["eval"] = [100]
    return spec


def test_two_sweeps_of_a_grid_give_identical_records(ray_session, tmp_path):
    spec = _repro_spec()
    first = run_grid(spec, tmp_path / "a", progress=False)
    second = run_grid(spec, tmp_path / "b", progress=False)
    assert first.done == second.done == 4
    a = {r["id"]: stable(r) for r in ResultStore(tmp_path / "a").records()}
    b = {r["id"]: stable(r) for r in ResultStore(tmp_path / "b").records()}
    assert a == b and len(a) == 4
    # trained weights too, not just the scores derived from them; and the training seed matters
    def weights(store, cell_id):
        (path,) = (tmp_path / store / "runs").glob(f"{cell_id}-*/checkpoint.pt")
        return read_checkpoint(path)["ema"]

    for cell_id in a:
        ea, eb = weights("a", cell_id), weights("b", cell_id)
        assert all(torch.equal(ea[k], eb[k]) for k in ea), cell_id
    for method in ("bc", "mf-diffuser"):
        w0, w1 = (weights("a", f"gaussian-squeeze__medium__{method}__s{s}") for s in (0, 1))
        assert not all(torch.equal(w0[k], w1[k]) for k in w0), method
    # Training seed s of every method is scored on the split's block s of episodes.
    s0 = a["gaussian-squeeze__medium__bc__s0"]
    assert s0["split"] == "validation" and s0["config"]["split"] == "validation"
    seeds = {(r["seed"], tuple(r["metrics"]["100"]["episode_seeds"])) for r in a.values()}
    assert seeds == {(0, (4_000_000, 4_000_001)), (1, (4_000_002, 4_000_003))}
    for rec in a.values():
        m = rec["metrics"]["100"]
        assert m["score"]["episode_seeds"] == m["episode_seeds"] and len(m["score"]["values"]) == 2


def test_cells_give_the_same_records_in_either_order_in_one_process(tmp_path):
    """A worker's earlier cells leave no trace: global generators are reset for each cell."""
    from mfdiffuser.experiments.cell import prepare_dataset, run_cell

    grid = parse_grid(_repro_spec())
    cells = [c for c in grid.cells if c.seed == 0]
    assert {c.method for c in cells} == {"bc", "mf-diffuser"}
    data = prepare_dataset(cells[0].dataset, tmp_path / "data")
    out = {}
    for name, order in (("fwd", cells), ("rev", cells[::-1])):
        torch.manual_seed(123 if name == "fwd" else 456)  # whatever the process did before
        out[name] = {c.id: stable(run_cell(c, data, tmp_path / name)) for c in order}
    assert out["fwd"] == out["rev"]


def test_methods_differing_only_in_policy_share_one_training(tmp_path):
    from mfdiffuser.experiments.cell import prepare_dataset, run_cell

    methods = {"bc": {"algo": "bc"}, "bc-greedy": {"algo": "bc", "policy": {"acting": "greedy"}},
               "bc-lr": {"algo": "bc", "trainer": {"lr": 1e-3}}}
    grid = parse_grid(_spec(methods, seeds=(0,)))
    first, greedy, other = grid.cells
    assert first.run_name == greedy.run_name != other.run_name
    data = prepare_dataset(first.dataset, tmp_path / "data")
    recs = [run_cell(c, data, tmp_path / "r") for c in (first, greedy)]
    assert recs[0]["train"]["run_dir"] == recs[1]["train"]["run_dir"]
    assert "trained_by" not in recs[0]["train"] and recs[1]["train"]["trained_by"] == first.id
    # trained once: the second cell loaded the run, and its record counts no training time
    run_dir = Path(recs[0]["train"]["run_dir"])
    logged = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [5, 10]
    assert recs[0]["timings"]["train_run_s"] > 0 and recs[1]["timings"]["train_run_s"] == 0.0
    assert recs[0]["config"]["policy"] != recs[1]["config"]["policy"]


def test_a_planner_over_its_budget_at_every_n_is_skipped_before_training(tmp_path):
    from mfdiffuser.algos.base import algo_module
    from mfdiffuser.data import load_dataset
    from mfdiffuser.experiments.cell import declined_ns, prepare_dataset, run_cell

    small = {"hidden": 16, "n_layers": 1, "n_heads": 2, "horizon": 1, "replan_every": 1}

    def madiff_cell(seconds):
        options = {**small, "max_plan_seconds": seconds}
        return parse_grid(_spec({"m": {"algo": "madiff", "options": options}}, (0,))).cells[0]

    cell = madiff_cell(1e-9)
    data = prepare_dataset(cell.dataset, tmp_path / "data")
    rec = run_cell(cell, data, tmp_path / "r")
    assert rec["status"] == "skipped" and "train" not in rec and not (tmp_path / "r" / "runs").exists()
    assert {n: m["status"] for n, m in rec["metrics"].items()} == {"100": "skipped", "1000": "skipped"}
    assert rec["reason"].startswith("skipped: needs") and "budget" in rec["reason"]
    assert rec["timings"]["total_s"] >= 0.0
    # the estimate from sizes alone is the trained model's: a budget between N = 100 and N = 1,000
    # declines 1,000 only (the cell trains; that N is skipped at evaluation)
    module = algo_module("madiff")
    learner = module.build(module.Config(**small), load_dataset(data, verify=False).meta, None)
    cheap, dear = (learner.plan_cost(n, module.Config.assumed_gflops)[1] for n in (100, 1000))
    declined = declined_ns(madiff_cell((cheap * dear) ** 0.5))
    assert list(declined) == [1000] and declined[1000].startswith("skipped: needs")
    assert declined_ns(parse_grid(_spec({"bc": {"algo": "bc"}}, (0,))).cells[0]) == {}


def test_run_lock_makes_a_second_cell_wait(tmp_path):
    import threading

    from mfdiffuser.experiments.cell import run_lock

    run_dir = tmp_path / "runs" / "x"
    entered = threading.Event()

    def second():
        with run_lock(run_dir):
            entered.set()

    with run_lock(run_dir):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.3)  # blocked while the first holds the lock
    assert entered.wait(10)
    thread.join()


def test_nice_lowers_the_cells_priority_and_is_logged(ray_session, tmp_path):
    results = tmp_path / "res"

    def hook(cell, results_dir):
        import os as _os
        from pathlib import Path as _Path

        (_Path(results_dir) / f"nice-{cell.seed}").write_text(str(_os.getpriority(_os.PRIO_PROCESS, 0)))

    spec = _spec({"expert": {"behaviour": "expert"}})
    driver = os.getpriority(os.PRIO_PROCESS, 0)
    summary = run_grid(spec, results, progress=False, hook=hook, nice=19)
    assert summary.done == 2
    assert [(results / f"nice-{s}").read_text() for s in (0, 1)] == ["19", "19"]
    assert ResultStore(results).sweeps()[0]["nice"] == 19
    assert os.getpriority(os.PRIO_PROCESS, 0) == driver  # the driver keeps its priority
    with pytest.raises(ValueError, match="--nice must be in 0-19, got 20"):
        run_grid(spec, tmp_path / "other", progress=False, nice=20)
    assert not (tmp_path / "other").exists()
