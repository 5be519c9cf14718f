"""One fast smoke test per ``mfd`` command, run in-process on tiny presets.

Datasets (gaussian-squeeze N=100, ising 10x10, crowd N=100) and a trained run are generated once per
module. The Ray sweep end to end is ``slow``; the default run checks its dry run, and ``mfd report``
on a results store filled by running behaviour-policy cells in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mfdiffuser.cli import COMMANDS, build_parser, main

TINY_GRID = """
name: tiny
seeds: [0]
data: {episodes: 2, ref_episodes: 2}
eval: {episodes: 2}
trainer: {steps: 10}
benchmarks:
  gs:
    env: gaussian-squeeze
    train: 100
    eval: [100, 1000]
    qualities: [medium]
methods:
  bc: {algo: bc}
  expert: {behaviour: expert}
  random: {behaviour: random}
"""


# Small networks keep every training smoke test well under a second of compute.
SMALL = {
    "bc": ["--set", "hidden=32"],
    "rwbc": ["--set", "hidden=32"],
    "mf-iql": ["--set", "hidden=32"],
    "mf-diffuser": [
        "--set",
        "hidden=32",
        "--set",
        "n_blocks=1",
        "--set",
        "value_hidden=32",
        "--set",
        "m_range=[4, 8]",
        "--set",
        "stats_batches=2",
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _available_commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def _mfd(*argv: str) -> None:
    assert main(list(argv)) == 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli_smoke")


@pytest.fixture(scope="module")
def datasets(workdir: Path) -> dict[str, Path]:
    """Tiny datasets of the three cheap benchmarks, generated through the CLI."""
    paths = {"gs": workdir / "gs.h5", "ising": workdir / "ising.h5", "crowd": workdir / "crowd.h5"}
    common = ["--workers", "1", "--quiet", "--ref-episodes", "2"]
    _mfd(
        "data",
        "generate",
        "--env",
        "gaussian-squeeze",
        "--n-agents",
        "100",
        "--quality",
        "medium",
        "--episodes",
        "4",
        "--out",
        str(paths["gs"]),
        *common,
    )
    _mfd(
        "data",
        "generate",
        "--setting",
        "ising-10x10",
        "--quality",
        "mixed",
        "--episodes",
        "2",
        "--out",
        str(paths["ising"]),
        *common,
    )
    _mfd(
        "data",
        "generate",
        "--env",
        "crowd",
        "--n-agents",
        "100",
        "--quality",
        "expert",
        "--episodes",
        "2",
        "--out",
        str(paths["crowd"]),
        *common,
    )
    return paths


@pytest.fixture(scope="module")
def bc_run(workdir: Path, datasets: dict[str, Path]) -> Path:
    """A bc run trained for a few steps on the gaussian-squeeze dataset."""
    out = workdir / "runs" / "bc"
    _mfd(
        "train",
        "--algo",
        "bc",
        "--dataset",
        str(datasets["gs"]),
        "--out",
        str(out),
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--no-progress",
        *SMALL["bc"],
    )
    return out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("mfdiffuser ")


@pytest.mark.parametrize(
    "argv",
    [[c] for c in COMMANDS if c != "data"] + [["data"], ["data", "generate"], ["data", "info"]],
    ids=lambda a: "-".join(a),
)
def test_help(argv, capsys):
    if argv[0] not in _available_commands():
        pytest.skip(f"mfd {argv[0]} is not part of this build")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mfd {' '.join(argv)}")
    assert "--help" in out


def test_envs(capsys):
    _mfd("envs")
    out = capsys.readouterr().out
    for name in ("gaussian-squeeze", "ising", "crowd", "crowd-2d", "battle", "ising-32x32", "gs-1000"):
        assert name in out
    _mfd("envs", "--settings-only")
    out = capsys.readouterr().out
    assert "crowd-1000" in out and "parameters" not in out


def test_envs_names_the_extra_of_a_missing_engine(monkeypatch, capsys):
    import mfdiffuser.envs as envs
    from mfdiffuser.errors import MissingExtraError

    real = envs.env_parameters

    def without_magent2(name: str) -> dict:
        if name == "battle":
            raise MissingExtraError("magent2", "battle")
        return real(name)

    monkeypatch.setattr(envs, "env_parameters", without_magent2)
    _mfd("envs")
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # undo the table's wrapping
    assert "unavailable: the optional dependency 'magent2' is not installed" in out
    assert "mfdiffuser[battle]" in out


def test_data_generate(datasets, capsys):
    from mfdiffuser.data.dataset import load_dataset

    expected = {"gs": ("gaussian-squeeze", 100, 4), "ising": ("ising", 100, 2), "crowd": ("crowd", 100, 2)}
    for key, (env, n, episodes) in expected.items():
        ds = load_dataset(datasets[key])
        assert (ds.meta.env, ds.meta.n_agents, ds.meta.n_episodes) == (env, n, episodes)
        ds.close()
    # no work files are left beside the outputs
    assert sorted(p.name for p in datasets["gs"].parent.iterdir() if p.suffix != ".h5") == []


def test_data_info(datasets, capsys):
    _mfd("data", "info", str(datasets["ising"]))
    out = capsys.readouterr().out
    assert "ising" in out and "mixed" in out and "verified" in out
    assert "expert" in out and "random" in out  # returns of both halves of a mixed dataset
    _mfd("data", "info", str(datasets["gs"]), "--no-verify")
    assert "not verified" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ["bc", "rwbc", "mf-iql", "mf-diffuser"])
def test_train(algo, workdir, datasets, capsys):
    out = workdir / "runs" / f"train-{algo}"
    _mfd(
        "train",
        "--algo",
        algo,
        "--dataset",
        str(datasets["gs"]),
        "--out",
        str(out),
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--no-progress",
        *SMALL[algo],
    )
    assert f"trained {algo} for 20 steps" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done" and record["step"] == 20
    assert (out / "checkpoint.pt").is_file()


def test_train_list_options(capsys):
    _mfd("train", "--algo", "bc", "--list-options")
    out = capsys.readouterr().out
    assert "horizon = " in out and "m_range = " in out


def test_train_resume_is_a_no_op_when_done(bc_run, datasets, capsys):
    _mfd(
        "train",
        "--algo",
        "bc",
        "--dataset",
        str(datasets["gs"]),
        "--out",
        str(bc_run),
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--no-progress",
        *SMALL["bc"],
    )
    assert "for 20 steps" in capsys.readouterr().out


def test_evaluate_run(bc_run, workdir, capsys):
    out = workdir / "eval_bc.json"
    _mfd(
        "evaluate",
        "--run",
        str(bc_run),
        "--n-agents",
        "100",
        "1000",
        "--episodes",
        "2",
        "--seeds",
        "2",
        "--ref-episodes",
        "2",
        "--no-progress",
        "--out",
        str(out),
    )
    printed = capsys.readouterr().out
    assert "1,000" in printed and "validation split" in printed  # says which split it used
    result = json.loads(out.read_text())
    assert result["env"] == "gaussian-squeeze" and result["source"]["algo"] == "bc"
    assert result["split"] == "validation" and result["seeds"] == [4_000_000, 4_000_001]
    for n in ("100", "1000"):
        r = result["results"][n]
        assert r["status"] == "done" and r["n_agents"] == int(n)
        assert len(r["return"]["values"]) == 2  # one value per seed
        assert r["refs"]["expert"] > r["refs"]["random"]


def test_evaluate_behaviour_with_exploitability(workdir, capsys):
    out = workdir / "eval_crowd.json"
    _mfd(
        "evaluate",
        "--behaviour",
        "random",
        "--env",
        "crowd-100",
        "--episodes",
        "2",
        "--seeds",
        "2",
        "--ref-episodes",
        "2",
        "--exploitability",
        "--split",
        "test",
        "--no-progress",
        "--out",
        str(out),
    )
    printed = capsys.readouterr().out
    assert "exploitability (exact)" in printed and "test split" in printed
    result = json.loads(out.read_text())
    assert result["source"] == {"behaviour": "random"}
    assert result["split"] == "test" and result["seeds"] == [3_000_000, 3_000_001]
    assert result["exploitability"]["exploitability"] > 0.1  # uniform play is far from equilibrium


def test_evaluate_ising_run(workdir, datasets, capsys):
    run = workdir / "runs" / "ising-bc"
    _mfd(
        "train",
        "--algo",
        "bc",
        "--dataset",
        str(datasets["ising"]),
        "--out",
        str(run),
        "--steps",
        "10",
        "--batch-size",
        "8",
        "--no-progress",
        *SMALL["bc"],
    )
    _mfd(
        "evaluate",
        "--run",
        str(run),
        "--n-agents",
        "100",
        "144",
        "--episodes",
        "1",
        "--seeds",
        "2",
        "--ref-episodes",
        "1",
        "--no-progress",
    )
    out = capsys.readouterr().out
    assert "|m|" in out and "144" in out


def test_sweep_dry_run(workdir, capsys):
    spec = workdir / "tiny.yaml"
    spec.write_text(TINY_GRID)
    _mfd("sweep", str(spec), "--results", str(workdir / "results"), "--dry-run")
    out = capsys.readouterr().out
    assert "todo     gs__medium__bc__s0" in out
    assert "3 cells, 1 datasets" in out
    assert not (workdir / "results").exists()  # a dry run writes nothing


def test_report(workdir, capsys):
    """A results store of behaviour-policy cells, run in-process, turned into tables and plots."""
    from mfdiffuser.experiments.cell import run_cell
    from mfdiffuser.experiments.grid import parse_grid

    spec = workdir / "behaviour.yaml"
    spec.write_text(TINY_GRID.replace("  bc: {algo: bc}\n", ""))
    results = workdir / "behaviour_results"
    for cell in parse_grid(spec).cells:
        assert run_cell(cell, None, results)["status"] == "done"
    out = workdir / "report"
    _mfd("report", str(results), "--out", str(out))
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "| N | expert | random |" in md and "| 1,000 |" in md
    assert (out / "tables.tex").is_file()
    assert any(p.suffix == ".png" for p in out.iterdir())


def test_bench(workdir, capsys):
    bench = workdir / "benchmarks"
    bench.mkdir()
    (bench / "bench_tiny.py").write_text(
        textwrap.dedent("""
        import sys
        print("tiny figure 42", sys.argv[1:])
    """)
    )
    _mfd("bench", "--dir", str(bench), "--list")
    listed = capsys.readouterr().out.split()
    assert "tiny" in listed and "envs" in listed
    # the script runs as its own process: its output goes to the real stdout, the summary here
    assert main(["bench", "tiny", "--dir", str(bench), "--arg=--quick"]) == 0
    assert "tiny         ok" in capsys.readouterr().out
    assert main(["bench", "envs", "--dir", str(bench)]) == 1  # a shipped benchmark's missing script
    assert main(["bench", "nope", "--dir", str(bench)]) == 2  # a name no benchmark has


def test_demo_when_available(workdir, capsys):
    if "demo" not in _available_commands():
        pytest.skip("mfd demo is not part of this build yet")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0


def test_console_script_entry_point(tmp_path):
    """The real process: ``python -m mfdiffuser.cli`` exits 0 and prints the table."""
    proc = subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", "envs", "--settings-only"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ising-32x32" in proc.stdout and proc.stderr == ""


@pytest.mark.slow
def test_sweep_and_report_end_to_end(tmp_path):
    """``mfd sweep`` on a local Ray, rerun skips finished cells, then ``mfd report`` (about 40 s)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_GRID)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "mfdiffuser.cli"]
    sweep = [*cmd, "sweep", str(spec), "--results", str(results), "--num-cpus", "2", "--no-progress"]
    proc = subprocess.run(sweep, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 done" in proc.stdout
    assert proc.stderr == "", "Ray's log lines stay in its session logs"
    again = subprocess.run(sweep, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "3 already finished" in again.stdout
    rep = subprocess.run(
        [*cmd, "report", str(results), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "bc" in md and "expert" in md


def test_evaluate_one_seed_writes_strict_json(workdir):
    out = workdir / "eval_one_seed.json"
    _mfd(
        "evaluate",
        "--behaviour",
        "random",
        "--env",
        "gs-100",
        "--episodes",
        "1",
        "--seeds",
        "1",
        "--ref-episodes",
        "1",
        "--no-progress",
        "--out",
        str(out),
    )

    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    json.loads(out.read_text(), parse_constant=reject)


def test_data_info_prints_the_path_verbatim(datasets, workdir, capsys):
    odd = workdir / "gs[v2].h5"
    odd.write_bytes(datasets["gs"].read_bytes())
    _mfd("data", "info", str(odd), "--no-verify")
    assert "gs[v2].h5" in "".join(capsys.readouterr().out.split())  # the title may wrap


def test_reference_rollouts_are_not_the_evaluated_episodes(workdir):
    out = workdir / "eval_expert.json"
    _mfd(
        "evaluate",
        "--behaviour",
        "expert",
        "--env",
        "gs-100",
        "--episodes",
        "2",
        "--seeds",
        "1",
        "--ref-episodes",
        "2",
        "--no-progress",
        "--out",
        str(out),
    )
    score = json.loads(out.read_text())["results"]["100"]["score"]["values"][0]
    assert score != pytest.approx(100.0, abs=1e-9)
