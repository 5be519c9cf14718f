"""MAgent2 battle (real engine) behind the batched population API: our N agents against a scripted team.

The engine is driven through its per-group array API (``magent2.gridworld.GridWorld``), with the
agent type, reward rules and opening formation of MAgent2's ``battle_v4``; its config comes from
``magent2.environments.battle.battle.get_config``. Agents live in a fixed N-row layout with an alive mask.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, cast

import gymnasium as gym
import numpy as np

from mfdiffuser.envs.base import PopulationEnv, PopulationPolicy, check_bool, check_float, check_int
from mfdiffuser.envs.battle_kernel import view_features
from mfdiffuser.envs.battle_obs import (
    ATTACK_BASE,
    ATTACKS,
    BLOCKED,
    COMPACT_SIZE,
    MOVES,
    N_ACTIONS,
    OBS_FIELDS,
    OBS_MODES,
    REACH_HP,
    STEPS,
    TARGET,
    TARGET_BLOCK,
    TIME,
    VIEW_SHAPE,
    TeamView,
    offset_scale,
    view_shape,
)
from mfdiffuser.envs.battle_policies import (
    OPPONENTS,
    MixedScriptPolicy,
    ScriptedPolicy,
    expert_actions,
    random_actions,
)
from mfdiffuser.errors import require

__all__ = ["DEAD_ACTION", "MEDIUM_EXPERT_FRACTION", "OBS_FIELDS", "Battle", "BattleOutcome"]

MEDIUM_EXPERT_FRACTION = 0.65
"""Share of scripted-expert agents in the ``medium`` behaviour policy (the rest act at random)."""

DEAD_ACTION = -1
"""Action value that marks "no action" for a dead row (required in ``dead_actions="strict"`` mode)."""

_BATTLE_MODULE = "magent2.environments.battle.battle"
_GAP = 3  # half-distance between the two opening blocks, as battle_v4's generate_map


def _reach_cells(radius: int, channels: int) -> np.ndarray:
    """``[8]`` flat view entries of the other team's health in the attack cells (order of ``ATTACKS``)."""
    side = 2 * radius + 1
    return ((ATTACKS[:, 1] + radius) * side + ATTACKS[:, 0] + radius) * channels + 4  # (dy, dx, channel 4)


def _reach_hp(views: np.ndarray, radius: int) -> np.ndarray:
    """``[n, 8]`` other-team health in the attack cells (order of ``ATTACKS``) from ``views[n, V, V, C]``."""
    return views.reshape(len(views), -1)[:, _reach_cells(radius, views.shape[-1])]


@dataclasses.dataclass(frozen=True)
class BattleOutcome:
    """Result of an episode (or the standing so far).

    ``win`` is true when our team has more survivors than the opponent: the opponent eliminated while
    some of ours live, or more survivors when the step limit is reached. Equal survivors is a ``draw``.
    ``kill_ratio`` is opponents killed per agent of ours lost (lost counted as at least 1).
    """

    win: bool
    draw: bool
    survivors: int
    opponent_survivors: int
    kills: int
    deaths: int
    kill_ratio: float
    mean_return: float
    opponent_mean_return: float
    steps: int


class Battle(PopulationEnv):
    """MAgent2 ``battle``: N agents of ours (west block) against N scripted opponents (east block).

    Dynamics, agent type and rewards are MAgent2's ``battle_v4`` defaults: 10 hp, 2 damage per hit,
    0.1 hp recovered per step, speed 2 (13 moves), attack reach 1.5 (8 attacks), view radius 6. The
    engine resolves the agents' actions in a random order drawn from its own seed, which ``reset`` sets
    from the env's generator (so a seed fixes the episode).

    Per-agent rewards are exactly what the engine pays, unscaled (defaults in brackets):
    ``step_reward`` (-0.005) every step; ``attack_penalty`` (-0.1) for every attack action, hit or
    miss; ``attack_opponent_reward`` (+0.2) on top for a hit on an opponent (a hit nets +0.095); on
    the hit that kills, the engine pays the agent type's kill reward (+5) in place of the +0.2 (the
    killing hit nets 4.895); an agent killed during a step receives ``dead_penalty`` (-0.1) for it, and
    dead rows earn 0 afterwards. These numbers are pinned by a hand-played duel in the tests.

    Observation ``obs[N, S]`` (S = 34, :data:`~mfdiffuser.envs.battle_obs.OBS_FIELDS`): a compact
    state for planning that carries everything the behaviour policies decide from (the offset to the
    nearest enemy, exact in view and to the nearest group of enemies beyond, the enemies' health in
    the 8 attack cells, which moves are blocked), so a learner can reproduce them (docs/battle.md).
    With ``obs_mode="view"`` each row continues with MAgent2's standard observation of the agent, its
    13 x 13 x 5 view flattened (``obs[N, 34 + 845]``; zeros for dead rows). The engine's full local
    view and feature vector are available through :meth:`local_view`. Summary ``phi(mu_t)``
    (P = 2 G^2 + 3): a G x G histogram of each team's alive agents over the map (normalized by N, so it
    sums to the alive fraction), then both alive fractions and the mean health fraction of our alive
    agents. (The opponent's health is left out: reading it takes the engine's full view of the
    opponent team, its costliest call, which nothing else in a step needs; :meth:`health` gives it on
    demand.)

    Actions ``[N]`` in ``0..20``. Dead rows are ignored: with ``dead_actions="ignore"`` (default) they
    may carry any valid id or :data:`DEAD_ACTION` (-1); with ``"strict"`` they must carry -1, so that a
    policy that forgets about deaths fails loudly. An alive row holding -1, any id outside ``-1..20``,
    a wrong shape or a non-integer dtype raises ValueError.

    An episode ends (terminated) when a team is eliminated, or is truncated after ``horizon`` steps.
    ``info`` adds, at every step, ``survivors`` and ``opponent_survivors`` (alive counts), ``killed``
    and ``lost`` (opponents and agents of ours killed at this step); on the last step of an episode
    also ``win``, ``draw``, ``kill_ratio``, ``mean_return`` (per agent of ours) and ``outcome`` (the
    full :class:`BattleOutcome`, also available at any time from :meth:`outcome`).

    The opening formation is battle_v4's two blocks of agents spaced two cells apart, facing each other
    across the map centre; on every reset each agent is placed in a random slot of its block and
    jittered by 0 or 1 cell per axis (``jitter=False`` keeps battle_v4's exact grid), so episodes vary.

    Behaviour policies (measured, 30 episodes per cell, ``benchmarks/bench_battle.py``): ``expert``
    wins 100% against every opponent at 64, 256 and 1,024 per side (kill ratio against
    ``attack-nearest`` 1.55 / 1.34 / 1.18); ``medium`` wins 0% against ``attack-nearest`` and 100%
    against ``random`` and ``hold``; ``random`` wins 0% against ``attack-nearest`` and ``hold``.
    """

    name = "battle"

    def __init__(
        self,
        n_agents: int = 64,
        map_size: int = 40,
        opponent: str = "attack-nearest",
        horizon: int = 200,
        step_reward: float | None = None,
        dead_penalty: float | None = None,
        attack_penalty: float | None = None,
        attack_opponent_reward: float | None = None,
        summary_grid: int = 4,
        jitter: bool = True,
        dead_actions: str = "ignore",
        obs_mode: str = "compact",
    ) -> None:
        """Build the engine.

        Args:
            n_agents: N, agents per side.
            map_size: side W of the square map (the border cells are wall).
            opponent: scripted opponent team, one of :data:`~mfdiffuser.envs.battle_policies.OPPONENTS`.
            horizon: T, steps per episode. battle_v4 plays 1000; 200 is enough for a decisive fight at
                every shipped size with scripted attackers, and keeps offline episodes short.
            step_reward: reward every step (None: battle_v4's -0.005).
            dead_penalty: reward on dying (None: battle_v4's -0.1).
            attack_penalty: reward for any attack action (None: battle_v4's -0.1).
            attack_opponent_reward: extra reward for attacking an opponent (None: battle_v4's 0.2).
            summary_grid: G, cells per axis of the position histograms in ``phi(mu_t)``.
            jitter: randomize slots and jitter positions in the opening formation.
            dead_actions: ``"ignore"`` or ``"strict"`` (see the class docstring).
            obs_mode: ``"compact"`` (the 34 features) or ``"view"`` (the 34 features, then MAgent2's
                13 x 13 x 5 view of the agent, flattened; see :data:`~mfdiffuser.envs.battle_obs.OBS_MODES`).
        """
        super().__init__()
        magent2 = require("magent2", "battle")
        n_agents = check_int(self.name, "n_agents", n_agents, minimum=1)
        map_size = check_int(self.name, "map_size", map_size, minimum=12)
        if opponent not in OPPONENTS:
            raise ValueError(
                f"{self.name}: unknown opponent {opponent!r}; choose from {', '.join(OPPONENTS)}"
            )
        horizon = check_int(self.name, "horizon", horizon, minimum=1)
        summary_grid = check_int(self.name, "summary_grid", summary_grid, minimum=1)
        if dead_actions not in ("ignore", "strict"):
            raise ValueError(f"{self.name}: dead_actions must be 'ignore' or 'strict', got {dead_actions!r}")
        self.n_agents = int(n_agents)
        self.map_size = int(map_size)
        self.opponent = opponent
        self.horizon = int(horizon)
        self.summary_grid = int(summary_grid)
        self.jitter = check_bool(self.name, "jitter", jitter)
        self.dead_actions = dead_actions
        if obs_mode not in OBS_MODES:
            raise ValueError(f"{self.name}: obs_mode must be one of {', '.join(OBS_MODES)}, got {obs_mode!r}")
        self.obs_mode = obs_mode
        self._slots = self._formation()  # validates that N fits on the map

        battle_mod = importlib.import_module(_BATTLE_MODULE)
        rewards = dict(battle_mod.default_reward_args)
        given = {
            "step_reward": step_reward,
            "dead_penalty": dead_penalty,
            "attack_penalty": attack_penalty,
            "attack_opponent_reward": attack_opponent_reward,
        }
        for key, value in given.items():
            if value is not None:
                rewards[key] = check_float(self.name, key, value)
        self.rewards = rewards
        self.kill_reward = float(battle_mod.KILL_REWARD)
        cfg = battle_mod.get_config(self.map_size, False, None, **rewards)
        self._gw = magent2.gridworld.GridWorld(cfg, map_size=self.map_size)
        self._handles = self._gw.get_handles()
        view = tuple(int(v) for v in self._gw.get_view_space(self._handles[0]))
        if self._gw.get_action_space(self._handles[0])[0] != N_ACTIONS:
            raise RuntimeError(f"{self.name}: engine reports an action count other than {N_ACTIONS}")
        self._check_attack_layout()
        if view != VIEW_SHAPE:
            raise RuntimeError(f"{self.name}: the installed magent2 has a view of {view}, not {VIEW_SHAPE}")
        self.view_shape = view  # (view, view, C)
        self.view_radius = (view[0] - 1) // 2
        self.feature_size = int(self._gw.get_feature_space(self._handles[0])[0])
        self._init_view_geometry()

        n, g = self.n_agents, self.summary_grid
        size = COMPACT_SIZE + (int(np.prod(view)) if obs_mode == "view" else 0)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self.summary_space = gym.spaces.Box(0.0, 1.0, shape=(2 * g * g + 3,), dtype=np.float32)
        # Per side (0 ours, 1 opponent), fixed N-row arrays refreshed after every engine step.
        self._pos = [np.zeros((n, 2), dtype=np.int64) for _ in range(2)]
        self._alive = [np.zeros(n, dtype=bool) for _ in range(2)]
        self._hp = [np.zeros(n, dtype=np.float32) for _ in range(2)]
        self._rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * 2
        self._id2row: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * 2
        self._views: list[np.ndarray | None] = [None, None]
        self._feats: list[np.ndarray] = [np.zeros((0, self.feature_size), dtype=np.float32)] * 2
        self._return = [np.zeros(n, dtype=np.float64) for _ in range(2)]
        self._engine_pos: list[np.ndarray] = [np.zeros((0, 2), dtype=np.int32)] * 2
        self._engine_hp: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * 2
        self._team_cache: list[TeamView | None] = [None, None]
        self._opp_rng = np.random.default_rng()
        self._opponent_fn = OPPONENTS[opponent]

    # ------------------------------------------------------------------ config and geometry
    @classmethod
    def observation_view(cls, config: Mapping[str, Any]) -> tuple[int, int, int] | None:
        return view_shape(str(config.get("obs_mode", "compact")))

    def config(self) -> dict[str, Any]:
        return {
            "n_agents": self.n_agents,
            "map_size": self.map_size,
            "opponent": self.opponent,
            "horizon": self.horizon,
            **self.rewards,
            "summary_grid": self.summary_grid,
            "jitter": self.jitter,
            "dead_actions": self.dead_actions,
            "obs_mode": self.obs_mode,
        }

    def _formation(self) -> np.ndarray:
        """``[2, N, 2]`` opening cells: battle_v4's blocks, spaced 2 apart, facing across the centre."""
        n, w = self.n_agents, self.map_size
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        side_x, side_y = 2 * cols, 2 * rows
        x_left, x_right = w // 2 - _GAP - side_x, w // 2 + _GAP
        y0 = (w - side_y) // 2
        # with a jitter of up to +1 the blocks span [x_left, x_right + side_x - 1] x [y0, y0 + side_y - 1]
        if x_left < 1 or x_right + side_x - 1 > w - 2 or y0 < 1 or y0 + side_y - 1 > w - 2:
            need = 2 * side_x + 2 * _GAP + 2
            raise ValueError(
                f"{self.name}: {n} agents per side do not fit on a {w}x{w} map "
                f"(two blocks of {cols}x{rows} agents need map_size >= {need})"
            )
        gx, gy = np.meshgrid(np.arange(cols) * 2, np.arange(rows) * 2, indexing="ij")
        offsets = np.stack([gx.ravel(), gy.ravel()], axis=1)[:n]
        left = offsets + [x_left, y0]
        # the east block is the mirror image of the west one, so both fronts face each other
        right = np.stack([x_right + side_x - 2 - offsets[:, 0], y0 + offsets[:, 1]], axis=1)
        return np.stack([left, right]).astype(np.int64)

    def _check_attack_layout(self) -> None:
        """Make sure the engine numbers attacks as :data:`ATTACKS` says (guards engine upgrades)."""
        base, grid = self._gw.get_view2attack(self._handles[0])
        c = (grid.shape[0] - 1) // 2
        expected = np.full_like(grid, -1)
        expected[c + ATTACKS[:, 1], c + ATTACKS[:, 0]] = np.arange(len(ATTACKS))
        if base != ATTACK_BASE or not np.array_equal(grid, expected):
            raise RuntimeError(f"{self.name}: the installed magent2 numbers attack actions differently")

    def _init_view_geometry(self) -> None:
        r = self.view_radius
        dx: np.ndarray
        dy: np.ndarray
        dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
        dx, dy = dx.ravel(), dy.ravel()  # flat view cell j = (row dy + r, column dx + r)
        d2 = dx * dx + dy * dy
        self._n_view_cells = int((d2 <= r * r).sum() - 1)
        # offsets of the view cells / view radius; index 0 stands for "no enemy in view": (0, 0)
        self._cell_offset = (np.stack([dx, dy], axis=1) / r).astype(np.float32)
        self._cell_offset[0] = 0.0
        self._reach_mask = (d2 > 0) & (d2 <= 2)  # the 8 cells in attack reach
        # code * score, argmax -> nearest enemy cell: scores in 1..V*V-1 fall with distance (ties broken
        # by a fixed cell order), so an enemy cell (code 256) always beats an ally cell (code 1)
        rank = np.argsort(np.argsort(d2, kind="stable"), kind="stable")  # 0 for the centre
        self._nearest_score = np.where(d2 > 0, d2.size - rank, 0).astype(np.float32)
        self._cell_cells = np.stack([dx, dy], axis=1)  # [V*V, 2] offset in cells
        self._cell_cells[0] = 0
        self._n_blocks = -(-self.map_size // TARGET_BLOCK)
        # flat view cells of the 12 moves that change the cell (order of STEPS)
        self._step_cells = (MOVES[STEPS, 1] + r) * (2 * r + 1) + MOVES[STEPS, 0] + r
        self._step_moves = np.ascontiguousarray(MOVES[STEPS])  # [12, 2] (dx, dy)
        # map cell -> summary grid cell along one axis (walkable cells 1..W-2)
        g, w = self.summary_grid, self.map_size
        self._coarse = np.clip((np.arange(w) - 1) * g // (w - 2), 0, g - 1)
        # the flat view entries of the other team's health in the 8 attack cells
        self._reach_cells = _reach_cells(self.view_radius, self.view_shape[-1])

    # ------------------------------------------------------------------ episode
    def _reset(self, options: dict[str, Any]) -> np.ndarray:
        gw, rng = self._gw, self.np_random
        gw.reset()
        gw.set_seed(int(rng.integers(0, 2**31 - 1)))
        self._opp_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
        for side in range(2):
            cells = self._slots[side]
            if self.jitter:
                cells = cells[rng.permutation(self.n_agents)] + rng.integers(0, 2, size=cells.shape)
            gw.add_agents(self._handles[side], method="custom", pos=cells.astype(np.int32))
            ids = gw.get_agent_id(self._handles[side]).astype(np.int64)
            if len(ids) != self.n_agents:
                raise RuntimeError(f"{self.name}: engine placed {len(ids)} of {self.n_agents} agents")
            table = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
            table[ids] = np.arange(self.n_agents)
            self._id2row[side] = table
            self._return[side][:] = 0.0
        self._refresh()
        return self._observe(0)

    def validate_actions(self, actions: Any) -> np.ndarray:
        """Check ``actions[N]``: ints in ``0..20`` for alive rows, dead rows per ``dead_actions``."""
        actions = np.asarray(actions)
        if actions.shape != (self.n_agents,):
            raise ValueError(f"{self.name}: actions must have shape ({self.n_agents},), got {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"{self.name}: actions must be integers, got dtype {actions.dtype}")
        lo, hi = actions.min(), actions.max()
        if lo < DEAD_ACTION or hi >= N_ACTIONS:
            raise ValueError(
                f"{self.name}: actions must lie in [0, {N_ACTIONS - 1}] (or {DEAD_ACTION} for dead agents), "
                f"got range [{lo}, {hi}]"
            )
        alive = self._alive[0]
        if lo == DEAD_ACTION:
            bad = np.flatnonzero(alive & (actions == DEAD_ACTION))
            if bad.size:
                raise ValueError(
                    f"{self.name}: alive agents need an action in [0, {N_ACTIONS - 1}]; rows "
                    f"{bad[:8].tolist()}{'...' if bad.size > 8 else ''} hold {DEAD_ACTION}"
                )
        if self.dead_actions == "strict":
            bad = np.flatnonzero(~alive & (actions != DEAD_ACTION))
            if bad.size:
                raise ValueError(
                    f"{self.name}: rows {bad[:8].tolist()}{'...' if bad.size > 8 else ''} are dead; "
                    f"with dead_actions='strict' their action must be {DEAD_ACTION}"
                )
        return actions.astype(np.int64, copy=False)

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        gw, h = self._gw, self._handles
        opp_actions = np.asarray(self._opponent_fn(self.team_view(1), self._opp_rng))
        gw.set_action(h[0], actions[self._rows[0]].astype(np.int32))
        gw.set_action(h[1], opp_actions[self._rows[1]].astype(np.int32))
        gw.step()
        # Rewards come in engine order of the agents alive before the step (the killed included, with
        # their dead penalty); read them before clear_dead removes the killed.
        reward = np.zeros(self.n_agents, dtype=np.float32)
        reward[self._rows[0]] = gw.get_reward(h[0])
        self._return[0] += reward
        self._return[1][self._rows[1]] += gw.get_reward(h[1])
        before = (self._alive[0].sum(), self._alive[1].sum())
        gw.clear_dead()
        self._refresh()
        n0, n1 = int(self._alive[0].sum()), int(self._alive[1].sum())
        terminated = n0 == 0 or n1 == 0
        extra: dict[str, Any] = {
            "survivors": n0,
            "opponent_survivors": n1,
            "killed": int(before[1] - n1),  # opponents killed at this step
            "lost": int(before[0] - n0),  # agents of ours killed at this step
        }
        if terminated or self.t + 1 >= self.horizon:
            out = self.outcome(steps=self.t + 1)
            extra.update(
                win=out.win,
                draw=out.draw,
                kill_ratio=out.kill_ratio,
                mean_return=out.mean_return,
                outcome=out,
            )
        return self._observe(self.t + 1), reward, terminated, extra

    def _refresh(self) -> None:
        """Pull ids and positions of both teams from the engine into the N-row layout, and our views.

        The opponent's views (and so its health) are fetched only when something asks for them
        (:meth:`_fetch_views`): nothing in a step needs them, and they are the engine's costliest call.
        """
        gw = self._gw
        for side in range(2):
            h = self._handles[side]
            rows = self._id2row[side][gw.get_agent_id(h)]
            pos = gw.get_pos(h)
            self._alive[side][:] = False
            self._alive[side][rows] = True
            self._pos[side][rows] = pos
            self._rows[side], self._engine_pos[side] = rows, pos
            self._views[side] = None
        self._fetch_views(0)
        self._team_cache = [None, None]

    def _fetch_views(self, side: int) -> None:
        """Get a team's views and features from the engine (once per step) and its health from them."""
        if self._views[side] is not None:
            return
        view, feat = self._gw.get_observation(self._handles[side])
        c = self.view_radius
        hp = view[:, c, c, 2].copy()  # own health, as a fraction of the maximum, at the view centre
        self._hp[side][:] = 0.0
        self._hp[side][self._rows[side]] = hp
        self._views[side], self._feats[side], self._engine_hp[side] = view, feat, hp

    def _observe(self, t: int) -> np.ndarray:
        """Build ``obs[N, S]`` for our team from the engine's views.

        One compiled pass reads each alive agent's view once and writes its row of features
        (:mod:`mfdiffuser.envs.battle_kernel`); the target offsets, which look beyond the view, follow
        in numpy. Only dead rows are zeroed (no memset of the whole array).
        """
        obs = np.empty((self.n_agents, self.state_size), dtype=np.float32)
        dead = np.flatnonzero(~self._alive[0])
        if dead.size:
            obs[dead] = 0.0
            obs[dead, TIME] = t / self.horizon
        rows, view = self._rows[0], cast(np.ndarray, self._views[0])
        n = rows.size
        if n == 0:
            return obs
        flat = view.reshape(n, -1)  # [n, V*V*C], no copy
        if self.obs_mode == "view":
            obs[rows, COMPACT_SIZE:] = flat
        pos, opp = self._engine_pos[0], self._engine_pos[1]  # alive agents in engine order, like the views
        centroid = opp.sum(axis=0) / len(opp) if len(opp) else np.zeros(2)
        o = np.empty((n, COMPACT_SIZE), dtype=np.float32)
        nearest = np.empty(n, dtype=np.int64)
        in_view = np.empty(n, dtype=bool)
        view_features()(
            np.ascontiguousarray(flat), view.shape[-1], pos, self._engine_hp[0], centroid, len(opp) > 0,
            t / self.horizon, self.map_size - 3, self.map_size, self._n_view_cells, self._nearest_score,
            self._reach_mask, self._step_cells, self._step_moves, self._reach_cells, self._cell_offset,
            TARGET.start, REACH_HP.start, BLOCKED.start, o, nearest, in_view,
        )  # fmt: skip
        o[:, TARGET] = self._target_offset(nearest, in_view) / offset_scale(self.map_size)
        obs[rows, :COMPACT_SIZE] = o  # agent-major: one contiguous run per row
        return obs

    def _target_offset(self, nearest: np.ndarray, in_view: np.ndarray) -> np.ndarray:
        """``[n, 2]`` cells from each alive agent of ours (engine order) to the enemy it should head for.

        An agent with an enemy in view (radius 6) gets its nearest one, exactly: the view's nearest
        enemy cell ``nearest[n]`` (any enemy out of view is farther). The others get the nearest group
        of enemies: the rounded centroid of the enemies in the nearest block of ``TARGET_BLOCK`` x
        ``TARGET_BLOCK`` cells holding any (nearest on the block grid, by a Euclidean distance
        transform), which points about the same way as the nearest enemy at a fraction of the cost of
        a search over the whole army (an exact search at 1,024 per side costs a quarter of the
        engine's step).
        """
        ours, theirs = self._engine_pos
        out = self._cell_cells[nearest].astype(np.float32)  # [n, 2]
        far = np.flatnonzero(~in_view)
        if far.size == 0 or len(theirs) == 0:
            out[far] = 0.0
            return out
        b, nb = TARGET_BLOCK, self._n_blocks
        key = (theirs[:, 0] // b) * nb + theirs[:, 1] // b
        count = np.bincount(key, minlength=nb * nb)
        ndimage = require("scipy.ndimage", "battle")
        near = ndimage.distance_transform_edt(
            (count == 0).reshape(nb, nb), return_distances=False, return_indices=True
        )  # [2, nb, nb]: the nearest block holding enemies, per block
        near = (near[0] * nb + near[1]).ravel()
        # per block: the rounded centroid of its nearest group, gathered once for every far agent
        sums = np.stack([np.bincount(key, weights=theirs[:, a], minlength=nb * nb)[near] for a in range(2)])
        centre = np.rint(sums / count[near]).T  # [nb * nb, 2]
        mine = ours[far]
        out[far] = centre[(mine[:, 0] // b) * nb + mine[:, 1] // b] - mine
        return out

    # ------------------------------------------------------------------ relabelling
    def permute(self, perm: np.ndarray) -> np.ndarray:
        """Relabel our agents so that new row ``i`` is old row ``perm[i]``; return the new ``obs[N, S]``.

        Row labels are ours alone (the engine never sees them), so relabelling changes nothing in the
        battle: observations, rewards and alive masks of later steps are permuted the same way.
        """
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(self.n_agents)):
            raise ValueError(f"{self.name}: perm must be a permutation of 0..{self.n_agents - 1}")
        inverse = np.argsort(perm)
        table = self._id2row[0]
        self._id2row[0] = np.where(table >= 0, inverse[np.maximum(table, 0)], -1)
        self._pos[0][:] = self._pos[0][perm]
        self._return[0][:] = self._return[0][perm]
        self._refresh()
        return self._observe(self.t)

    def agent_symmetry(self, rng: np.random.Generator) -> np.ndarray:
        """A random relabelling of our agents: every one is a symmetry (see :meth:`permute`)."""
        return rng.permutation(self.n_agents)

    # ------------------------------------------------------------------ views and summaries
    def alive(self) -> np.ndarray:
        return self._alive[0].copy()

    def opponent_alive(self) -> np.ndarray:
        """``[N]`` bool alive mask of the opponent team."""
        return self._alive[1].copy()

    def positions(self, side: int = 0) -> np.ndarray:
        """``[N, 2]`` int64 cells ``(x, y)`` of a team (0 ours, 1 opponent); dead rows hold the last cell."""
        return self._pos[side].copy()

    def health(self, side: int = 0) -> np.ndarray:
        """``[N]`` float32 health fraction of a team's agents (0 for dead rows)."""
        self._fetch_views(side)
        return self._hp[side].copy()

    def summary(self) -> np.ndarray:
        g, n = self.summary_grid, self.n_agents
        out = np.zeros(self.summary_size, dtype=np.float32)
        for side in range(2):
            p = self._engine_pos[side]  # alive agents, engine order
            hist = np.bincount(self._coarse[p[:, 0]] * g + self._coarse[p[:, 1]], minlength=g * g)
            out[side * g * g : (side + 1) * g * g] = hist / n
            out[2 * g * g + side] = len(p) / n
        hp = self._engine_hp[0]
        out[2 * g * g + 2] = hp.mean() if len(hp) else 0.0
        return out

    def local_view(self, side: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """MAgent2's own observation of a team in the N-row layout (zeros for dead rows).

        Returns:
            ``(view[N, 13, 13, 5], features[N, F])``: view channels are wall, own-team presence, own-team
            health, other-team presence, other-team health (row = dy, column = dx around the agent);
            features (F = 32) are the engine's id embedding, one-hot last action and last reward.
        """
        self._fetch_views(side)
        rows = self._rows[side]
        view = np.zeros((self.n_agents, *self.view_shape), dtype=np.float32)
        feat = np.zeros((self.n_agents, self.feature_size), dtype=np.float32)
        view[rows] = self._views[side]
        feat[rows] = self._feats[side]
        return view, feat

    def team_view(self, side: int) -> TeamView:
        """The situation of a team (0 ours, 1 opponent) as the scripted policies read it.

        Valid until the next step (health fields are loaded on first access).
        """
        cached = self._team_cache[side]
        if cached is None:
            other = 1 - side
            cached = TeamView(
                pos=self._pos[side],
                alive=self._alive[side],
                enemy_pos=self._engine_pos[other].astype(np.int64),
                map_size=self.map_size,
                hp_fn=lambda: self.health(side),
                enemy_hp_fn=lambda: self._enemy_hp(other),
                adjacent_hp_fn=lambda: self._adjacent_enemy_hp(side),
            )
            self._team_cache[side] = cached
        return cached

    def _enemy_hp(self, other: int) -> np.ndarray:
        self._fetch_views(other)
        return self._engine_hp[other].copy()

    def _adjacent_enemy_hp(self, side: int, *, from_views: bool | None = None) -> np.ndarray:
        """``[N, 8]`` health of the enemy in each attack cell (attack order), 0 where none.

        Read off the team's own views when they are at hand (ours always are), else off a map of the
        enemies' health, which needs no view of this team (so the opponent's scripts cost no engine
        observation call). Both give the same numbers (tested).
        """
        rows = self._rows[side]
        out = np.zeros((self.n_agents, len(ATTACKS)), dtype=np.float32)
        if from_views if from_views is not None else self._views[side] is not None:
            self._fetch_views(side)
            out[rows] = _reach_hp(cast(np.ndarray, self._views[side]), self.view_radius)
            return out
        other = 1 - side
        self._fetch_views(other)
        w = self.map_size
        grid = np.zeros(w * w, dtype=np.float32)
        p = self._engine_pos[other]
        grid[p[:, 0] * w + p[:, 1]] = self._engine_hp[other]
        flat = np.array([w, 1])
        # walls ring the map, so the neighbours of a walkable cell are on it
        out[rows] = grid[(self._pos[side][rows] @ flat)[:, None] + (ATTACKS @ flat)[None, :]]
        return out

    def outcome(self, steps: int | None = None) -> BattleOutcome:
        """Win, kill ratio, survivors and mean returns of the current episode so far."""
        n = self.n_agents
        s0, s1 = int(self._alive[0].sum()), int(self._alive[1].sum())
        kills, deaths = n - s1, n - s0
        return BattleOutcome(
            win=s0 > s1,
            draw=s0 == s1,
            survivors=s0,
            opponent_survivors=s1,
            kills=kills,
            deaths=deaths,
            kill_ratio=kills / max(deaths, 1),
            mean_return=float(self._return[0].mean()),
            opponent_mean_return=float(self._return[1].mean()),
            steps=self.t if steps is None else steps,
        )

    # ------------------------------------------------------------------ policies
    def behaviour_policy(self, quality: str) -> PopulationPolicy:
        """Behaviour policy of a quality for our team.

        ``expert``: the scripted attacker :func:`~mfdiffuser.envs.battle_policies.expert_actions`;
        ``medium``: each agent is that attacker with probability 0.65 (drawn per episode), random
        otherwise, which lands at about 50 normalized points (mean return per agent) against the
        ``attack-nearest`` opponent at 64 and 256 per side (higher against ``hold`` and ``random``;
        the fraction is fixed, not recalibrated for other opponents or map densities);
        ``random``: uniform actions.
        """
        if quality == "expert":
            return ScriptedPolicy(expert_actions)
        if quality == "medium":
            return MixedScriptPolicy(expert_actions, MEDIUM_EXPERT_FRACTION)
        if quality == "random":
            return ScriptedPolicy(random_actions)
        raise ValueError(f"{self.name}: unknown quality {quality!r}; choose from expert, medium, random")

    def close(self) -> None:
        self._team_cache = [None, None]
