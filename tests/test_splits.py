"""The test and validation splits share no seed: datasets, evaluation episodes, reference rollouts."""

from pathlib import Path

import pytest

from mfdiffuser import splits
from mfdiffuser.data.generate import REFERENCE_QUALITIES, episode_seeds, reference_seeds
from mfdiffuser.eval.rollout import REFERENCE_STREAM
from mfdiffuser.eval.rollout import episode_seeds as rollout_seeds
from mfdiffuser.experiments.grid import load_spec, parse_grid

ROOT = Path(__file__).resolve().parents[1]


def grid_seeds(grid):
    """Every seed a grid's cells use, by kind: integer seeds and the env seeds they expand to."""
    out = {"dataset": set(), "data_env": set(), "episode": set(), "episode_env": set()}
    for ds in grid.datasets().values():
        out["dataset"].add(ds.seed)
        for env_seed, policy_seed, subset_seed in episode_seeds(ds.seed, ds.episodes):
            out["data_env"].update((env_seed, policy_seed, subset_seed))
        for q in REFERENCE_QUALITIES:
            out["data_env"].update(s for pair in reference_seeds(ds.seed, q, ds.ref_episodes) for s in pair)
    for cell in grid.cells:
        for point in cell.eval_points:
            for seed in cell.episode_seeds_at(point.n_agents):
                out["episode"].add(seed)
                out["episode_env"].add(rollout_seeds(seed, 0)[0])
        if cell.exploitability.get("enabled", True):
            seeds = splits.episode_seeds(cell.split, int(cell.exploitability.get("episodes", 4)))
            out["episode"].update(seeds)
    return out


def reference_env_seeds(grid):
    """Env seeds of the computed references (random/expert at every N), the same for both splits."""
    most = max(c.ref_episodes for c in grid.cells)
    return {rollout_seeds(0, e, REFERENCE_STREAM)[0] for e in range(most)}


def test_validation_and_test_grids_share_no_seed():
    spec = load_spec(ROOT / "experiments" / "main.yaml")
    spec["selected"] = str(ROOT / "experiments" / spec["selected"])  # a dict's is relative to the cwd
    test = parse_grid(spec)
    validation = parse_grid({**spec, "split": "validation"})
    assert test.split == "test" and validation.split == "validation"
    t, v = grid_seeds(test), grid_seeds(validation)
    assert all(t[k] and v[k] for k in t)
    everything_t = set().union(*t.values())
    everything_v = set().union(*v.values())
    assert not everything_t & everything_v
    refs = reference_env_seeds(test)
    assert not refs & (t["episode_env"] | v["episode_env"])  # references never replay an evaluated episode
    assert {splits.split_of_data_seed(s) for s in t["dataset"]} == {"test"}
    assert {splits.split_of_episode_seed(s) for s in v["episode"]} == {"validation"}
    # the datasets' keys (file names) differ too, so the two grids can share a datasets directory
    assert not set(test.datasets()) & set(validation.datasets())
    assert {d.split for d in validation.datasets().values()} == {"validation"}


def test_seed_ranges_are_disjoint_by_construction():
    ranges = []
    for split in splits.SPLITS:
        for first in (splits.data_seed(split, 0), splits.episode_seed(split, 0)):
            ranges.append(range(first, first + splits.STREAM_SIZE))
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert a.stop <= b.start or b.stop <= a.start
    assert splits.data_seed("validation", splits.STREAM_SIZE - 1) < splits.episode_seed("test", 0)
    for bad in (-1, splits.STREAM_SIZE, 1.5, True):
        with pytest.raises(ValueError):
            splits.episode_seed("test", bad)
    with pytest.raises(ValueError, match="unknown split"):
        splits.data_seed("train")
    assert splits.episode_seeds("validation", 3) == [4_000_000, 4_000_001, 4_000_002]


def test_a_grid_names_a_known_split_and_a_seed_in_range():
    base = {"benchmarks": {"gaussian-squeeze": {"train": 100, "eval": [100], "qualities": ["medium"]}},
            "methods": {"bc": {"algo": "bc"}}}
    assert parse_grid(base).split == "validation"  # every choice is made on validation unless told
    with pytest.raises(ValueError, match="grid: unknown split 'train'"):
        parse_grid({**base, "split": "train"})
    with pytest.raises(ValueError, match="seed must be below"):
        parse_grid({**base, "data": {"seed": splits.STREAM_SIZE}})


def test_generated_dataset_names_its_split(tmp_path):
    from mfdiffuser.data import load_dataset
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset

    args = {"env": "gaussian-squeeze", "env_args": {"n_agents": 10}, "episodes": 2, "ref_episodes": 1,
            "progress": False}
    seed = splits.data_seed("validation", 3)
    generate_dataset(GenerateConfig(out=str(tmp_path / "v.h5"), seed=seed, split="validation", **args))
    assert load_dataset(tmp_path / "v.h5").meta.split == "validation"
    with pytest.raises(ValueError, match="outside the test split"):
        generate_dataset(GenerateConfig(out=str(tmp_path / "t.h5"), seed=seed, split="test", **args))
    assert not (tmp_path / "t.h5").exists()
