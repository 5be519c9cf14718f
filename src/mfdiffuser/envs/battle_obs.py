"""The battle env's observation and action contract: what an agent sees and what it may do.

Both the env (which computes observations) and the scripted policies (which decide from them) depend
on this module, never on each other's internals: the action tables of MAgent2's battle agent, the
layout of the compact observation ``obs[N, S]`` (:data:`OBS_FIELDS`), its decoding into the fields a
behaviour policy reads (:func:`read_obs`), and :class:`TeamView`, the full situation of a team that
only the opponent's scripts read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, cast

import numpy as np

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
STEPS = np.array([m for m in range(len(MOVES)) if m != STAY], dtype=np.int64)
"""The 12 move ids that change the cell (every move but :data:`STAY`)."""

OBS_FIELDS: tuple[str, ...] = (
    "x",  # column, (x - 1) / (W - 3): 0 at the west wall, 1 at the east wall
    "y",  # row, same scale
    "hp",  # health / maximum health (10)
    "ally_density",  # other allies in the view (radius 6) / cells of the view
    "enemy_density",  # enemies in the view / cells of the view
    "adjacent_enemies",  # enemies in attack reach (8 neighbours) / 8
    "nearest_dx",  # offset to the nearest enemy in view / view radius (0 when none is in view)
    "nearest_dy",
    "centroid_dx",  # offset to the centroid of all alive enemies / (W - 3): the direction of the army
    "centroid_dy",
    "target_dx",  # offset to the nearest alive enemy in view, else to the nearest group of enemies / (W - 3)
    "target_dy",
    *(f"reach_hp_{k}" for k in range(len(ATTACKS))),  # health of the enemy in attack cell k, 0 if none
    *(f"blocked_{m}" for m in STEPS),  # 1 when move m lands on a wall or an occupied cell
    "alive",  # 1 alive, 0 dead (a dead row is all zeros apart from time)
    "time",  # t / T
)
"""Names of the S = 34 per-agent observation features, in order."""

TARGET = slice(OBS_FIELDS.index("target_dx"), OBS_FIELDS.index("target_dy") + 1)
"""Columns of the offset to the nearest enemy anywhere."""
REACH_HP = slice(OBS_FIELDS.index("reach_hp_0"), OBS_FIELDS.index(f"reach_hp_{len(ATTACKS) - 1}") + 1)
"""Columns of the enemies' health in the 8 attack cells (order of :data:`ATTACKS`)."""
BLOCKED = slice(OBS_FIELDS.index(f"blocked_{STEPS[0]}"), OBS_FIELDS.index(f"blocked_{STEPS[-1]}") + 1)
"""Columns of the blocked flags of the 12 moves of :data:`STEPS`."""
ALIVE = OBS_FIELDS.index("alive")
"""Column of the alive flag."""
ENEMY_DENSITY = OBS_FIELDS.index("enemy_density")
"""Column of the share of view cells holding an enemy."""


TARGET_BLOCK = 8
"""Side (cells) of the blocks that group the enemies out of view for ``target``."""


TIME = OBS_FIELDS.index("time")
"""Column of the time fraction."""
COMPACT_SIZE = len(OBS_FIELDS)
"""Features of the compact observation (and the first columns of the view observation)."""
VIEW_SHAPE = (13, 13, 5)
"""MAgent2's view of a battle agent, ``[V, V, C]``: radius 6 (cells beyond it read 0), channels wall,
own-team presence, own-team health, other-team presence, other-team health (row = dy, column = dx)."""
OBS_MODES = ("compact", "view")
"""``compact``: ``obs[N, 34]`` (:data:`OBS_FIELDS`); ``view``: those 34 features followed by the
agent's view flattened row-major (``[V, V, C]``), ``obs[N, 34 + 845]``."""


def view_shape(obs_mode: str) -> tuple[int, int, int] | None:
    """``[V, V, C]`` of the view at the end of each observation in ``obs_mode``, None in compact mode."""
    return VIEW_SHAPE if obs_mode == "view" else None


def offset_scale(map_size: int) -> int:
    """Cells per unit of the position and offset fields: ``W - 3``, the span of the walkable cells."""
    return map_size - 3


class ObservedTeam(NamedTuple):
    """What a behaviour policy of our team reads, decoded from ``obs[N, S]`` and nothing else.

    Attributes:
        alive: ``[N]`` bool.
        in_view: ``[N]`` bool, an enemy is in view (``enemy_density > 0``); ``target`` is exact then.
        target: ``[N, 2]`` int64 offset (dx, dy) in cells to the nearest alive enemy ((0, 0) if none).
        reach_hp: ``[N, 8]`` float32 health of the enemy in attack cell k, 0 where there is none.
        blocked: ``[N, 13]`` bool, move m would be refused (wall or occupied); never true for STAY.
    """

    alive: np.ndarray
    in_view: np.ndarray
    target: np.ndarray
    reach_hp: np.ndarray
    blocked: np.ndarray


def read_obs(obs: np.ndarray, map_size: int) -> ObservedTeam:
    """Decode the fields a behaviour policy uses from ``obs[N, S]`` (S = :data:`OBS_FIELDS`).

    ``map_size`` is the env's constant W (known to any learner of one env setting): it turns the
    scaled offsets back into whole cells.
    """
    n = len(obs)
    blocked = np.zeros((n, len(MOVES)), dtype=bool)
    blocked[:, STEPS] = obs[:, BLOCKED] > 0.5
    return ObservedTeam(
        alive=obs[:, ALIVE] > 0.5,
        in_view=obs[:, ENEMY_DENSITY] > 0,
        target=np.rint(obs[:, TARGET] * offset_scale(map_size)).astype(np.int64),
        reach_hp=np.ascontiguousarray(obs[:, REACH_HP]),
        blocked=blocked,
    )


class TeamView:
    """One team's full situation after the last step, rows in the env's fixed N-row layout.

    Read by the opponent's scripts only (the opponent is part of the environment, so it may see the
    whole map); our team's behaviour policies read :class:`ObservedTeam`. Positions are given; health
    fields are computed on first access (they may need an engine call), and are valid until the next
    step.

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
        return cast(np.ndarray, self.adjacent_enemy_hp > 0)  # an alive agent always has health left


def off_map(pos: np.ndarray, map_size: int) -> np.ndarray:
    """``[n, 13]`` bool: move m from ``pos[n, 2]`` leaves the walkable cells ``1..map_size-2``."""
    out = np.zeros((len(pos), len(MOVES)), dtype=bool)
    edge = ((pos < 3) | (pos > map_size - 4)).any(axis=1)  # only these can reach a wall in one move
    if edge.any():
        new = pos[edge, None, :] + MOVES[None, :, :]  # [e, 13, 2]
        out[edge] = ((new < 1) | (new > map_size - 2)).any(axis=2)
    return out
