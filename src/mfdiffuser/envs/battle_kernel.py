"""The battle observation's per-agent view pass, compiled with numba: one read of each agent's view.

:meth:`~mfdiffuser.envs.battle.Battle._observe` needs, per alive agent, counts of allies and enemies in
its view and in attack reach, the nearest enemy cell, which of its 12 moves are blocked and the
enemies' health in its attack cells. In numpy these are a dozen passes over ``[n, V*V]`` arrays and as
many temporaries; here one loop over each agent's view cells computes them and writes the agent's
row of features. The arithmetic is the numpy formulation's, in the same precision (float32 cell
codes, float64 positions cast once), so observations are the same bit for bit (pinned in the tests).
Compiled on first use and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from mfdiffuser.errors import require

ENEMY_CODE = 256.0
"""A view cell's code is ally presence + ENEMY_CODE x enemy presence (> the cells of a view)."""


@functools.cache
def view_features() -> Callable[..., Any]:
    """The compiled kernel (numba, from the ``battle`` extra), built once per process.

    ``kernel(flat, channels, pos, hp, centroid, t_frac, consts..., out, nearest, in_view)`` fills
    ``out[n, 34]`` except the two target columns, ``nearest[n]`` (flat view cell of the nearest enemy
    in view, 0 when none) and ``in_view[n]``; see :meth:`Battle._observe` for the arguments.
    """
    numba = require("numba", "battle")

    @numba.njit(cache=True, nogil=True)
    def kernel(
        flat: np.ndarray,  # [n, V*V*C] float32 views, row-major (dy, dx, channel)
        c: int,  # channels per cell
        pos: np.ndarray,  # [n, 2] cells (x, y)
        hp: np.ndarray,  # [n] float32 own health fraction
        centroid: np.ndarray,  # [2] float64 mean position of the alive enemies (ignored without any)
        has_enemies: bool,
        t_frac: float,  # t / T
        w: int,  # span of the walkable cells (W - 3)
        map_size: int,
        cells: int,  # view cells within the radius, the agent's own excluded
        score: np.ndarray,  # [V*V] float32 nearest-cell score (0 at the centre, falls with distance)
        reach_mask: np.ndarray,  # [V*V] bool: the 8 cells in attack reach
        step_cells: np.ndarray,  # [12] flat view cell each move of STEPS lands on
        step_moves: np.ndarray,  # [12, 2] (dx, dy) of each move of STEPS
        reach_entries: np.ndarray,  # [8] flat entries of the enemy health in the attack cells
        cell_offset: np.ndarray,  # [V*V, 2] float32 offset of each cell / view radius ((0, 0) at 0)
        target_col: int,  # first of the two target columns (left for the caller)
        reach_col: int,
        blocked_col: int,
        out: np.ndarray,  # [n, 34] float32
        nearest: np.ndarray,  # [n] int64
        in_view: np.ndarray,  # [n] bool
    ) -> None:
        n, vv = flat.shape[0], score.shape[0]
        code = np.empty(vv, dtype=np.float32)
        enemy = np.float32(ENEMY_CODE)
        for i in range(n):
            row = flat[i]
            total = np.float32(0.0)
            reach = np.float32(0.0)
            best, best_score = 0, np.float32(-1.0)
            for j in range(vv):
                v = row[j * c + 3] * enemy + row[j * c + 1]
                code[j] = v
                total += v
                if reach_mask[j]:
                    reach += v
                s = v * score[j]
                if s > best_score:
                    best, best_score = j, s
            enemies = np.floor(total * np.float32(1.0 / ENEMY_CODE))
            near_enemies = np.floor(reach * np.float32(1.0 / ENEMY_CODE))
            seen = enemies > 0
            in_view[i] = seen
            nearest[i] = best if seen else 0
            o = out[i]
            o[0] = (pos[i, 0] - 1) / w
            o[1] = (pos[i, 1] - 1) / w
            o[2] = hp[i]
            o[3] = (total - enemy * enemies - np.float32(1.0)) / cells  # the agent sees itself
            o[4] = enemies / cells
            o[5] = near_enemies / np.float32(8.0)
            o[6] = cell_offset[nearest[i], 0]
            o[7] = cell_offset[nearest[i], 1]
            if has_enemies:
                o[8] = (centroid[0] - pos[i, 0]) / w
                o[9] = (centroid[1] - pos[i, 1]) / w
            else:
                o[8] = 0.0
                o[9] = 0.0
            o[target_col] = 0.0
            o[target_col + 1] = 0.0
            for k in range(reach_entries.shape[0]):
                o[reach_col + k] = row[reach_entries[k]]
            for m in range(step_cells.shape[0]):
                x = pos[i, 0] + step_moves[m, 0]
                y = pos[i, 1] + step_moves[m, 1]
                wall = x < 1 or y < 1 or x > map_size - 2 or y > map_size - 2
                o[blocked_col + m] = 1.0 if (code[step_cells[m]] > 0 or wall) else 0.0
            o[out.shape[1] - 2] = 1.0
            o[out.shape[1] - 1] = t_frac

    return kernel
