from mfdiffuser.commands.demo import preset_path
from mfdiffuser.experiments.grid import parse_grid


def test_packaged_demo_preset_parses_and_covers_the_pipeline():
    grid = parse_grid(preset_path("demo"))
    methods = {c.method for c in grid.cells}
    assert "mf-diffuser" in methods and len(methods - {"mf-diffuser"}) >= 2  # two baselines
    ns = {p.n_agents for c in grid.cells for p in c.eval_points}
    assert {100, 10000} <= ns
    assert all(c.dataset is not None for c in grid.cells)


def test_demo_rejects_a_missing_preset(tmp_path, capsys):
    from mfdiffuser.cli import main

    assert main(["demo", "--preset", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
