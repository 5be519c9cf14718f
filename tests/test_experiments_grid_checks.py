"""Grid specs are checked in full by ``parse_grid``, before any dataset, run or Ray session starts."""


import pytest
import yaml

from grid_specs import with_changes
from mfdiffuser.experiments.grid import load_spec, parse_grid

BASE = {
    "name": "checks",
    "seeds": [0],
    "trainer": {"steps": 2},
    "benchmarks": {"gs": {"env": "gaussian-squeeze", "train": 100, "eval": [100], "qualities": ["medium"]}},
    "methods": {"bc": {"algo": "bc"}},
}


def _spec(**changes):
    return with_changes(BASE, **changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"methods__bc__options": {"foo": 1}}, r"method bc on benchmark gs\.options: .*foo"),
        ({"methods__bc__options": {"hidden": 2.5}}, r"method bc.*hidden"),
        ({"methods__bc__benchmarks": {"gs": {"options": {"hidden": "x"}}}}, r"benchmark gs.*hidden"),
        ({"trainer": {"steps": 0}}, r"method bc.*trainer.*steps"),
        ({"trainer": {"lr": "fast"}}, r"trainer.*lr"),
        ({"trainer": {"device": "tpu"}}, r"trainer: unknown device 'tpu'"),
        ({"data": {"episodes": 0}}, r"benchmark gs\.data: episodes must be an integer >= 1"),
        ({"data": {"episodes": 1}, "benchmarks__gs__qualities": ["mixed"]}, r"episodes .*mixed needs 2"),
        ({"data": {"ref_episodes": 0}}, r"benchmark gs\.data: ref_episodes"),
        ({"data": {"episodes": True}}, r"episodes must be an integer"),
        ({"benchmarks__gs__env": "ising", "benchmarks__gs__eval": [100, 1000]}, r"eval: N=1000: .*square"),
        ({"benchmarks__gs__env": "ising", "benchmarks__gs__train": 99}, r"gs\.train: N=99: .*square"),
        ({"max_retries": "two"}, r"max_retries"),
        ({"benchmarks__gs__qualities": []}, r"qualities"),
        ({"exploitability": {"episodes": 0}}, r"method bc on benchmark gs\.exploitability: episodes"),
        ({"methods__bc__exploitability": {"enabled": "yes"}}, r"exploitability: enabled"),
        (
            {"methods__bc__benchmarks": {"gaussian-squeeze": {"skip": True}}},
            r"^method bc\.benchmarks: 'gaussian-squeeze' names no benchmark of the grid; benchmarks: gs$",
        ),
        ({"methods__bc__benchmarks": ["gs"]}, r"method bc\.benchmarks: must be a mapping"),
        ({"methods__bc__benchmarks": {"gs": "skip"}}, r"method bc\.benchmarks\.gs: must be a mapping"),
        ({"split": "tset"}, r"grid: unknown split 'tset'; choose from test, validation"),
    ],
)
def test_bad_specs_fail_at_parse_time(changes, match):
    with pytest.raises(ValueError, match=match):
        parse_grid(_spec(**changes))


def test_good_spec_parses_and_a_cuda_device_is_left_to_the_workers():
    grid = parse_grid(_spec(trainer={"steps": 2, "device": "cuda"}, methods__bc__options={"hidden": 32}))
    (cell,) = grid.cells
    assert cell.options == {"hidden": 32} and cell.trainer == {"steps": 2, "device": "cuda"}


def test_skipped_benchmark_options_are_not_checked():
    spec = _spec(methods__bc__benchmarks={"gs": {"skip": True, "options": {"foo": 1}}})
    spec["methods"]["mlp"] = {"algo": "bc"}
    assert [c.method for c in parse_grid(spec).cells] == ["mlp"]


def test_load_spec_names_the_path(tmp_path):
    binary = tmp_path / "data.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"data\.h5 is not a UTF-8 text"):
        load_spec(binary)
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory"):
        load_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.yaml not found"):
        load_spec(tmp_path / "nope.yaml")


def test_rejected_dataset_fails_its_cells_without_retry(tmp_path):
    from dataclasses import replace

    from mfdiffuser.experiments.runner import DatasetFailure, _remote_cell, _remote_dataset
    from mfdiffuser.experiments.store import ResultStore

    (cell,) = parse_grid(BASE).cells
    bad = replace(cell.dataset, env_args={**cell.dataset.env_args, "n_agents": 0})
    failure = _remote_dataset(bad, str(tmp_path / "data"), None)
    assert isinstance(failure, DatasetFailure) and "n_agents" in failure.error
    rec = _remote_cell(cell, failure, str(tmp_path / "res"), None, None)
    assert rec["status"] == "failed" and rec["attempt"] == 1 and bad.key in rec["error"]
    assert [r["id"] for r in ResultStore(tmp_path / "res").records()] == [cell.id]


def test_versions_name_the_source_commit_of_a_checkout():
    import subprocess
    from pathlib import Path

    from mfdiffuser.experiments.store import versions

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert versions()["commit"].split("+")[0] == head


def test_unreachable_cluster_address_fails_in_one_line_at_once(tmp_path, capsys):
    import socket

    import yaml

    from mfdiffuser.cli import main

    with socket.socket() as s:  # a port that nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    code = main(["sweep", str(spec), "--results", str(tmp_path / "res"), "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cannot join the Ray cluster at '127.0.0.1:{port}': nothing answers there" in err


def test_yaml_merge_keys_override_without_counting_as_duplicates():
    from mfdiffuser.experiments.grid import yaml_load

    text = "a: &base {x: 1, y: 2}\nb:\n  <<: *base\n  y: 3\n"
    assert yaml_load(text) == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'y'"):
        yaml_load("b:\n  <<: {x: 1}\n  y: 3\n  y: 4\n")


def test_seeds_by_quality_sets_the_seeds_of_those_qualities():
    spec = {
        "seeds": [0, 1, 2],
        "seeds_by_quality": {"medium": [0, 1, 2, 3, 4]},
        "benchmarks": {"crowd": {"train": 100, "eval": [100], "qualities": ["medium", "expert"]}},
        "methods": {"bc": {"algo": "bc"}},
    }
    seeds = {}
    for cell in parse_grid(spec).cells:
        seeds.setdefault(cell.quality, []).append(cell.seed)
    assert seeds == {"medium": [0, 1, 2, 3, 4], "expert": [0, 1, 2]}
    with pytest.raises(ValueError, match="seeds_by_quality names mixed, a quality no benchmark"):
        parse_grid({**spec, "seeds_by_quality": {"mixed": [0]}})
    with pytest.raises(ValueError, match=r"seeds_by_quality.medium must be a non-empty list"):
        parse_grid({**spec, "seeds_by_quality": {"medium": []}})
