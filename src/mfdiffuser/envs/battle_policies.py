"""Scripted battle policies, vectorized over the N agents of a team: opponents and behaviour policies.

Every script returns ``actions[N]`` in MAgent2's battle action set: 13 moves (ids 0-12, :data:`MOVES`)
and 8 attacks on the neighbouring cells (ids 13-20, :data:`ATTACKS`). The behaviour policies of our team
decide from the observation the learners get, decoded by
:func:`~mfdiffuser.envs.battle_obs.read_obs` (so any offline dataset they write is realizable by a
policy of ``obs``); the opponent's scripts read the whole map through a
:class:`~mfdiffuser.envs.battle_obs.TeamView`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from mfdiffuser.envs.battle_obs import (
    ATTACK_BASE,
    ATTACKS,
    MOVES,
    N_ACTIONS,
    STAY,
    ObservedTeam,
    TeamView,
    off_map,
    read_obs,
)
from mfdiffuser.errors import require

if TYPE_CHECKING:  # pragma: no cover
    from mfdiffuser.envs.base import PopulationEnv


class _HasAlive(Protocol):
    @property
    def alive(self) -> np.ndarray: ...


ScriptFn = Callable[[TeamView, np.random.Generator], np.ndarray]
"""An opponent script: ``(team, rng) -> actions[N]``."""
ObsScriptFn = Callable[[ObservedTeam, np.random.Generator], np.ndarray]
"""A behaviour script of our team: ``(read_obs(obs), rng) -> actions[N]``."""


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
    reach_hp: np.ndarray, rng: np.random.Generator, *, weakest: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick an adjacent enemy to hit for every agent.

    Args:
        reach_hp: ``[N, 8]`` health of the enemy in each attack cell (order of :data:`ATTACKS`), 0 if none.
        rng: breaks ties at random.
        weakest: target the adjacent enemy with the least health (focus fire); otherwise the nearest
            one (orthogonal neighbours before diagonal ones).

    Returns:
        ``(can_attack[N] bool, attack_action[N] int64)``.
    """
    present = reach_hp > 0  # an alive agent always has health left
    can = cast(np.ndarray, present.any(axis=1))
    noise = rng.random(present.shape) * 1e-3
    if weakest:
        score = np.where(present, 2.0 - reach_hp + noise, -np.inf)
    else:
        diagonal = np.abs(ATTACKS).sum(axis=1) == 2
        score = np.where(present, 2.0 - 0.5 * diagonal + noise, -np.inf)
    return can, ATTACK_BASE + np.argmax(score, axis=1)


def move_toward(offset: np.ndarray, blocked: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move action bringing each agent closest (Euclidean) to the cell at ``offset[N, 2]`` from it.

    Ties are broken at random; moves flagged in ``blocked[N, 13]`` are never chosen (the engine would
    refuse them), standing still always may be.
    """
    diff = offset[:, None, :] - MOVES[None, :, :]  # [N, 13, 2]
    dist = np.sqrt((diff * diff).sum(axis=2)) + rng.random(diff.shape[:2]) * 1e-3
    dist[blocked & (np.arange(len(MOVES)) != STAY)] = np.inf
    return np.argmin(dist, axis=1)


# --------------------------------------------------------------------------- team scripts
def random_actions(team: _HasAlive, rng: np.random.Generator) -> np.ndarray:
    """Uniform random actions over all 21 (reads nothing but the team's size)."""
    return rng.integers(0, N_ACTIONS, size=len(team.alive), dtype=np.int64)


def hold_actions(team: TeamView, rng: np.random.Generator) -> np.ndarray:
    """Never move; hit the nearest adjacent enemy when one is in reach (a static defensive block)."""
    can, attack = attack_choice(team.adjacent_enemy_hp, rng, weakest=False)
    return np.where(can, attack, STAY)


def attack_nearest_actions(team: TeamView, rng: np.random.Generator) -> np.ndarray:
    """Hit the nearest adjacent enemy if any, else step toward the nearest alive enemy."""
    can, attack = attack_choice(team.adjacent_enemy_hp, rng, weakest=False)
    move = move_toward(nearest_enemy(team) - team.pos, off_map(team.pos, team.map_size), rng)
    return np.where(can, attack, move)


def expert_actions(
    team: ObservedTeam, rng: np.random.Generator, *, wait_radius: float = 2.9, patience: float = 0.95
) -> np.ndarray:
    """Scripted attacker: focus fire, let the enemy come the last step, advance around allies.

    Decides from the observation alone (``in_view``, ``target``, ``reach_hp``, ``blocked`` of
    :class:`~mfdiffuser.envs.battle_obs.ObservedTeam`):

    * Agents in reach of an enemy hit the one with the least health (kills come sooner, so fewer
      enemies strike back, and the +5 kill reward is collected).
    * An agent whose nearest enemy is in view and within ``wait_radius`` cells but not yet in reach
      stands still (with probability ``patience`` per step): in MAgent2 a move and an attack cannot
      share a step, so whoever closes the last gap is hit first. The small chance of stepping in
      anyway keeps the team from stalling in front of an opponent that never moves.
    * The others move toward their nearest enemy (out of view: toward the nearest group of enemies),
      choosing only free cells so that rear ranks flow around the front instead of queueing behind it.
    """
    can, attack = attack_choice(team.reach_hp, rng, weakest=True)
    gap = np.sqrt((team.target**2).sum(axis=1))
    move = move_toward(team.target, team.blocked, rng)
    wait = team.in_view & (gap <= wait_radius) & (rng.random(len(gap)) < patience)
    return np.where(can, attack, np.where(wait, STAY, move))


OPPONENTS: dict[str, ScriptFn] = {
    "attack-nearest": attack_nearest_actions,
    "random": random_actions,
    "hold": hold_actions,
}
"""The opponent pool, selectable by name (``Battle(opponent=...)``)."""


# --------------------------------------------------------------------------- PopulationPolicy wrappers
class BattleSettings(Protocol):
    """The constants of a battle env that our team's policies read (no state of the battle)."""

    n_agents: int
    map_size: int
    dead_actions: str


def dead_rows_action(env: BattleSettings) -> int:
    """What our policies put in dead rows: stand still, or -1 when the env is strict about dead rows."""
    return -1 if env.dead_actions == "strict" else STAY


class ScriptedPolicy:
    """A :class:`~mfdiffuser.envs.base.PopulationPolicy` for our team driven by a behaviour script.

    The script sees ``read_obs(obs)`` only. Dead rows get :func:`dead_rows_action` (a constant, so
    recorded datasets stay clean).
    """

    def __init__(self, script: ObsScriptFn) -> None:
        self.script = script

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._env, self._rng = cast(BattleSettings, env), rng
        self._dead = dead_rows_action(self._env)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        team = read_obs(obs, self._env.map_size)
        return np.where(team.alive, self.script(team, self._rng), self._dead)


class MixedScriptPolicy:
    """Per-agent mixture: each agent follows ``script`` with probability ``p`` per episode, else random.

    The set of scripted agents is redrawn at every ``reset``, so a dataset holds every mix of roles.
    The script sees ``read_obs(obs)`` only. Dead rows get :func:`dead_rows_action`.
    """

    def __init__(self, script: ObsScriptFn, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixing probability must lie in [0, 1], got {p!r}")
        self.script, self.p = script, float(p)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._env, self._rng = cast(BattleSettings, env), rng
        self._dead = dead_rows_action(self._env)
        self._scripted = rng.random(env.n_agents) < self.p

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        team = read_obs(obs, self._env.map_size)
        scripted = self.script(team, self._rng)
        rand = random_actions(team, self._rng)
        return np.where(team.alive, np.where(self._scripted, scripted, rand), self._dead)
