"""Scripted battle policies, vectorized over the N agents of a team: opponents and behaviour policies.

All of them read a :class:`TeamView` (one team's situation in the fixed N-row layout) and return
``actions[N]`` in MAgent2's battle action set: 13 moves (ids 0-12, :data:`MOVES`) and 8 attacks on the
neighbouring cells (ids 13-20, :data:`ATTACKS`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mfdiffuser.errors import require

if TYPE_CHECKING:  # pragma: no cover
    from mfdiffuser.envs.base import PopulationEnv
    from mfdiffuser.envs.battle import Battle

# MAgent2's move table for an agent of speed 2 (the 13 cells with |dx| + |dy| <= 2), action id -> (dx, dy),
# as the engine applies it (checked against the engine in the tests).
MOVES = np.array(
    [[0, -2], [-1, -1], [0, -1], [1, -1], [-2, 0], [-1, 0], [0, 0],
     [1, 0], [2, 0], [-1, 1], [0, 1], [1, 1], [0, 2]],
    dtype=np.int64,
)  # fmt: skip
STAY = 6
"""The move with offset (0, 0): stand still."""
ATTACK_BASE = 13
"""Id of the first attack action; attack ``ATTACK_BASE + k`` hits the cell ``pos + ATTACKS[k]``."""
# Attack range CircleRange(1.5): the 8 neighbours, in row-major (dy, dx) order as the engine numbers them.
ATTACKS = np.array([[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]], dtype=np.int64)
N_ACTIONS = len(MOVES) + len(ATTACKS)
"""A = 21."""


class TeamView:
    """One team's situation after the last step, rows in the env's fixed N-row layout.

    Positions are given; health fields are computed on first access (they may need an engine call),
    and are valid until the next step.

    Attributes:
        pos: ``[N, 2]`` int64 cells ``(x, y)``; dead rows keep the last position they held.
        alive: ``[N]`` bool.
        enemy_pos: ``[M, 2]`` cells of the M alive enemies.
        map_size: side of the square map (cells ``1..map_size-2`` are walkable, the border is wall).
        hp: ``[N]`` float32 health as a fraction of the maximum (0 for dead rows).
        enemy_hp: ``[M]`` float32 health fractions of the alive enemies, in the order of ``enemy_pos``.
        adjacent_enemy_hp: ``[N, 8]`` float32 health fraction of the enemy standing in attack cell k
            (order of :data:`ATTACKS`), 0 where there is none.
        adjacent_enemy: ``[N, 8]`` bool, an enemy stands in attack cell k.
    """

    def __init__(
        self,
        pos: np.ndarray,
        alive: np.ndarray,
        enemy_pos: np.ndarray,
        map_size: int,
        hp_fn: Callable[[], np.ndarray],
        enemy_hp_fn: Callable[[], np.ndarray],
        adjacent_hp_fn: Callable[[], np.ndarray],
    ) -> None:
        """Wrap a team's arrays and the loaders of its health fields."""
        self.pos, self.alive, self.enemy_pos, self.map_size = pos, alive, enemy_pos, map_size
        self._hp_fn, self._enemy_hp_fn, self._adjacent_hp_fn = hp_fn, enemy_hp_fn, adjacent_hp_fn

    @functools.cached_property
    def hp(self) -> np.ndarray:
        return self._hp_fn()

    @functools.cached_property
    def enemy_hp(self) -> np.ndarray:
        return self._enemy_hp_fn()

    @functools.cached_property
    def adjacent_enemy_hp(self) -> np.ndarray:
        return self._adjacent_hp_fn()

    @functools.cached_property
    def adjacent_enemy(self) -> np.ndarray:
        return self.adjacent_enemy_hp > 0  # an alive agent always has health left


ScriptFn = Callable[[TeamView, np.random.Generator], np.ndarray]
"""A scripted team policy: ``(team, rng) -> actions[N]``."""


# --------------------------------------------------------------------------- building blocks
def nearest_enemy(team: TeamView) -> np.ndarray:
    """``[N, 2]`` int64 cell of each agent's nearest alive enemy (Euclidean; own cell if none left)."""
    out = team.pos.copy()
    if len(team.enemy_pos) == 0:
        return out
    spatial = require("scipy.spatial", "battle")
    tree = spatial.cKDTree(team.enemy_pos, balanced_tree=False, compact_nodes=False)
    _, idx = tree.query(team.pos[team.alive])
    out[team.alive] = team.enemy_pos[idx]
    return out


def attack_choice(
    team: TeamView, rng: np.random.Generator, *, weakest: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick an adjacent enemy to hit for every agent.

    Args:
        team: the team's view.
        rng: breaks ties at random.
        weakest: target the adjacent enemy with the least health (focus fire); otherwise the nearest
            one (orthogonal neighbours before diagonal ones).

    Returns:
        ``(can_attack[N] bool, attack_action[N] int64)``.
    """
    present = team.adjacent_enemy
    can = cast(np.ndarray, present.any(axis=1))
    noise = rng.random(present.shape) * 1e-3
    if weakest:
        score = np.where(present, 2.0 - team.adjacent_enemy_hp + noise, -np.inf)
    else:
        diagonal = np.abs(ATTACKS).sum(axis=1) == 2
        score = np.where(present, 2.0 - 0.5 * diagonal + noise, -np.inf)
    return can, ATTACK_BASE + np.argmax(score, axis=1)


def move_toward(
    team: TeamView, target: np.ndarray, rng: np.random.Generator, *, occupied: np.ndarray | None = None
) -> np.ndarray:
    """Move action bringing each agent closest (Euclidean) to ``target[N, 2]``, ties broken at random.

    Cells that are wall, or occupied in the boolean ``occupied[W, W]`` map, are never chosen (the engine
    would refuse the move); standing still is always allowed.
    """
    new = team.pos[:, None, :] + MOVES[None, :, :]  # [N, 13, 2]
    diff = target[:, None, :] - new
    dist = np.sqrt((diff * diff).sum(axis=2)) + rng.random(diff.shape[:2]) * 1e-3
    lo, hi = 1, team.map_size - 2
    blocked = cast(np.ndarray, (new < lo).any(axis=2) | (new > hi).any(axis=2))
    if occupied is not None:
        cx = np.clip(new[..., 0], 0, team.map_size - 1)
        cy = np.clip(new[..., 1], 0, team.map_size - 1)
        blocked |= occupied[cx, cy]
    blocked[:, STAY] = False
    dist[blocked] = np.inf
    return np.argmin(dist, axis=1)


def occupancy(team: TeamView) -> np.ndarray:
    """``[W, W]`` bool map of the cells held by alive agents of both teams."""
    occ = np.zeros((team.map_size, team.map_size), dtype=bool)
    p = team.pos[team.alive]
    occ[p[:, 0], p[:, 1]] = True
    occ[team.enemy_pos[:, 0], team.enemy_pos[:, 1]] = True
    return occ


# --------------------------------------------------------------------------- team scripts
def random_actions(team: TeamView, rng: np.random.Generator) -> np.ndarray:
    """Uniform random actions over all 21."""
    return rng.integers(0, N_ACTIONS, size=len(team.alive), dtype=np.int64)


def hold_actions(team: TeamView, rng: np.random.Generator) -> np.ndarray:
    """Never move; hit the nearest adjacent enemy when one is in reach (a static defensive block)."""
    can, attack = attack_choice(team, rng, weakest=False)
    return np.where(can, attack, STAY)


def attack_nearest_actions(team: TeamView, rng: np.random.Generator) -> np.ndarray:
    """Hit the nearest adjacent enemy if any, else step toward the nearest alive enemy."""
    can, attack = attack_choice(team, rng, weakest=False)
    move = move_toward(team, nearest_enemy(team), rng)
    return np.where(can, attack, move)


def expert_actions(
    team: TeamView, rng: np.random.Generator, *, wait_radius: float = 2.9, patience: float = 0.95
) -> np.ndarray:
    """Scripted attacker: focus fire, let the enemy come the last step, advance around allies.

    * Agents in reach of an enemy hit the one with the least health (kills come sooner, so fewer
      enemies strike back, and the +5 kill reward is collected).
    * An agent whose nearest enemy is within ``wait_radius`` cells but not yet in reach stands still
      (with probability ``patience`` per step): in MAgent2 a move and an attack cannot share a step,
      so whoever closes the last gap is hit first. The small chance of stepping in anyway keeps the
      team from stalling in front of an opponent that never moves.
    * The others move toward their nearest enemy, choosing only free cells so that rear ranks flow
      around the front instead of queueing behind it.
    """
    can, attack = attack_choice(team, rng, weakest=True)
    target = nearest_enemy(team)
    gap = np.sqrt(((target - team.pos) ** 2).sum(axis=1))
    move = move_toward(team, target, rng, occupied=occupancy(team))
    wait = (gap <= wait_radius) & (rng.random(len(gap)) < patience)
    return np.where(can, attack, np.where(wait, STAY, move))


OPPONENTS: dict[str, ScriptFn] = {
    "attack-nearest": attack_nearest_actions,
    "random": random_actions,
    "hold": hold_actions,
}
"""The opponent pool, selectable by name (``Battle(opponent=...)``)."""


# --------------------------------------------------------------------------- PopulationPolicy wrappers
def dead_rows_action(env: Battle) -> int:
    """What our policies put in dead rows: stand still, or -1 when the env is strict about dead rows."""
    return -1 if env.dead_actions == "strict" else STAY


class ScriptedPolicy:
    """A :class:`~mfdiffuser.envs.base.PopulationPolicy` for our team driven by a team script.

    Dead rows get :func:`dead_rows_action` (a constant, so recorded datasets stay clean).
    """

    def __init__(self, script: ScriptFn) -> None:
        self.script = script

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._env, self._rng = cast("Battle", env), rng
        self._dead = dead_rows_action(self._env)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        team = self._env.team_view(0)
        return np.where(team.alive, self.script(team, self._rng), self._dead)


class MixedScriptPolicy:
    """Per-agent mixture: each agent follows ``script`` with probability ``p`` per episode, else random.

    The set of scripted agents is redrawn at every ``reset``, so a dataset holds every mix of roles.
    Dead rows get :func:`dead_rows_action`.
    """

    def __init__(self, script: ScriptFn, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixing probability must lie in [0, 1], got {p!r}")
        self.script, self.p = script, float(p)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._env, self._rng = cast("Battle", env), rng
        self._dead = dead_rows_action(self._env)
        self._scripted = rng.random(env.n_agents) < self.p

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        team = self._env.team_view(0)
        scripted = self.script(team, self._rng)
        rand = random_actions(team, self._rng)
        return np.where(team.alive, np.where(self._scripted, scripted, rand), self._dead)
