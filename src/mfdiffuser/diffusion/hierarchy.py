"""Coarse-to-fine level schedules, branching of particles, and the grouping that ties particles to agents.

Sampling runs ``steps[j]`` denoising steps on ``M_j`` particles, then every particle branches into
about ``M_{j+1} / M_j`` children, re-noised from its predicted clean sample at the current noise level.
Agents are ordered once by their current states (:func:`state_order`); level j's particle g stands for
the contiguous block of ranks ``[g N / M_j, (g+1) N / M_j)``, so the levels nest and particles at the
finest level map to agents by block assignment (the population's action histogram equals the particles').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mfdiffuser.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True)
class LevelSchedule:
    """Particle counts ``M_0 < ... < M_L`` and the denoising steps spent at each level."""

    sizes: tuple[int, ...]
    """``M_j``, strictly increasing."""
    steps: tuple[int, ...]
    """``K_j``, denoising steps at level j (their sum is the number of sampling steps)."""

    def __post_init__(self) -> None:
        sizes, steps = tuple(int(m) for m in self.sizes), tuple(int(k) for k in self.steps)
        if not sizes or len(sizes) != len(steps):
            raise ValueError(f"level schedule: need as many step counts as levels, got {sizes} and {steps}")
        if any(m < 1 for m in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"level schedule: sizes must be positive and strictly increasing, got {sizes}")
        if any(k < 1 for k in steps):
            raise ValueError(f"level schedule: every level needs >= 1 step, got {steps}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "steps", steps)

    @classmethod
    def single(cls, m: int, n_steps: int) -> LevelSchedule:
        """One level of ``m`` particles for all ``n_steps`` steps (no coarse-to-fine)."""
        return cls((m,), (n_steps,))

    @property
    def total_steps(self) -> int:
        """Number of sampling steps over all levels."""
        return sum(self.steps)

    @property
    def final_size(self) -> int:
        """``M_L``, the number of particles sampled at the end."""
        return self.sizes[-1]

    def cost(self) -> int:
        """Particle-steps ``sum_j M_j K_j`` (the denoiser's cost is linear in it)."""
        return sum(m * k for m, k in zip(self.sizes, self.steps, strict=True))

    def capped(self, cap: int) -> LevelSchedule:
        """Levels with ``M_j > cap`` lowered to ``cap``; levels that collide merge their steps."""
        if cap < 1:
            raise ValueError(f"level schedule: cap must be >= 1, got {cap}")
        sizes: list[int] = []
        steps: list[int] = []
        for m, k in zip(self.sizes, self.steps, strict=True):
            m = min(m, cap)
            if sizes and sizes[-1] == m:
                steps[-1] += k
            else:
                sizes.append(m)
                steps.append(k)
        return LevelSchedule(tuple(sizes), tuple(steps))

    def with_total_steps(self, n_steps: int) -> LevelSchedule:
        """The same levels with ``n_steps`` sampling steps in all, shared in proportion to ``steps``.

        Each level keeps at least one step; the shares are rounded by largest remainder. The sampler
        spreads the steps evenly over the K training steps, so fewer steps is a DDIM stride.
        """
        n_steps = int(n_steps)
        if n_steps < len(self.steps):
            raise ValueError(
                f"level schedule: {len(self.steps)} levels need >= {len(self.steps)} steps, got {n_steps}"
            )
        raw = [k * n_steps / self.total_steps for k in self.steps]
        out = [max(1, math.floor(r)) for r in raw]
        while sum(out) < n_steps:
            out[max(range(len(out)), key=lambda j: raw[j] - out[j])] += 1
        while sum(out) > n_steps:
            out[min((j for j in range(len(out)) if out[j] > 1), key=lambda j: raw[j] - out[j])] -= 1
        return LevelSchedule(self.sizes, tuple(out))

    def with_final(self, m_final: int) -> LevelSchedule:
        """Replace the finest level by ``m_final`` particles (coarser levels above it are merged down)."""
        out = LevelSchedule(self.sizes[:-1] + (max(m_final, self.sizes[-1]),), self.steps)
        return out.capped(m_final)


def parent_index(m_from: int, m_to: int) -> torch.Tensor:
    """``[m_to]`` parent of each child particle, ``floor(g m_from / m_to)``.

    Each parent gets ``floor`` or ``ceil`` of ``m_to / m_from`` contiguous children.
    """
    if not 1 <= m_from <= m_to:
        raise ValueError(f"branching: need 1 <= m_from <= m_to, got {m_from}, {m_to}")
    return torch.arange(m_to) * m_from // m_to


def branch(
    x0: torch.Tensor,
    parents: torch.Tensor,
    k: int,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    x_k: torch.Tensor | None = None,
    keep: float = 0.0,
) -> torch.Tensor:
    """Branch particles by re-noising their predicted clean samples to noise level ``k``.

    Children of one parent share its ``x0`` and get sibling noise centred to mean zero within the
    family and rescaled to unit variance (antithetic): so the mean of each family at level ``k`` is
    exactly ``sqrt(abar_k) x0`` of the parent, and the particles' mean is kept, while siblings are
    decorrelated. Single children get plain fresh noise.

    With ``keep = rho > 0`` and the parents' current samples ``x_k``, each child's noise is
    ``rho eps_parent + sqrt(1 - rho^2) z`` where ``eps_parent`` is the noise the parent carries
    (``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps_parent``): the family mean becomes
    ``(1 - rho) sqrt(abar_k) x0 + rho x_k``, and ``rho = 1`` copies the parent. Re-noising from the
    posterior mean ``x0`` alone drops the spread of x0 given ``x_k`` that the parent's noise encodes.

    Args:
        x0: ``[B, M, H, D]`` predicted clean samples of the M parents.
        parents: ``[M']`` parent index of each child (see :func:`parent_index`).
        k: noise level to re-noise to (``-1`` returns the clean children).
        schedule: the noise schedule.
        generator: source of the fresh noise.
        x_k: ``[B, M, H, D]`` the parents' samples at level ``k`` (needed when ``keep > 0``).
        keep: correlation rho in [0, 1] of each child's noise with its parent's.

    Returns:
        ``[B, M', H, D]`` children at noise level ``k``.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"branching: keep must lie in [0, 1], got {keep}")
    parents = parents.to(x0.device)
    m = x0.shape[1]
    children = x0[:, parents]
    if k < 0:
        return children
    z = torch.randn(children.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    counts = torch.bincount(parents, minlength=m).to(x0.dtype)  # [M]
    family_sum = torch.zeros_like(x0).index_add_(1, parents, z)
    family_mean = (family_sum / counts.clamp_min(1).view(1, -1, 1, 1))[:, parents]
    n_c = counts[parents].view(1, -1, 1, 1)
    scale = torch.where(n_c > 1, (n_c / (n_c - 1).clamp_min(1)).sqrt(), torch.ones_like(n_c))
    centred = torch.where(n_c > 1, (z - family_mean) * scale, z)
    ab = float(schedule.abar(k))
    if keep > 0:
        if x_k is None:
            raise ValueError("branching: keep > 0 needs the parents' samples x_k")
        eps_parent = (x_k - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        centred = keep * eps_parent[:, parents] + math.sqrt(1 - keep**2) * centred
    return math.sqrt(ab) * children + math.sqrt(1 - ab) * centred


def state_order(states: np.ndarray, rng: np.random.Generator, n_bins: int = 8) -> np.ndarray:
    """A hierarchical grouping of agents by their current states: ``[N]`` agent indices in rank order.

    Features are standardised and quantised to ``n_bins`` bins; agents are sorted lexicographically,
    the highest-variance feature first, ties broken at random. Contiguous rank blocks therefore hold
    agents with equal (quantised) states, and every coarser block is a union of finer ones.

    O(N) time and memory: a least-significant-first radix sort whose passes each sort one 16-bit key
    (the bins of a few features packed together) with NumPy's stable radix sort; features are read one
    column at a time from one transposed copy, never as a float64 copy of ``[N, S]``.

    Args:
        states: ``[N, S]`` current agent states.
        rng: generator for the random tie-break.
        n_bins: quantisation bins per feature.
    """
    states = np.asarray(states)
    if states.ndim != 2:
        raise ValueError(f"state_order: states must be [N, S], got shape {states.shape}")
    n = states.shape[0]
    # Tie-break: agent i ranks perm[i]-th, so start from the agents in ascending order of perm.
    perm = rng.permutation(n)
    order = np.empty(n, dtype=np.intp)
    order[perm] = np.arange(n)
    # [S, N]: one copy, then every pass reads contiguous memory; float states keep their precision
    ftype = states.dtype.type if states.dtype.kind == "f" else np.float64
    columns = np.ascontiguousarray(states.T, dtype=ftype)
    std = np.array([c.std(dtype=np.float64) for c in columns])
    key = np.zeros(n, dtype=np.uint16)
    radix = 1
    # Ascending variance: the least significant feature first, the highest-variance one last (primary).
    for j in np.argsort(std, kind="stable"):
        if std[j] <= 1e-12:
            continue
        col = columns[j]
        lo, hi = float(col.min()), float(col.max())
        z = col - ftype(lo)
        z *= ftype(n_bins / (hi - lo + 1e-12))
        bins = np.minimum(z, n_bins - 1, out=z).astype(np.uint8)
        used = np.zeros(n_bins, dtype=bool)
        used[bins] = True
        width = int(used.sum())
        if radix * width > 1 << 16:  # the packed key is full: sort by it, start the next one
            order = order[np.argsort(key[order], kind="stable")]
            key[:] = 0
            radix = 1
        key += ((np.cumsum(used) - 1) * radix).astype(np.uint16)[bins]  # bin -> rank among bins in use
        radix *= width
    if radix > 1:
        order = order[np.argsort(key[order], kind="stable")]
    return order


def representatives(order: np.ndarray, m: int) -> np.ndarray:
    """``[m]`` agent index standing for each of m particles: the agent at the middle rank of its block."""
    n = len(order)
    if not 1 <= m <= n:
        raise ValueError(f"representatives: need 1 <= M <= N, got M={m}, N={n}")
    return order[((2 * np.arange(m) + 1) * n) // (2 * m)]


def assign_blocks(order: np.ndarray, m: int) -> np.ndarray:
    """``[N]`` particle of each agent: the agent at rank r follows particle ``floor(r M / N)``.

    Every particle is followed by ``floor`` or ``ceil`` of ``N / M`` agents, so the agents' action
    histogram equals the particles' (exactly when M divides N); no i.i.d. draws.
    """
    n = len(order)
    if not 1 <= m <= n:
        raise ValueError(f"assign_blocks: need 1 <= M <= N, got M={m}, N={n}")
    out = np.empty(n, dtype=np.int64)
    out[order] = (np.arange(n) * m) // n
    return out
