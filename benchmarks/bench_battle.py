"""Battle env throughput and wrapper overhead against the raw MAgent2 engine step; behaviour win rates.

Raw step = what any driver of the engine does anyway: ``set_action`` for both groups, ``step``,
``get_reward`` for both groups, ``clear_dead``, ``get_observation`` for both groups. The wrapper step is
``Battle.step`` (validation, N-row layout, compact observations, ``phi(mu_t)``, metrics) with the
``random`` opponent, in the compact and in the view observation mode, so both sides play random
actions in both loops. Blocks of raw and wrapper steps are interleaved and the median block is kept,
and time is process CPU time, so that load from other processes on a shared machine hits both alike.

    python benchmarks/bench_battle.py                      # 64, 256, 1024 per side
    python benchmarks/bench_battle.py --winrate-episodes 20 --winrate-sizes 64 256
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

from mfdiffuser.envs import make
from mfdiffuser.envs.battle_obs import read_obs
from mfdiffuser.envs.battle_policies import OPPONENTS, expert_actions

SETTINGS = {64: "battle-64", 256: "battle-256", 1024: "battle-1024"}


def _raw_engine(env):
    """A fresh GridWorld with battle_v4's config and the env's current opening positions."""
    import magent2

    mod = importlib.import_module("magent2.environments.battle.battle")
    gw = magent2.gridworld.GridWorld(
        mod.get_config(env.map_size, False, None, **env.rewards), map_size=env.map_size
    )
    handles = gw.get_handles()
    gw.reset()
    gw.set_seed(0)
    for side in range(2):
        gw.add_agents(handles[side], method="custom", pos=env.positions(side).astype(np.int32))
    return gw, handles


def _time_raw(gw, handles, pool: np.ndarray, steps: int) -> float:
    t0 = time.process_time()
    for k in range(steps):
        for side, h in enumerate(handles):
            gw.set_action(h, pool[side, k, : gw.get_num(h)])
        gw.step()
        for h in handles:
            gw.get_reward(h)
        gw.clear_dead()
        for h in handles:
            gw.get_observation(h)
    return (time.process_time() - t0) / steps


def _time_wrapper(env, actions: np.ndarray, steps: int, *, opponent_views: bool = False) -> float:
    t0 = time.process_time()
    for k in range(steps):
        env.step(actions[k])
        if opponent_views:
            env.health(1)  # forces the engine's observation of the opponent team, as raw does
    return (time.process_time() - t0) / steps


def _time_pettingzoo(env, pool: np.ndarray, steps: int) -> float:
    """MAgent2's own ``battle_v4`` parallel env: per-agent dicts in and out (the alternative to ours)."""
    t0 = time.process_time()
    for k in range(steps):
        row = pool[k % len(pool)]
        env.step({agent: int(row[i]) for i, agent in enumerate(env.agents)})
    return (time.process_time() - t0) / steps


def bench_overhead(n: int, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of the raw engine and of the wrapper at N per side."""
    env = make(SETTINGS[n], opponent="random", horizon=10**9)
    env.reset(seed=0)
    view_env = make(SETTINGS[n], opponent="random", horizon=10**9, obs_mode="view")
    view_env.reset(seed=0)
    gw, handles = _raw_engine(env)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, env.n_actions, size=(2, steps, n), dtype=np.int32)
    ours = pool[0].astype(np.int64)
    from magent2.environments import battle_v4

    pz = battle_v4.parallel_env(map_size=env.map_size, max_cycles=10**9, **env.rewards)
    pz.reset(seed=0)  # battle_v4 places map_size^2 / 25 agents per side: N at our settings' map sizes
    pz_pool = rng.integers(0, env.n_actions, size=(steps, 2 * n))
    raw, wrapped, viewed, forced, pettingzoo = [], [], [], [], []
    _time_raw(gw, handles, pool, min(steps, 10))  # warm-up
    _time_wrapper(env, ours, min(steps, 10))
    _time_wrapper(view_env, ours, min(steps, 10))
    for _ in range(repeats):
        raw.append(_time_raw(gw, handles, pool, steps))
        wrapped.append(_time_wrapper(env, ours, steps))
        viewed.append(_time_wrapper(view_env, ours, steps))
        forced.append(_time_wrapper(env, ours, steps, opponent_views=True))
        pettingzoo.append(_time_pettingzoo(pz, pz_pool, steps))
    pz.close()
    out = {
        "raw": float(np.median(raw)),
        "wrapper": float(np.median(wrapped)),
        "view": float(np.median(viewed)),
        "forced": float(np.median(forced)),
        "pettingzoo": float(np.median(pettingzoo)),
    }
    # cost of one call of each team script at full army size (the opponent's share of a step)
    team = env.team_view(1)
    seen = read_obs(env.step(ours[0])[0], env.map_size)
    calls = {
        "hold": lambda: OPPONENTS["hold"](team, rng),
        "attack-nearest": lambda: OPPONENTS["attack-nearest"](team, rng),
        "expert": lambda: expert_actions(seen, rng),  # decides from our team's decoded observation
    }
    for name, call in calls.items():
        call()  # warm-up: lazy imports, the team's health fields
        t0 = time.process_time()
        for _ in range(steps):
            call()
        out[name] = (time.process_time() - t0) / steps
    return out


def win_rates(n: int, episodes: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(win rate, mean kill ratio, mean episode length) of each behaviour policy against each opponent."""
    out = {}
    for opponent in OPPONENTS:
        env = make(SETTINGS[n], opponent=opponent)
        for quality in ("expert", "medium", "random"):
            policy = env.behaviour_policy(quality)
            wins, ratios, lengths = [], [], []
            for seed in range(episodes):
                obs, info = env.reset(seed=seed)
                policy.reset(env, np.random.default_rng(10_000 + seed))
                done = False
                while not done:
                    obs, _, term, trunc, info = env.step(policy.act(obs, info))
                    done = term or trunc
                wins.append(info["win"])
                ratios.append(info["kill_ratio"])
                lengths.append(env.t)
            out[(quality, opponent)] = (float(np.mean(wins)), float(np.mean(ratios)), float(np.mean(lengths)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved blocks per loop (median kept)")
    parser.add_argument("--winrate-episodes", type=int, default=0, help="episodes per cell (0: skip)")
    parser.add_argument("--winrate-sizes", type=int, nargs="+", default=[64], choices=list(SETTINGS))
    args = parser.parse_args(argv)

    print("battle: wrapper step vs raw MAgent2 engine step (both sides random; median of blocks)")
    print(
        f"{'N/side':>7} {'raw ms':>8} {'wrap ms':>8} {'ratio':>6} {'view ms':>8} {'ratio':>6} "
        f"{'+opp view':>9} {'ratio':>6} "
        f"{'agent-steps/s':>14} {'battle_v4 ms':>12} {'speedup':>7} "
        f"{'hold ms':>8} {'att-near ms':>11} {'expert ms':>9}"
    )
    for n in args.sizes:
        r = bench_overhead(n, args.steps, args.repeats)
        ratio = r["wrapper"] / r["raw"]
        print(
            f"{n:>7} {r['raw'] * 1e3:>8.3f} {r['wrapper'] * 1e3:>8.3f} {ratio:>6.2f} "
            f"{r['view'] * 1e3:>8.3f} {r['view'] / r['raw']:>6.2f} "
            f"{r['forced'] * 1e3:>9.3f} {r['forced'] / r['raw']:>6.2f} "
            f"{2 * n / r['wrapper']:>14,.0f} {r['pettingzoo'] * 1e3:>12.3f} "
            f"{r['pettingzoo'] / r['wrapper']:>7.1f} {r['hold'] * 1e3:>8.3f} "
            f"{r['attack-nearest'] * 1e3:>11.3f} {r['expert'] * 1e3:>9.3f}"
        )
    print("ratio = wrapper / raw (target <= 1.25 at 1024 per side). The wrapper skips the engine's view of")
    print("the opponent team unless asked for it; '+opp view' forces it every step (same work as raw).")
    print("view: the wrapper with obs_mode='view' (34 features plus MAgent2's 13 x 13 x 5 view per agent).")
    print("agent-steps/s: both sides, default wrapper; battle_v4: MAgent2's own PettingZoo parallel env at")
    print("the same map size and army size (per-agent dicts), speedup = battle_v4 / wrapper;")
    print("hold / att-near / expert: one call of that team script at full army size (policy cost, extra)")

    for n in args.winrate_sizes if args.winrate_episodes else []:
        episodes = args.winrate_episodes
        print(f"\nwin rates at {n} per side, {episodes} episodes per cell (win rate / kill ratio / length)")
        table = win_rates(n, args.winrate_episodes)
        print(f"{'policy':>8} " + " ".join(f"{o:>24}" for o in OPPONENTS))
        for quality in ("expert", "medium", "random"):
            cells = [table[(quality, o)] for o in OPPONENTS]
            print(f"{quality:>8} " + " ".join(f"{w:>8.2f} / {k:>5.2f} / {t:>5.0f}" for w, k, t in cells))


if __name__ == "__main__":
    main()
