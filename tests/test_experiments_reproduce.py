"""``mfd reproduce``: a store swept once on Ray is reproduced by rerunning its cells in one process."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mfdiffuser.cli import main
from mfdiffuser.experiments import parse_grid, run_grid
from mfdiffuser.experiments.reproduce import (
    ABSENT,
    Difference,
    choose,
    compare_records,
    load_targets,
    version_differences,
)
from mfdiffuser.experiments.store import ResultStore

ray = pytest.importorskip("ray")

SPEC = {
    "name": "tiny",
    "seeds": [0],
    "max_retries": 0,
    "data": {"episodes": 6, "ref_episodes": 2},
    "eval": {"episodes": 2},
    "trainer": {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 2},
    "exploitability": {"episodes": 1},
    "benchmarks": {"gaussian-squeeze": {"train": 100, "eval": [100], "qualities": ["medium"]}},
    "methods": {
        "bc": {"algo": "bc", "budgets": [2, 4]},  # one run, stopped and evaluated at step 2, then 4
        "expert": {"behaviour": "expert"},
    },
}
BC2, BC4 = "gaussian-squeeze__medium__bc__s0__b2", "gaussian-squeeze__medium__bc__s0__b4"
EXPERT = "gaussian-squeeze__medium__expert__s0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A store written by one sweep of ``SPEC`` on a local Ray (2 CPUs), as ``mfd sweep`` writes it.

    The grid file takes bc's learning rate from a selection file beside it (``selected:``).
    """
    if ray.is_initialized():
        ray.shutdown()
    root = tmp_path_factory.mktemp("swept")
    (root / "experiments").mkdir()
    (root / "experiments" / "grid.yaml").write_text(yaml.safe_dump({**SPEC, "selected": "chosen.yaml"}))
    chosen = {"methods": {"bc": {"gaussian-squeeze": {"trainer": {"lr": 0.002}, "reason": "test"}}}}
    (root / "experiments" / "chosen.yaml").write_text(yaml.safe_dump(chosen))
    store = root / "store"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_grid(root / "experiments" / "grid.yaml", store, progress=False)
    finally:
        ray.shutdown()
    assert summary.done == 2 and summary.failed == 0 and len(ResultStore(store).records()) == 3
    # the store holds its own copy of the selection, which its grid.yaml names
    assert yaml.safe_load((store / "grid.yaml").read_text())["selected"] == "selected.yaml"
    assert yaml.safe_load((store / "selected.yaml").read_text()) == chosen
    assert ResultStore(store).read(BC4)["config"]["trainer"]["lr"] == 0.002
    return store


def _copy(store, tmp_path):
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store"


def test_a_swept_store_is_reproduced(swept, tmp_path, capsys):
    out, work = tmp_path / "repro.json", tmp_path / "work"
    code = main(["reproduce", str(swept), "--only", "method=bc,expert", "--work", str(work),
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result["chosen"] == [BC2, BC4, EXPERT] and result["reproduced"] and result["candidates"] == 3
    assert all(c["identical"] and c["differences"] == [] and c["error"] is None for c in result["cells"])
    assert result["command"].startswith(f"mfd reproduce {swept} --seed 0 --only method=bc,expert")
    # the regenerated dataset is the recorded one, checked before training
    recorded = ResultStore(swept).read(BC4)["dataset"]["checksum"]
    assert result["cells"][1]["dataset_checksum"] == recorded
    assert f"{BC4}: dataset checksum {recorded[:12]} as recorded" in printed
    assert f"{BC2}: generating dataset" in printed and f"{BC4}: dataset " in printed  # generated once
    assert f"[2/3] {BC4}: identical" in printed and "3 of 3 records reproduced" in printed
    # each record was rerun from scratch in its own store, which holds that record only
    assert [p.name for p in (work / BC4 / "cells").iterdir()] == [f"{BC4}.json"]
    assert len(list((work / "datasets").glob("*.h5"))) == 1


def test_an_edited_record_is_reported_with_the_field(swept, tmp_path, capsys, monkeypatch):
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    store = _copy(swept, tmp_path)
    path = store / "cells" / f"{BC4}.json"
    rec = json.loads(path.read_text())
    score = rec["metrics"]["100"]["score"]["mean"]
    rec["metrics"]["100"]["score"]["mean"] = score + 1.0
    rec["timings"]["total_s"] = 1e6  # volatile: never a difference
    rec["versions"]["commit"] = "0123456789ab"  # another commit: a note, not a difference
    path.write_text(json.dumps(rec))
    out = tmp_path / "repro.json"
    code = main(["reproduce", str(store), "--only", "budget=4", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    (cell,) = json.loads(out.read_text())["cells"]
    assert not cell["identical"]
    assert cell["differences"] == [{"path": "metrics.100.score.mean", "recorded": score + 1.0, "now": score}]
    assert [d["path"] for d in cell["versions"]] == ["versions.commit"]
    assert f"{BC4}: differs in 1 field (first: metrics.100.score.mean)" in printed
    assert "0 of 1 records reproduced" in printed and "versions.commit" in printed
    assert list(temp.iterdir()) == []  # the rerun's temporary directory is gone


def _tiny_store(root: Path, seeds: int = 10) -> Path:
    """A store of hand-written finished records for every cell of a grid (nothing run)."""
    spec = {**SPEC, "seeds": list(range(seeds))}
    root.mkdir(parents=True)
    (root / "grid.yaml").write_text(yaml.safe_dump(spec))
    store = ResultStore(root)
    for cell in parse_grid(spec).cells:
        for rid in cell.record_ids:
            store.write({"id": rid, "status": "done", "fingerprint": cell.fingerprint})
    return root


def _drawn(store, *args, capsys):
    assert main(["reproduce", str(store), "--dry-run", *args]) == 0
    return capsys.readouterr().out.splitlines()[:-1]


def test_the_draw_depends_on_the_seed_only(tmp_path, capsys):
    store = _tiny_store(tmp_path / "a")
    first = _drawn(store, "--seed", "7", capsys=capsys)
    assert len(first) == 3 and first == sorted(first)
    assert _drawn(store, "--seed", "7", capsys=capsys) == first
    # another store with the same records, written in the reverse order: the same draw
    other = tmp_path / "b"
    other.mkdir()
    shutil.copy(store / "grid.yaml", other / "grid.yaml")
    for path in sorted((store / "cells").glob("*.json"), reverse=True):
        (other / "cells").mkdir(exist_ok=True)
        shutil.copy(path, other / "cells" / path.name)
    assert _drawn(other, "--seed", "7", capsys=capsys) == first
    draws = {tuple(_drawn(store, "--seed", str(s), capsys=capsys)) for s in range(5)}
    assert len(draws) > 1  # 3 of 30 records: five seeds do not all draw the same
    assert len(_drawn(store, "--cells", "5", capsys=capsys)) == 5
    # filters narrow the pool, then the draw is made from it
    only = _drawn(store, "--only", "method=bc", "--only", "budget=4", "--only", "seed=1,2,3", capsys=capsys)
    assert only == [f"gaussian-squeeze__medium__bc__s{s}__b4" for s in (1, 2, 3)]
    targets = load_targets(store).targets
    assert [t.id for t in choose(targets[::-1], 3, 7)] == [t.id for t in choose(targets, 3, 7)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a results store (not a directory)"),
        (["{empty}"], "has no grid.yaml"),
        (["{nothing_done}"], "has no finished records"),
        (["{store}", "--cells", "0"], "--cells must be >= 1"),
        (["{store}", "--only", "method=nope"], "no cell has method in ['nope']"),
        (["{store}", "--only", "budget=99"], "no finished record has budget in ['99']"),
        (["{store}", "--only", "colour=red"], "expected KEY=VALUE"),
        (["{store}", "--only", "method=expert", "--only", "budget=2"], "no finished record matches"),
        (["{store}", "--seed", "-1"], "--seed must be >= 0"),
        (["{store}", "--work", "{store}"], "is not empty"),
        (["{store}", "--out", "{store}"], "is a directory"),
        (["{store}", "--out", "{dangling}"], "symbolic link"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    store = _tiny_store(tmp_path / "store", seeds=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "nothing_done" / "cells").mkdir(parents=True)
    shutil.copy(store / "grid.yaml", tmp_path / "nothing_done" / "grid.yaml")
    ResultStore(tmp_path / "nothing_done").write({"id": BC2, "status": "failed"})
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = {k: str(tmp_path / k) for k in ("missing", "empty", "nothing_done", "store", "dangling")}
    assert main(["reproduce", *[a.format(**paths) for a in args]]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "store" / BC2).exists()  # nothing ran


def test_compare_records_lists_paths_of_what_differs():
    recorded = {
        "id": "x", "status": "done", "host": "a", "pid": 1, "timings": {"total_s": 1.0},
        "train": {"step": 4, "run_dir": "/a/run", "trained_by": "y"},
        "dataset": {"path": "/a/d.h5", "checksum": "aa"},
        "metrics": {"100": {"n_agents": 100, "wall_s": 0.1, "act_ms": {"mean": 1.0},
                            "score": {"mean": 50.0, "values": [40.0, 60.0]}, "episodes": 2}},
        "versions": {"torch": "2.13.0", "commit": "abc"},
    }  # fmt: skip
    rerun = json.loads(json.dumps(recorded))
    rerun.update(host="b", pid=2, timings={"total_s": 9.0})
    rerun["train"].update(run_dir="/b/run")
    del rerun["train"]["trained_by"]
    rerun["dataset"]["path"] = "/b/d.h5"
    rerun["metrics"]["100"].update(wall_s=0.5, act_ms={"mean": 3.0})
    rerun["versions"]["commit"] = "def"
    assert compare_records(recorded, rerun) == []  # times, places and who trained a shared run
    assert version_differences(recorded, rerun) == [Difference("versions.commit", "abc", "def")]
    rerun["metrics"]["100"]["score"]["values"][1] = 61.0
    rerun["metrics"]["100"]["episodes"] = 2.0  # same number, another type: not the same record
    rerun["metrics"]["100"]["extra"] = 1
    rerun["dataset"]["checksum"] = "bb"
    assert compare_records(recorded, rerun) == [
        Difference("dataset.checksum", "aa", "bb"),  # first: it explains the rest
        Difference("metrics.100.score.values[1]", 60.0, 61.0),
        Difference("metrics.100.episodes", 2, 2.0),
        Difference("metrics.100.extra", ABSENT, 1),
    ]
    rerun["metrics"]["100"]["score"]["values"] = [1.0]
    assert Difference("metrics.100.score.values", [40.0, 60.0], [1.0]) in compare_records(recorded, rerun)
