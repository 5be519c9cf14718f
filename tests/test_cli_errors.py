"""Bad input to every ``mfd`` command: exit code 2, one line on stderr, no traceback, no output left.

Most cases call :func:`mfdiffuser.cli.main` in-process; a few run ``python -m mfdiffuser.cli`` to
check the real exit path. Cases that fail today are ``xfail(strict=True)`` with the cause, so they
stay visible and flip to an error once fixed (then drop the marker).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grid_specs import TINY_GRID, with_changes
from mfdiffuser.cli import main

GS = [
    "--env",
    "gaussian-squeeze",
    "--n-agents",
    "100",
    "--quality",
    "medium",
    "--episodes",
    "2",
    "--workers",
    "1",
    "--quiet",
    "--ref-episodes",
    "1",
]
"""A valid tiny `mfd data generate` (without --out)."""

TRAIN = [
    "train",
    "--algo",
    "bc",
    "--dataset",
    "{gs}",
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--no-progress",
    "--set",
    "hidden=16",
]
"""A valid tiny `mfd train` (without --out)."""

EVAL = ["--episodes", "1", "--seeds", "1", "--ref-episodes", "1", "--no-progress"]

GRID = TINY_GRID


def _grid(**changes: object) -> dict:
    return with_changes(GRID, **changes)


GRIDS = {
    "unknown_env": _grid(benchmarks__gs__env="nope"),
    "unknown_algo": _grid(methods__bc__algo="nope"),
    "unknown_quality": _grid(benchmarks__gs__qualities=["great"]),
    "other_benchmark_setting": _grid(benchmarks__gs__eval=[100, "ising-10x10"]),
    "zero_seeds": _grid(seeds=[]),
    "ising_not_square": _grid(benchmarks__gs__env="ising", benchmarks__gs__eval=[100, 1000]),
    "data_episodes_zero": _grid(data__episodes=0),
    "eval_episodes_negative": _grid(eval__episodes=-1),
    "trainer_steps_zero": _grid(trainer__steps=0),
    "unknown_option": _grid(methods__bc__options={"foo": 1}),
    "option_wrong_type": _grid(methods__bc__options={"hidden": "abc"}),
    "trainer_list": _grid(trainer=[1, 2]),
    "options_list": _grid(methods__bc__options=[1, 2]),
    "benchmark_options_list": _grid(methods__bc__benchmarks={"gs": {"options": [1]}}),
    "seeds_beyond_64_bits": _grid(seeds=[10**30]),
    "seeds_bool": _grid(seeds=[True]),
    "name_escapes": _grid(name="../../escaped"),
    "name_absolute": _grid(name="/tmp/abs"),
    "method_name_with_slash": _grid(methods={"a/b": {"algo": "bc"}}),
    "data_episodes_huge": _grid(data__episodes=10**20),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Good and bad inputs shared by every case (absolute paths)."""
    root = tmp_path_factory.mktemp("cli_errors")
    paths = {
        "root": root,
        "gs": root / "gs.h5",
        "ising": root / "ising.h5",
        "text": root / "notes.txt",
        "dir": root / "adir",
        "run": root / "run_gs",
        "ising_run": root / "run_ising",
        "nockpt": root / "run_no_checkpoint",
        "badjson": root / "run_bad_json",
        "mismatch": root / "run_other_architecture",
        "bench": root / "benchmarks",
    }
    assert main(["data", "generate", *GS, "--out", str(paths["gs"])]) == 0
    assert (
        main(
            [
                "data",
                "generate",
                "--setting",
                "ising-10x10",
                "--quality",
                "random",
                "--episodes",
                "1",
                "--workers",
                "1",
                "--quiet",
                "--ref-episodes",
                "1",
                "--out",
                str(paths["ising"]),
            ]
        )
        == 0
    )
    paths["text"].write_text("not a dataset\n")
    paths["fifo"] = root / "pipe"
    os.mkfifo(paths["fifo"])
    paths["dir"].mkdir()
    fill = {"gs": str(paths["gs"])}
    assert main([a.format(**fill) for a in TRAIN] + ["--out", str(paths["run"])]) == 0
    ising_train = [a.format(gs=paths["ising"]) for a in TRAIN]
    assert main(ising_train + ["--out", str(paths["ising_run"])]) == 0
    record = json.loads((paths["run"] / "run.json").read_text())
    paths["nockpt"].mkdir()
    (paths["nockpt"] / "run.json").write_text(json.dumps(record))
    paths["badjson"].mkdir()
    (paths["badjson"] / "run.json").write_text("{not json")
    for name, text in [
        ("listjson", "[1, 2]"),
        ("emptyjson", "{}"),
        ("noconfig", json.dumps({k: v for k, v in record.items() if k != "config"})),
    ]:
        paths[name] = root / f"run_{name}"
        paths[name].mkdir()
        (paths[name] / "run.json").write_text(text)
        (paths[name] / "checkpoint.pt").write_bytes((paths["run"] / "checkpoint.pt").read_bytes())
    # a run whose checkpoint no longer fits the network its run.json describes (e.g. an older version)
    paths["mismatch"].mkdir()
    (paths["mismatch"] / "checkpoint.pt").write_bytes((paths["run"] / "checkpoint.pt").read_bytes())
    record["config"]["hidden"] = 24
    (paths["mismatch"] / "run.json").write_text(json.dumps(record))
    paths["bench"].mkdir()
    (paths["bench"] / "bench_tiny.py").write_text("import sys\nprint(sys.argv[1:])\n")
    for name, grid in GRIDS.items():
        (root / f"grid_{name}.yaml").write_text(json.dumps(grid))  # JSON is YAML
        paths[f"grid_{name}"] = root / f"grid_{name}.yaml"
    (root / "grid_bad_yaml.yaml").write_text("benchmarks: [\n")
    paths["grid_dup_keys"] = root / "grid_dup_keys.yaml"  # JSON with a key twice is YAML too
    paths["grid_dup_keys"].write_text(json.dumps(GRID)[:-1] + ', "seeds": [1]}')
    paths["dangling"] = root / "dangling"
    os.symlink(root / "nowhere", paths["dangling"])
    paths["loop"] = root / "loop1"
    os.symlink(root / "loop2", paths["loop"])
    os.symlink(paths["loop"], root / "loop2")
    (root / "grid_list.yaml").write_text("- 1\n- 2\n")
    (root / "grid_deep.yaml").write_text("seeds: " + "[" * 100_000 + "]" * 100_000 + "\n")
    paths["grid_deep"] = root / "grid_deep.yaml"
    paths["grid_bad_yaml"] = root / "grid_bad_yaml.yaml"
    paths["grid_list"] = root / "grid_list.yaml"
    paths["grid_ok"] = root / "grid_ok.yaml"
    paths["grid_ok"].write_text(json.dumps(GRID))
    return {k: str(v) for k, v in paths.items()}


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


def expect_error(argv: list[str], capsys, cwd: Path, inputs_root: Path, match: str | None = None) -> str:
    """Run ``argv``; assert exit 2, one stderr line ``mfd ...: error: ...``, and nothing written."""
    before = (_snapshot(cwd), _snapshot(inputs_root))
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}, stderr {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert re.match(r"mfd( [a-z-]+)*: error: \S", lines[0]), lines[0]
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    assert (_snapshot(cwd), _snapshot(inputs_root)) == before, "output left behind or input modified"
    return lines[0]


def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# (argv with {placeholders} of the inputs fixture, regex the error line must match)
CASES = [
    # envs
    pytest.param(["envs", "--bogus"], "unrecognized arguments", id="envs-unknown-option"),
    pytest.param(["envs", "extra"], "unrecognized arguments", id="envs-extra-argument"),
    pytest.param(["nope"], "invalid choice", id="unknown-command"),
    # data generate
    pytest.param(["data"], "required", id="data-no-subcommand"),
    pytest.param(["data", "bogus"], "invalid choice", id="data-unknown-subcommand"),
    pytest.param(
        ["data", "generate", *GS[2:], "--env", "nope", "--out", "o.h5"],
        "unknown env",
        id="generate-unknown-env",
    ),
    pytest.param(
        ["data", "generate", *GS[4:], "--setting", "nope", "--out", "o.h5"],
        "unknown setting",
        id="generate-unknown-setting",
    ),
    pytest.param(["data", "generate", *GS[4:], "--out", "o.h5"], "--env or --setting", id="generate-no-env"),
    pytest.param(
        ["data", "generate", *GS, "--quality", "great", "--out", "o.h5"],
        "invalid choice",
        id="generate-unknown-quality",
    ),
    pytest.param(
        ["data", "generate", *GS, "--episodes", "0", "--out", "o.h5"],
        "--episodes",
        id="generate-zero-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS, "--episodes", "-3", "--out", "o.h5"],
        "--episodes",
        id="generate-negative-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS, "--episodes", "two", "--out", "o.h5"],
        "invalid int",
        id="generate-episodes-not-int",
    ),
    pytest.param(
        ["data", "generate", *GS, "--n-agents", "-5", "--out", "o.h5"], "n_agents", id="generate-negative-n"
    ),
    pytest.param(
        ["data", "generate", *GS, "--n-agents", "0", "--out", "o.h5"], "n_agents", id="generate-zero-n"
    ),
    pytest.param(
        ["data", "generate", *GS, "--workers", "0", "--out", "o.h5"], "--workers", id="generate-zero-workers"
    ),
    pytest.param(
        ["data", "generate", *GS, "--ref-episodes", "0", "--out", "o.h5"],
        "--ref-episodes",
        id="generate-zero-ref-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS, "--store-agents", "0", "--out", "o.h5"],
        "--store-agents",
        id="generate-zero-store-agents",
    ),
    pytest.param(
        ["data", "generate", *GS, "--store-agents", "500", "--out", "o.h5"],
        "exceeds",
        id="generate-store-more-than-n",
    ),
    pytest.param(
        ["data", "generate", *GS, "--seed", "-1", "--out", "o.h5"], "--seed", id="generate-negative-seed"
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "foo", "--out", "o.h5"],
        "KEY=VALUE",
        id="generate-env-arg-no-equals",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "=3", "--out", "o.h5"],
        "KEY=VALUE",
        id="generate-env-arg-no-key",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "foo=3", "--out", "o.h5"],
        "unknown argument",
        id="generate-env-arg-unknown",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "mu_frac=[1, 2]", "--out", "o.h5"],
        "scalar",
        id="generate-env-arg-list",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "n_actions=0", "--out", "o.h5"],
        "n_actions",
        id="generate-env-arg-out-of-range",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "mu_frac=1", "--env-arg", "mu_frac=2", "--out", "o.h5"],
        "twice",
        id="generate-env-arg-twice",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "n_agents=100", "--out", "o.h5"], "once", id="generate-n-twice"
    ),
    pytest.param(
        ["data", "generate", *GS[2:], "--env", "ising", "--n-agents", "99", "--out", "o.h5"],
        "perfect square",
        id="generate-ising-not-square",
    ),
    pytest.param(
        ["data", "generate", *GS[4:], "--setting", "ising-10x10", "--env", "crowd", "--out", "o.h5"],
        "is for env 'ising'",
        id="generate-setting-of-other-env",
    ),
    pytest.param(["data", "generate", *GS, "--out", "{gs}"], "exists", id="generate-existing-output"),
    pytest.param(["data", "generate", *GS, "--out", "{dir}"], "exists", id="generate-output-is-directory"),
    pytest.param(
        ["data", "generate", *GS, "--out", "{text}/o.h5"],
        "Not a directory",
        id="generate-output-under-a-file",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "mu_frac=abc", "--out", "o.h5"],
        "mu_frac",
        id="generate-env-arg-not-a-number",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "n_actions=abc", "--out", "o.h5"],
        "n_actions",
        id="generate-env-arg-not-an-int",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "horizon=true", "--out", "o.h5"],
        "horizon",
        id="generate-env-arg-bool-as-int",
    ),
    pytest.param(
        ["data", "generate", *GS[:6], "--episodes", "1", *GS[8:], "--quality", "mixed", "--out", "o.h5"],
        "mixed",
        id="generate-mixed-one-episode",
    ),
    # data info
    pytest.param(["data", "info", "{root}/missing.h5"], "no such", id="info-missing-file"),
    pytest.param(["data", "info", "{dir}"], "directory", id="info-directory"),
    pytest.param(["data", "info", "{text}"], "HDF5", id="info-not-hdf5"),
    pytest.param(["data", "info", "{fifo}"], "not a regular file", id="info-pipe"),
    pytest.param(["data", "info", "/dev/zero"], "not a regular file", id="info-endless-device"),
    pytest.param(
        [*TRAIN, "--out", "r", "--dataset", "{fifo}"], "not a regular file", id="train-dataset-is-a-pipe"
    ),
    pytest.param(["data", "info", "{gs}", "--bogus"], "unrecognized", id="info-unknown-option"),
    # train
    pytest.param(["train"], "--algo", id="train-no-algo"),
    pytest.param([*TRAIN, "--out", "r", "--algo", "nope"], "unknown algorithm", id="train-unknown-algo"),
    pytest.param(
        ["train", "--algo", "nope", "--list-options"], "unknown algorithm", id="train-list-unknown-algo"
    ),
    pytest.param(["train", "--algo", "bc", "--dataset", "{gs}"], "--out", id="train-no-out"),
    pytest.param(
        [*TRAIN, "--out", "r", "--dataset", "{root}/missing.h5"], "no such", id="train-missing-dataset"
    ),
    pytest.param([*TRAIN, "--out", "r", "--dataset", "{dir}"], "directory", id="train-dataset-is-directory"),
    pytest.param([*TRAIN, "--out", "r", "--dataset", "{text}"], "HDF5", id="train-dataset-not-hdf5"),
    pytest.param([*TRAIN, "--out", "r", "--steps", "0"], "steps", id="train-zero-steps"),
    pytest.param([*TRAIN, "--out", "r", "--steps", "-3"], "steps", id="train-negative-steps"),
    pytest.param([*TRAIN, "--out", "r", "--batch-size", "0"], "batch_size", id="train-zero-batch"),
    pytest.param([*TRAIN, "--out", "r", "--lr", "-1"], "lr", id="train-negative-lr"),
    pytest.param([*TRAIN, "--out", "r", "--set", "foo=1"], "unknown option", id="train-unknown-option"),
    pytest.param([*TRAIN, "--out", "r", "--set", "hidden"], "KEY=VALUE", id="train-set-no-equals"),
    pytest.param([*TRAIN, "--out", "r", "--set", "=3"], "KEY=VALUE", id="train-set-no-key"),
    pytest.param([*TRAIN, "--out", "r", "--set", "hidden=-4"], "hidden", id="train-option-out-of-range"),
    pytest.param([*TRAIN, "--out", "r", "--set", "m_range=[64, 8]"], "m_range", id="train-m-range-reversed"),
    pytest.param([*TRAIN, "--out", "r", "--set", "horizon=0"], "horizon", id="train-zero-horizon"),
    pytest.param([*TRAIN, "--out", "{ising_run}"], "different run", id="train-into-other-run"),
    pytest.param([*TRAIN, "--out", "{text}"], "exists", id="train-out-is-a-file"),
    pytest.param([*TRAIN, "--out", "{text}/run"], "Not a directory", id="train-out-under-a-file"),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "hidden=abc"],
        "hidden",
        id="train-option-not-a-number",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "hidden=2.5"],
        "hidden",
        id="train-option-float-for-int",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "hidden=true"],
        "hidden",
        id="train-option-bool-for-int",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "m_range=5"],
        "m_range",
        id="train-m-range-scalar",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "hidden=[1"],
        "hidden",
        id="train-set-bad-yaml",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--lr", "nan"],
        "lr",
        id="train-nan-lr",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--seed", "-1"],
        "seed",
        id="train-negative-seed",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--device", "tpu"],
        "device",
        id="train-unknown-device",
    ),
    # evaluate
    pytest.param(["evaluate", *EVAL], "--run --behaviour", id="evaluate-no-source"),
    pytest.param(
        ["evaluate", "--run", "{run}", "--behaviour", "expert", *EVAL],
        "not allowed",
        id="evaluate-run-and-behaviour",
    ),
    pytest.param(
        ["evaluate", "--run", "{root}/missing", *EVAL], "not a run directory", id="evaluate-missing-run"
    ),
    pytest.param(["evaluate", "--run", "{dir}", *EVAL], "not a run directory", id="evaluate-empty-dir"),
    pytest.param(["evaluate", "--run", "{text}", *EVAL], "not a run directory", id="evaluate-run-is-a-file"),
    pytest.param(["evaluate", "--run", "{gs}", *EVAL], "not a run directory", id="evaluate-run-is-a-dataset"),
    pytest.param(["evaluate", "--run", "{nockpt}", *EVAL], "no checkpoint", id="evaluate-no-checkpoint"),
    pytest.param(["evaluate", "--run", "{badjson}", *EVAL], "corrupted", id="evaluate-corrupted-run-json"),
    pytest.param(
        ["evaluate", "--run", "{listjson}", *EVAL], "corrupted run.json .*list", id="evaluate-run-json-a-list"
    ),
    pytest.param(
        ["evaluate", "--run", "{emptyjson}", *EVAL], "run.json .*'algo'", id="evaluate-run-json-empty"
    ),
    pytest.param(
        ["evaluate", "--run", "{noconfig}", *EVAL], "run.json .*'config'", id="evaluate-run-no-config"
    ),
    pytest.param(
        [*TRAIN, "--out", "{noconfig}"], "corrupted run.json .*'config'", id="train-into-run-without-config"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--episodes", "0"], "--episodes", id="evaluate-zero-episodes"
    ),
    pytest.param(["evaluate", "--run", "{run}", *EVAL, "--seeds", "0"], "--seeds", id="evaluate-zero-seeds"),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--ref-episodes", "0"],
        "--ref-episodes",
        id="evaluate-zero-ref-episodes",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents", "-5"], "--n-agents", id="evaluate-negative-n"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents", "0", "100"], "--n-agents", id="evaluate-zero-n"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents", "x"], "invalid int", id="evaluate-n-not-int"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--env", "ising"],
        "--behaviour",
        id="evaluate-run-at-other-benchmark",
    ),
    pytest.param(
        ["evaluate", "--run", "{ising_run}", *EVAL, "--n-agents", "100", "99"],
        "perfect square",
        id="evaluate-ising-run-not-square",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "foo=1"],
        "unknown policy option",
        id="evaluate-unknown-policy-option",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "temperature=-1"],
        "temperature",
        id="evaluate-policy-option-out-of-range",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "bad"],
        "KEY=VALUE",
        id="evaluate-policy-option-no-equals",
    ),
    pytest.param(["evaluate", "--behaviour", "expert", *EVAL], "--env", id="evaluate-behaviour-no-env"),
    pytest.param(
        ["evaluate", "--behaviour", "great", "--env", "gs-100", *EVAL],
        "great",
        id="evaluate-unknown-behaviour",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "nope", *EVAL],
        "unknown env",
        id="evaluate-unknown-env",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "ising", "--n-agents", "50", *EVAL],
        "perfect square",
        id="evaluate-behaviour-ising-not-square",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", "--env-arg", "foo=1", *EVAL],
        "unknown argument",
        id="evaluate-env-arg-unknown",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", *EVAL, "--out", "{dir}"],
        "Is a directory",
        id="evaluate-out-is-directory",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", *EVAL, "--out", "{text}/r.json"],
        "notes.txt",
        id="evaluate-out-under-a-file",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--out", "{gs}"],
        "not a JSON results file",
        id="evaluate-out-is-the-dataset",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--out", "{run}/checkpoint.pt"],
        "not a JSON results file",
        id="evaluate-out-is-the-checkpoint",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--out", "{fifo}"],
        "not a regular file",
        id="evaluate-out-is-a-pipe",
    ),
    pytest.param(
        ["evaluate", "--run", "{mismatch}", *EVAL],
        "checkpoint",
        id="evaluate-checkpoint-mismatch",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "temperature=abc"],
        "temperature",
        id="evaluate-policy-option-not-a-number",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "temperature=["],
        "temperature",
        id="evaluate-policy-option-bad-yaml",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", "--env-arg", "mu_frac=abc", *EVAL],
        "mu_frac",
        id="evaluate-env-arg-not-a-number",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--device", "tpu"],
        "device",
        id="evaluate-unknown-device",
    ),
    # sweep
    pytest.param(["sweep"], "spec", id="sweep-no-spec"),
    pytest.param(["sweep", "{root}/missing.yaml", "--dry-run"], "not found", id="sweep-missing-spec"),
    pytest.param(["sweep", "{dir}", "--dry-run"], "adir is a directory", id="sweep-spec-is-a-directory"),
    pytest.param(["sweep", "{text}", "--dry-run"], "mapping", id="sweep-spec-not-a-mapping"),
    pytest.param(["sweep", "{grid_bad_yaml}", "--dry-run"], "not valid YAML", id="sweep-bad-yaml"),
    pytest.param(["sweep", "{grid_list}", "--dry-run"], "mapping", id="sweep-spec-is-a-list"),
    pytest.param(["sweep", "{grid_trainer_list}", "--dry-run"], "got a list", id="sweep-trainer-a-list"),
    pytest.param(["sweep", "{grid_options_list}", "--dry-run"], "got a list", id="sweep-options-a-list"),
    pytest.param(
        ["sweep", "{grid_benchmark_options_list}", "--dry-run"],
        "got a list",
        id="sweep-benchmark-options-a-list",
    ),
    pytest.param(
        ["sweep", "{grid_deep}", "--dry-run"], "nested too deeply", id="sweep-yaml-nested-too-deeply"
    ),
    pytest.param(["sweep", "{grid_ok}", "--dry-run", "--num-cpus", "0"], "--num-cpus", id="sweep-zero-cpus"),
    pytest.param(
        ["sweep", "{grid_ok}", "--estimate", "{dir}"], "--dry-run", id="sweep-estimate-without-dry-run"
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--dry-run", "--estimate", "{dir}"],
        "no results store",
        id="sweep-estimate-not-a-store",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--dry-run", "--estimate", "{text}"],
        "not a directory",
        id="sweep-estimate-a-file",
    ),
    pytest.param(["sweep", "{grid_unknown_env}", "--dry-run"], "unknown env", id="sweep-unknown-env"),
    pytest.param(["sweep", "{grid_unknown_algo}", "--dry-run"], "unknown algorithm", id="sweep-unknown-algo"),
    pytest.param(
        ["sweep", "{grid_unknown_quality}", "--dry-run"], "unknown quality", id="sweep-unknown-quality"
    ),
    pytest.param(
        ["sweep", "{grid_other_benchmark_setting}", "--dry-run"],
        "ising",
        id="sweep-setting-of-other-benchmark",
    ),
    pytest.param(["sweep", "{grid_zero_seeds}", "--dry-run"], "seeds", id="sweep-no-seeds"),
    pytest.param(
        ["sweep", "{gs}", "--dry-run"],
        "gs.h5",
        id="sweep-spec-is-binary",
    ),
    pytest.param(
        ["sweep", "{grid_ising_not_square}", "--dry-run"],
        "perfect square",
        id="sweep-ising-not-square",
    ),
    pytest.param(
        ["sweep", "{grid_data_episodes_zero}", "--dry-run"],
        "episodes",
        id="sweep-zero-data-episodes",
    ),
    pytest.param(
        ["sweep", "{grid_eval_episodes_negative}", "--dry-run"], "episodes", id="sweep-negative-eval-episodes"
    ),
    pytest.param(
        ["sweep", "{grid_trainer_steps_zero}", "--dry-run"],
        "steps",
        id="sweep-zero-trainer-steps",
    ),
    pytest.param(
        ["sweep", "{grid_unknown_option}", "--dry-run"],
        "foo",
        id="sweep-unknown-option",
    ),
    pytest.param(
        ["sweep", "{grid_option_wrong_type}", "--dry-run"],
        "hidden",
        id="sweep-option-wrong-type",
    ),
    # report
    pytest.param(["report"], "results", id="report-no-results"),
    pytest.param(["report", "{root}/missing", "--out", "rep"], "no cell records", id="report-missing-dir"),
    pytest.param(["report", "{dir}", "--out", "rep"], "no cell records", id="report-empty-dir"),
    pytest.param(["report", "{text}", "--out", "rep"], "no cell records", id="report-results-is-a-file"),
    # bench
    pytest.param(["bench", "--dir", "{root}/missing"], "not found", id="bench-missing-dir"),
    pytest.param(["bench", "--dir", "{text}"], "not found", id="bench-dir-is-a-file"),
    pytest.param(["bench", "--bogus"], "unrecognized", id="bench-unknown-option"),
    # ---- more of each command: bad types, negatives, huge numbers, wrong kinds of files ----
    pytest.param(["envs", "--settings-only=yes"], "ignored explicit argument", id="envs-flag-with-value"),
    pytest.param(["--bogus"], "unrecognized|required", id="top-level-unknown-option"),
    pytest.param(
        ["data", "generate", *GS, "--n-agents", "1000000000000", "--out", "o.h5"],
        "needs about .* TiB of memory.*--force",
        id="generate-huge-n",
    ),
    pytest.param(
        ["data", "generate", *GS[:6], "--episodes", "1000000000000", *GS[8:], "--out", "o.h5"],
        "needs about .* TiB of memory.*--force",
        id="generate-huge-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS[:6], "--episodes", str(10**30), *GS[8:], "--out", "o.h5"],
        "needs about .* of memory",
        id="generate-episodes-beyond-int64",
    ),
    pytest.param(
        ["data", "generate", *GS, "--ref-episodes", "1000000000000", "--out", "o.h5"],
        "needs about .* of memory",
        id="generate-huge-ref-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS, "--n-agents", "abc", "--out", "o.h5"],
        "invalid int",
        id="generate-n-not-int",
    ),
    pytest.param(
        ["data", "generate", *GS, "--n-agents", "1.5", "--out", "o.h5"], "invalid int", id="generate-n-float"
    ),
    pytest.param(
        ["data", "generate", *GS, "--workers", "-1", "--out", "o.h5"],
        "--workers",
        id="generate-negative-workers",
    ),
    pytest.param(
        ["data", "generate", *GS, "--workers", "x", "--out", "o.h5"],
        "invalid int",
        id="generate-workers-not-int",
    ),
    pytest.param(
        ["data", "generate", *GS, "--threads", "0", "--out", "o.h5"], "--threads", id="generate-zero-threads"
    ),
    pytest.param(
        ["data", "generate", *GS, "--threads", "x", "--out", "o.h5"],
        "invalid int",
        id="generate-threads-not-int",
    ),
    pytest.param(
        ["data", "generate", *GS, "--store-agents", "-1", "--out", "o.h5"],
        "--store-agents",
        id="generate-negative-k",
    ),
    pytest.param(
        ["data", "generate", *GS, "--ref-episodes", "-1", "--out", "o.h5"],
        "--ref-episodes",
        id="generate-negative-ref-episodes",
    ),
    pytest.param(
        ["data", "generate", *GS, "--seed", "abc", "--out", "o.h5"], "invalid int", id="generate-seed-not-int"
    ),
    pytest.param(
        ["data", "generate", *GS, "--compression", "zstd", "--out", "o.h5"],
        "invalid choice",
        id="generate-bad-compression",
    ),
    pytest.param(
        ["data", "generate", *GS, "--episodes", "1e3", "--out", "o.h5"],
        "invalid int",
        id="generate-episodes-1e3",
    ),
    pytest.param(["data", "generate", *GS, "--out", ""], "directory", id="generate-empty-out"),
    pytest.param(["data", "generate", *GS], "--out", id="generate-no-out"),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "horizon=-1", "--out", "o.h5"],
        "horizon",
        id="generate-negative-horizon",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "horizon=1000000000000", "--out", "o.h5"],
        "needs about .* [TP]iB of memory",
        id="generate-huge-horizon",
    ),
    pytest.param(
        ["data", "generate", *GS, "--env-arg", "n_actions=1000000000000", "--out", "o.h5"],
        "out of memory|needs about .* of memory",
        id="generate-huge-n-actions",
    ),
    pytest.param(
        [
            "data",
            "generate",
            *GS[4:],
            "--setting",
            "ising-10x10",
            "--n-agents",
            "1000000000000",
            "--out",
            "o.h5",
        ],
        "needs about .* TiB",
        id="generate-setting-huge-n",
    ),
    pytest.param(["data", "info"], "path", id="info-no-path"),
    pytest.param(["data", "info", "{gs}", "{gs}"], "unrecognized", id="info-two-paths"),
    pytest.param(["data", "info", "{grid_ok}"], "HDF5", id="info-yaml-file"),
    pytest.param(
        ["data", "info", "{run}/checkpoint.pt"], "checkpoint, not a dataset", id="info-checkpoint-file"
    ),
    pytest.param(["data", "info", ""], "", id="info-empty-path"),
    pytest.param([*TRAIN, "--out", "r", "--batch-size", "-1"], "batch_size", id="train-negative-batch"),
    pytest.param([*TRAIN, "--out", "r", "--batch-size", "x"], "invalid int", id="train-batch-not-int"),
    pytest.param([*TRAIN, "--out", "r", "--lr", "abc"], "invalid float", id="train-lr-not-a-number"),
    pytest.param([*TRAIN, "--out", "r", "--lr", "inf"], "lr", id="train-infinite-lr"),
    pytest.param([*TRAIN, "--out", "r", "--lr", "0"], "lr", id="train-zero-lr"),
    pytest.param(
        [*TRAIN, "--out", "r", "--checkpoint-every", "0"],
        "checkpoint_every",
        id="train-zero-checkpoint-every",
    ),
    pytest.param(
        [*TRAIN, "--out", "r", "--checkpoint-every", "-5"],
        "checkpoint_every",
        id="train-negative-checkpoint-every",
    ),
    pytest.param([*TRAIN, "--out", "r", "--threads", "0"], "--threads", id="train-zero-threads"),
    pytest.param([*TRAIN, "--out", "r", "--threads", "-1"], "--threads", id="train-negative-threads"),
    pytest.param([*TRAIN, "--out", "r", "--threads", "many"], "invalid int", id="train-threads-not-int"),
    pytest.param([*TRAIN, "--out", "r", "--steps", "x"], "invalid int", id="train-steps-not-int"),
    pytest.param([*TRAIN, "--out", "r", "--seed", "1.5"], "invalid int", id="train-seed-float"),
    pytest.param(
        [*TRAIN, "--out", "r", "--set", "hidden=1", "--set", "hidden=2"], "twice", id="train-set-twice"
    ),
    pytest.param([*TRAIN, "--out", "r", "--set", "hidden=[1, 2]"], "hidden", id="train-option-list-for-int"),
    pytest.param([*TRAIN, "--out", "r", "--dataset", ""], "", id="train-empty-dataset"),
    pytest.param([*TRAIN, "--out", "r", "--dataset", "{grid_ok}"], "HDF5", id="train-dataset-is-yaml"),
    pytest.param([*TRAIN, "--out", "r", "--device", "cuda:abc"], "device", id="train-malformed-device"),
    pytest.param([*TRAIN, "--out", "{gs}"], "exists", id="train-out-is-the-dataset"),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--episodes", "-1"],
        "--episodes",
        id="evaluate-negative-episodes",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--seeds", "-1"], "--seeds", id="evaluate-negative-seeds"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--seeds", "x"], "invalid int", id="evaluate-seeds-not-int"
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--threads", "0"], "--threads", id="evaluate-zero-threads"
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", *EVAL, "--n-agents", "1000000000000"],
        "needs about .* TiB of memory",
        id="evaluate-huge-n",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--episodes", "1000000000000"],
        "needs about .* of memory",
        id="evaluate-huge-episodes",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--ref-episodes", "1000000000000"],
        "needs about .* of memory",
        id="evaluate-huge-ref-episodes",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents", "64", "--ref-episodes", "1000000000000"],
        "needs about .* of memory",
        id="evaluate-run-huge-ref-episodes",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents", "100", "1000000000000"],
        "needs about .* TiB of memory",
        id="evaluate-run-huge-n",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--policy-opt", "=1"],
        "KEY=VALUE",
        id="evaluate-policy-option-no-key",
    ),
    pytest.param(
        [
            "evaluate",
            "--run",
            "{run}",
            *EVAL,
            "--policy-opt",
            "temperature=1",
            "--policy-opt",
            "temperature=2",
        ],
        "twice",
        id="evaluate-policy-option-twice",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "gs-100", "--env-arg", "n_agents=abc", *EVAL],
        "n_agents",
        id="evaluate-env-arg-n-not-int",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "expert", "--env", "crowd", "--env-arg", "size=0", *EVAL],
        "size",
        id="evaluate-env-arg-out-of-range",
    ),
    pytest.param(
        ["evaluate", "--run", "{run}", *EVAL, "--n-agents"], "expected at least one", id="evaluate-n-empty"
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--dry-run", "--num-cpus", "-1"], "--num-cpus", id="sweep-negative-cpus"
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--dry-run", "--num-cpus", "x"], "invalid int", id="sweep-cpus-not-int"
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--connect-timeout", "0"], "--connect-timeout", id="sweep-zero-timeout"
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--connect-timeout", "soon"], "invalid float", id="sweep-timeout-not-a-number"
    ),
    pytest.param(["sweep", "{grid_ok}", "--dry-run", "--only", "bogus"], "only", id="sweep-only-no-equals"),
    pytest.param(
        ["sweep", "{grid_ok}", "--dry-run", "--only", "color=red"], "only|color", id="sweep-only-unknown-key"
    ),
    pytest.param(["sweep", "{grid_ok}", "{grid_ok}"], "unrecognized", id="sweep-two-specs"),
    pytest.param(["sweep", "", "--dry-run"], "", id="sweep-empty-spec"),
    pytest.param(
        ["sweep", "{run}/checkpoint.pt", "--dry-run"], "checkpoint.pt", id="sweep-spec-is-a-checkpoint"
    ),
    pytest.param(["report", "--bogus"], "unrecognized|required", id="report-unknown-option"),
    pytest.param(["bench", "--dir"], "expected one argument", id="bench-dir-no-value"),
    pytest.param(["bench", "--arg"], "expected one argument", id="bench-arg-no-value"),
    pytest.param(["bench", "--list", "--dir", "{text}"], "not found", id="bench-list-dir-is-a-file"),
    pytest.param(["demo", "--bogus"], "unrecognized", id="demo-unknown-option"),
    pytest.param(["demo", "extra"], "unrecognized", id="demo-extra-argument"),
    pytest.param(
        ["demo", "--preset", "{root}/missing.yaml", "--out", "d"], "no such preset", id="demo-missing-preset"
    ),
    pytest.param(
        ["demo", "--preset", "{dir}", "--out", "d"], "no such preset", id="demo-preset-is-a-directory"
    ),
    pytest.param(["demo", "--preset", "{grid_bad_yaml}", "--out", "d"], "not valid YAML", id="demo-bad-yaml"),
    pytest.param(
        ["demo", "--preset", "{grid_unknown_env}", "--out", "d"], "unknown env", id="demo-unknown-env"
    ),
    pytest.param(["demo", "--preset", "{grid_list}", "--out", "d"], "mapping", id="demo-preset-is-a-list"),
    pytest.param(["demo", "--preset", "{gs}", "--out", "d"], "gs.h5", id="demo-preset-is-binary"),
    pytest.param(["demo", "--out"], "expected one argument", id="demo-out-no-value"),
    # options that would be silently ignored
    pytest.param(
        ["data", "generate", *GS, "--ray-address", "1.2.3.4:1", "--out", "o.h5"],
        "--ray-address goes with --ray",
        id="generate-ray-address-without-ray",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--policy-opt", "temperature=1"],
        "--policy-opt .* goes with --run",
        id="evaluate-behaviour-policy-opt",
    ),
    # Ray addresses are checked before Ray sees them (it would log its own complaints first)
    pytest.param(
        ["data", "generate", *GS, "--ray", "--ray-address", "nohost:abc", "--out", "o.h5"],
        "--ray-address 'nohost:abc' is not a Ray address",
        id="generate-ray-address-no-port",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--address", "::::", "--results", "res"],
        "--address '::::' is not a Ray address",
        id="sweep-address-garbage",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--address", "127.0.0.1:99999", "--results", "res"],
        "port in 1..65535",
        id="sweep-address-port-out-of-range",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--address", "nohost:abc", "--dry-run"],
        "not a Ray address",
        id="sweep-dry-run-address-garbage",
    ),
    pytest.param(
        ["demo", "--preset", "{grid_ok}", "--address", "nohost:abc", "--out", "d"],
        "not a Ray address",
        id="demo-address-garbage",
    ),
    # directories that can never be directories, checked before anything starts
    pytest.param(
        ["sweep", "{grid_ok}", "--results", "res", "--data-dir", "{text}", "--num-cpus", "1"],
        "datasets directory .*notes.txt is not a directory",
        id="sweep-data-dir-is-a-file",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--results", "{text}", "--dry-run"],
        "results directory .*notes.txt is not a directory",
        id="sweep-dry-run-results-is-a-file",
    ),
    pytest.param(
        ["sweep", "{grid_ok}", "--results", "{text}/r", "--dry-run"],
        "is not a directory .*is a file",
        id="sweep-dry-run-results-under-a-file",
    ),
    # grids the dry run must refuse
    pytest.param(
        ["sweep", "{grid_seeds_beyond_64_bits}", "--dry-run"],
        "2\\*\\*64",
        id="sweep-seed-beyond-64-bits",
    ),
    pytest.param(["sweep", "{grid_seeds_bool}", "--dry-run"], "seeds", id="sweep-seed-bool"),
    pytest.param(
        ["sweep", "{grid_dup_keys}", "--dry-run"],
        "duplicate key 'seeds'",
        id="sweep-duplicate-key",
    ),
    pytest.param(
        ["sweep", "{grid_name_escapes}", "--dry-run"],
        "cannot name a file",
        id="sweep-name-escapes",
    ),
    pytest.param(
        ["sweep", "{grid_name_absolute}", "--dry-run"],
        "cannot name a file",
        id="sweep-name-absolute",
    ),
    pytest.param(
        ["sweep", "{grid_method_name_with_slash}", "--dry-run"],
        "'a/b' cannot name",
        id="sweep-method-name-slash",
    ),
    pytest.param(
        ["sweep", "{grid_data_episodes_huge}", "--dry-run"], "episodes must be at most", id="sweep-huge-data"
    ),
    # bench names
    pytest.param(["bench", "nope"], "unknown benchmark 'nope'", id="bench-unknown-name"),
    pytest.param(["bench", "../../etc/passwd"], "unknown benchmark", id="bench-name-traversal"),
    pytest.param(["bench", ""], "unknown benchmark ''", id="bench-empty-name"),
    # an --out that is a symbolic link to nothing is refused by every command
    pytest.param(
        ["data", "generate", *GS, "--out", "{dangling}"],
        "symbolic link",
        id="generate-out-dangling",
    ),
    pytest.param([*TRAIN, "--out", "{dangling}"], "symbolic link", id="train-out-dangling"),
    pytest.param(
        ["data", "generate", *GS, "--out", "{loop}"],
        "symbolic link that leads nowhere",
        id="generate-out-loop",
    ),
    pytest.param(
        ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--out", "{dangling}"],
        "symbolic link",
        id="evaluate-out-dangling",
    ),
    pytest.param(["report", "{dir}", "--out", "{dangling}"], "symbolic link", id="report-out-dangling"),
    pytest.param(["select", "{dir}", "--out", "{dangling}"], "symbolic link", id="select-out-dangling"),
    pytest.param(
        ["demo", "--preset", "{grid_ok}", "--out", "{dangling}"], "symbolic link", id="demo-out-dangling"
    ),
]


@pytest.mark.parametrize(("argv", "match"), CASES)
def test_bad_input(argv, match, inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**inputs) for a in argv]
    expect_error(argv, capsys, tmp_path, Path(inputs["root"]), match)


def test_error_names_the_full_subcommand(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = expect_error(
        ["data", "info", f"{inputs['root']}/missing.h5"], capsys, tmp_path, Path(inputs["root"])
    )
    assert line.startswith("mfd data info: error: ")


def test_output_in_a_new_directory_is_created(inputs, capsys, tmp_path, monkeypatch):
    """A missing parent directory of --out is created (as ``mkdir -p``), not an error."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "generate", *GS, "--out", "new/sub/o.h5"]) == 0
    assert (tmp_path / "new" / "sub" / "o.h5").is_file()
    assert sorted(p.name for p in (tmp_path / "new" / "sub").iterdir()) == ["o.h5"]


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A directory no file can be created in: a mode-500 one, or ``/sys`` when running as root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro
    if os.name == "posix" and os.geteuid() == 0:  # root ignores modes; sysfs refuses new files
        target = Path("/sys")
    try:
        (target / "probe.tmp").write_text("x")
    except OSError:
        yield target
    else:
        (target / "probe.tmp").unlink()
        pytest.skip("no unwritable directory on this machine")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("command", ["generate", "train", "evaluate", "report"])
def test_output_in_an_unwritable_directory(command, unwritable_dir, inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = unwritable_dir / "mfd-test-output"
    argv = {
        "generate": ["data", "generate", *GS, "--out", f"{out}.h5"],
        "train": [a.format(**inputs) for a in TRAIN] + ["--out", str(out)],
        "evaluate": ["evaluate", "--behaviour", "random", "--env", "gs-100", *EVAL, "--out", f"{out}.json"],
        "report": ["report", str(Path(inputs["root"]) / "results"), "--out", str(out)],
    }[command]
    if command == "report":  # a store with one behaviour cell
        from mfdiffuser.experiments.cell import run_cell
        from mfdiffuser.experiments.grid import parse_grid

        grid = _grid(methods={"random": {"behaviour": "random"}})
        for cell in parse_grid(grid).cells:
            run_cell(cell, None, Path(inputs["root"]) / "results")
    refused = "denied|not permitted|Read-only"
    expect_error(argv, capsys, tmp_path, Path(inputs["root"]) / "benchmarks", refused)
    assert not out.exists()


def test_generate_overwrite_onto_a_directory(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    try:
        expect_error(
            ["data", "generate", *GS, "--out", "victim", "--overwrite"],
            capsys,
            tmp_path,
            Path(inputs["root"]),
            "directory",
        )
    finally:
        assert (victim / "keep.txt").read_text() == "precious"


def test_failed_train_does_not_lock_its_run_dir(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**inputs) for a in TRAIN] + ["--out", "r"]
    code, _ = _run([*argv, "--lr", "nan"], capsys)
    assert code == 2
    code, err = _run(argv, capsys)
    assert code == 0, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only torch")
def test_train_cuda_without_cuda(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**inputs) for a in TRAIN] + ["--out", "r", "--device", "cuda"]
    expect_error(argv, capsys, tmp_path, Path(inputs["root"]), "cuda|CUDA")


def test_bench_passes_dash_options_to_scripts(inputs, capfd):
    assert main(["bench", "tiny", "--dir", inputs["bench"], "--arg", "--quick"]) == 0
    assert "['--quick']" in capfd.readouterr().out
    assert main(["bench", "--dir", inputs["bench"], "tiny", "--arg=-v", "--", "--quick", "--dir", "x"]) == 0
    assert "['-v', '--quick', '--dir', 'x']" in capfd.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_help_has_no_doubled_percent(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "%%" not in capsys.readouterr().out


# ---- the real exit path: a separate interpreter ------------------------------------------------


def _cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _assert_one_line(proc: subprocess.CompletedProcess, prefix: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    assert proc.stdout == ""


def test_process_missing_dataset(tmp_path):
    _assert_one_line(_cli("data", "info", "missing.h5", cwd=tmp_path), "mfd data info: error: missing.h5")


def test_process_output_under_a_file(inputs, tmp_path):
    proc = _cli("data", "generate", *GS, "--out", f"{inputs['text']}/o.h5", cwd=tmp_path)
    _assert_one_line(proc, "mfd data generate: error: ")
    assert "Not a directory" in proc.stderr and list(tmp_path.iterdir()) == []


def test_process_run_without_checkpoint(inputs, tmp_path):
    proc = _cli("evaluate", "--run", inputs["nockpt"], *EVAL, cwd=tmp_path)
    _assert_one_line(proc, "mfd evaluate: error: ")
    assert "no checkpoint" in proc.stderr


def test_process_debug_shows_the_traceback(tmp_path):
    proc = _cli("data", "info", "missing.h5", cwd=tmp_path, env={"MFD_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_process_bad_yaml_option(inputs, tmp_path):
    argv = [a.format(**inputs) for a in TRAIN][1:] + ["--out", "r", "--set", "hidden=[1"]
    _assert_one_line(_cli("train", *argv, cwd=tmp_path), "mfd train: error: ")
