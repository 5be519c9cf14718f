import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mfdiffuser.commands.data import parse_env_args
from mfdiffuser.data import GenerateConfig, generate_dataset, load_dataset
from mfdiffuser.data.dataset import ALL_ARRAYS
from mfdiffuser.data.generate import episode_seeds, work_dir
from mfdiffuser.errors import MfdError

# small instances of every env, each guarded by the presence of its module (and engine)
ENV_CASES = {
    "gaussian-squeeze": ({"n_agents": 50, "horizon": 3}, "mfdiffuser.envs.gaussian_squeeze", None),
    "ising": ({"n_agents": 16, "horizon": 5}, "mfdiffuser.envs.ising", None),
    "crowd": ({"n_agents": 30, "horizon": 5}, "mfdiffuser.envs.crowd", None),
    "crowd-2d": ({"n_agents": 30, "horizon": 5}, "mfdiffuser.envs.crowd", None),
    "battle": ({"n_agents": 16, "map_size": 30, "horizon": 30}, "mfdiffuser.envs.battle", "magent2"),
}


def _available(module, engine):
    return importlib.util.find_spec(module) is not None and (
        engine is None or importlib.util.find_spec(engine) is not None
    )


def gen(tmp_path, name="d.h5", **kw):
    base = dict(env="gaussian-squeeze", env_args={"n_agents": 40, "horizon": 3}, quality="mixed", episodes=6,
                seed=0, ref_episodes=2, workers=1, progress=False)
    base.update(kw)
    return generate_dataset(GenerateConfig(out=str(tmp_path / name), **base))


def arrays(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ALL_ARRAYS}, json.loads(f.attrs["meta"])


def assert_same_file(a, b):
    xa, ma = arrays(a)
    xb, mb = arrays(b)
    assert ma == mb
    for name in ALL_ARRAYS:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


def test_seeds_from_seed_sequence_spawn():
    seeds = episode_seeds(7, 4)
    child = np.random.SeedSequence(7).spawn(2)[0].spawn(4)[2]
    expected = tuple(int(s.generate_state(1, np.uint64)[0]) for s in child.spawn(3))
    assert seeds[2] == expected
    assert len({s[0] for s in seeds}) == 4 and episode_seeds(7, 2) == seeds[:2]


def test_same_seed_same_bits_any_worker_count(tmp_path):
    a = gen(tmp_path, "a.h5", workers=1)
    b = gen(tmp_path, "b.h5", workers=2, store_agents=None)
    assert a.checksum == b.checksum
    assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")
    c = gen(tmp_path, "c.h5", seed=1)
    assert c.checksum != a.checksum
    assert not work_dir(tmp_path / "a.h5").exists()  # the work directory is gone after finalizing


def test_mixed_labels_reference_returns_and_metadata(tmp_path):
    gen(tmp_path, env_args={"n_agents": 1000}, episodes=6, ref_episodes=3)
    ds = load_dataset(tmp_path / "d.h5")
    m = ds.meta
    assert list(ds.quality_labels) == ["random", "expert"] * 3
    assert m.env == "gaussian-squeeze" and m.env_args["n_agents"] == 1000 and m.env_args["mu_frac"] == 0.4
    assert m.stored_agents == 1000 and m.quality == "mixed" and m.ref_episodes == 3 and m.library_version
    env = ds.make_env()
    # expert plays the optimal mixed strategy: per-agent return close to g(m*) = 0.4190; random ~ 0
    assert m.ref_returns["expert"] == pytest.approx(env.optimal_return(), abs=0.01)
    assert abs(m.ref_returns["random"]) < 1e-3
    scores = ds.normalized_score(ds.episode_returns)
    assert np.all(np.abs(scores[ds.quality_labels == "expert"] - 100) < 5)
    assert np.all(np.abs(scores[ds.quality_labels == "random"]) < 1)
    assert set(m.behaviour_policy) == {"random", "expert"}


def test_store_agents_subset(tmp_path):
    gen(tmp_path, env_args={"n_agents": 40, "horizon": 3}, store_agents=7, quality="medium")
    ds = load_dataset(tmp_path / "d.h5")
    assert ds.meta.stored_agents == 7 and ds.agent_index.shape == (6, 7)
    for row in ds.agent_index:
        assert len(set(row)) == 7 and row.min() >= 0 and row.max() < 40
    assert len({tuple(r) for r in ds.agent_index}) > 1  # a fresh subset per episode
    with pytest.raises(ValueError, match="exceeds the population size"):
        gen(tmp_path, "x.h5", store_agents=41)


@pytest.mark.parametrize("env_name", list(ENV_CASES))
@pytest.mark.parametrize("subset", [False, True])
def test_replay_reproduces_observations_and_rewards(tmp_path, env_name, subset):
    args, module, engine = ENV_CASES[env_name]
    if not _available(module, engine):
        pytest.skip(f"{env_name} not available")
    n = args["n_agents"]
    gen(tmp_path, env=env_name, env_args=args, quality="mixed", episodes=2, ref_episodes=1,
        store_agents=n if not subset else max(1, n // 3))
    ds = load_dataset(tmp_path / "d.h5")
    env = ds.make_env()
    for e in range(ds.n_episodes):
        ep = ds.episode(e)
        obs, info = env.reset(seed=ep.env_seed)
        idx = ep.agent_index
        np.testing.assert_array_equal(obs[idx], ep.states[0])
        np.testing.assert_array_equal(info["summary"], ep.summaries[0])
        if subset:
            # the other agents' actions are not stored: replay with the behaviour policy's generator
            policy = env.behaviour_policy(ep.quality)
            policy.reset(env, np.random.default_rng(ep.policy_seed))
        for t in range(ep.length):
            if subset:
                a = policy.act(obs, info)
                np.testing.assert_array_equal(a[idx], ep.actions[t])
            else:
                a = ep.actions[t]
            obs, r, term, trunc, info = env.step(a)
            np.testing.assert_array_equal(obs[idx], ep.states[t + 1])
            np.testing.assert_array_equal(r[idx], ep.rewards[t])
            np.testing.assert_array_equal(info["alive"][idx], ep.alive[t + 1])
            assert np.mean(r, dtype=np.float64) == ep.pop_reward[t]
        assert (term, trunc) == (ep.terminated, ep.truncated)


def test_crash_while_writing_the_file_leaves_no_output(tmp_path, monkeypatch):
    import mfdiffuser.data.generate as generate

    real = generate.write_dataset

    def crashing(path, meta, rows, **kw):
        def cut():
            for i, row in enumerate(rows):
                if i == 3:
                    raise RuntimeError("power cut")
                yield row

        return real(path, meta, cut(), **kw)

    monkeypatch.setattr(generate, "write_dataset", crashing)
    with pytest.raises(RuntimeError, match="power cut"):
        gen(tmp_path, "c.h5")
    assert not (tmp_path / "c.h5").exists() and work_dir(tmp_path / "c.h5").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5.partial"]  # no half-written file left
    monkeypatch.setattr(generate, "write_dataset", real)
    (tmp_path / ".c.h5.k1ll3d.tmp").write_bytes(b"left by a SIGKILL during the final write")
    res = gen(tmp_path, "c.h5")
    assert not (tmp_path / ".c.h5.k1ll3d.tmp").exists()
    assert res.resumed_episodes == 6 and res.agent_steps == 0  # nothing simulated again
    gen(tmp_path, "ref.h5")
    assert_same_file(tmp_path / "c.h5", tmp_path / "ref.h5")


def test_existing_output_and_mismatched_work_dir(tmp_path):
    gen(tmp_path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        gen(tmp_path)
    gen(tmp_path, overwrite=True)
    wd = work_dir(tmp_path / "e.h5")
    wd.mkdir()
    (wd / "manifest.json").write_text(json.dumps({"seed": 123}))
    with pytest.raises(MfdError, match="unfinished run with other settings"):
        gen(tmp_path, "e.h5")
    gen(tmp_path, "e.h5", overwrite=True)
    assert load_dataset(tmp_path / "e.h5").meta.seed == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown quality"):
        gen(tmp_path, quality="great")
    with pytest.raises(ValueError, match="--episodes"):
        gen(tmp_path, episodes=0)
    with pytest.raises(ValueError, match="unknown argument"):
        gen(tmp_path, env_args={"n_agents": 10, "colour": 3})


def test_parse_env_args_yaml_scalars():
    assert parse_env_args(["horizon=20", "mu_frac=0.3", "jitter=false", "opponent=random", "x-y=1e-3"]) == {
        "horizon": 20, "mu_frac": 0.3, "jitter": False, "opponent": "random", "x_y": 1e-3,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env_args(["horizon"])
    with pytest.raises(ValueError, match="scalar"):
        parse_env_args(["a=[1, 2]"])


def _cli(*args):
    return [sys.executable, "-m", "mfdiffuser.cli", "data", "generate", *args]


def test_kill_9_then_resume_gives_identical_arrays(tmp_path):
    common = ["--env", "gaussian-squeeze", "--n-agents", "1000", "--env-arg", "horizon=200", "--quality",
              "medium", "--episodes", "60", "--store-agents", "16", "--ref-episodes", "2", "--seed", "3",
              "--quiet"]
    out = tmp_path / "killed.h5"
    wd = work_dir(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*common, "--out", str(out), "--workers", "1"), env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def episodes_done():  # work units are files ep-<start>-<stop>.npz
        files = list(wd.glob("ep-*.npz")) if wd.exists() else []
        return sum(int(f.stem.split("-")[2]) - int(f.stem.split("-")[1]) for f in files)

    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and episodes_done() < 5:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = episodes_done()
    assert 5 <= done < 60 and not out.exists()
    with pytest.raises(Exception, match="unfinished generation"):
        load_dataset(wd)
    # rerun with another worker count: finishes without redoing the finished episodes
    res = subprocess.run(_cli(*common, "--out", str(out), "--workers", "2"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resumed: {done} episodes" in res.stdout
    gen(tmp_path, "straight.h5", env_args={"n_agents": 1000, "horizon": 200}, quality="medium", episodes=60,
        store_agents=16, ref_episodes=2, seed=3)
    assert_same_file(out, tmp_path / "straight.h5")
    assert not wd.exists()


def test_cli_generate_and_info(tmp_path, capsys):
    from mfdiffuser.cli import main

    out = tmp_path / "gs.h5"
    assert main(["data", "generate", "--setting", "gs-100", "--quality", "expert", "--episodes", "3",
                 "--ref-episodes", "1", "--workers", "1", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "K=100 of N=100" in text
    assert main(["data", "info", str(out)]) == 0
    assert "gs.h5" in capsys.readouterr().out
    assert main(["data", "generate", "--env", "gaussian-squeeze", "--quality", "random", "--episodes", "2",
                 "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_tasks_same_bits(tmp_path):
    pytest.importorskip("ray")
    a = gen(tmp_path, "a.h5")
    b = gen(tmp_path, "b.h5", use_ray=True, workers=2)
    assert a.checksum == b.checksum
