"""The training sampler: windows of H steps of M random representative agents, as :class:`TrajBatch`.

A batch is B windows drawn uniformly over (episode, start step) pairs of the resident episodes, each
with a random subset of M of the K stored agents (M drawn from ``m_range`` per batch, the
subdivision of SPEC section 2, uniformly or log-uniformly; with ``agents_per_batch`` a batch of large
M holds fewer windows, so that B x M, and a training step's cost, stay bounded). Every gather is one
vectorized fancy-indexing call; returns-to-go are computed once per episode when it is loaded.
Memory is bounded: datasets larger than ``cache_bytes`` are sampled through a pool of resident chunk
blocks, one block swapped per batch (docs/datasets.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.data.dataset import OfflineDataset, join_views

DEFAULT_CACHE_BYTES = 512 << 20
"""Default memory budget of the sampler's episode pool (bytes)."""
M_DRAWS = ("uniform", "log")
"""How M is drawn from ``m_range``: uniformly, or log-uniformly (as many batches of 8-16 as of 512-1024)."""


def discounted_to_go(rewards: np.ndarray, gamma: float, axis: int = 1) -> np.ndarray:
    """Returns-to-go along ``axis`` with one extra trailing zero: ``[.., T, ..] -> [.., T+1, ..]``.

    ``out[t] = sum_{t' >= t} gamma^(t' - t) r[t']`` and ``out[T] = 0``, accumulated in float64.
    """
    r = np.asarray(rewards)
    axis = axis % r.ndim
    shape = list(r.shape)
    shape[axis] += 1
    out = np.zeros(shape, dtype=np.float64)
    body = [slice(None)] * r.ndim
    body[axis] = slice(0, r.shape[axis])
    if gamma == 1.0:
        out[tuple(body)] = np.flip(np.cumsum(np.flip(r, axis), axis=axis, dtype=np.float64), axis)
        return out
    o, rr = np.moveaxis(out, axis, 0), np.moveaxis(r, axis, 0)  # views: the loop writes into out
    for t in range(rr.shape[0] - 1, -1, -1):
        o[t] = rr[t] + gamma * o[t + 1]
    return out


class WindowSampler:
    """Sample :class:`TrajBatch` windows from an :class:`OfflineDataset`.

    Args:
        dataset: a loaded dataset.
        horizon: H, actions per window (states have H + 1 entries).
        batch_size: B.
        m_range: ``(m_min, m_max)``, inclusive range M is drawn from for each batch; values above
            the K stored agents are capped at K.
        gamma: discount of the returns-to-go (``rtg``, ``pop_rtg``).
        seed: seed of the sampler's generator.
        device: torch device of the returned tensors.
        cache_bytes: memory budget of the sampler's episode pool; a dataset that fits is held whole.
        refresh_every: batches between two block swaps when the dataset does not fit (default: one
            swap per batch for blocks up to 4 MiB, proportionally rarer for larger blocks).
        m_draw: ``uniform`` or ``log`` (log-uniform over the integers of ``m_range``).
        agents_per_batch: when set, a batch of M agents holds ``min(B, agents_per_batch // M)``
            windows (at least one).

    Windows start at a uniformly random step t of a resident episode (``0 <= t < length``) and may
    run past its end: such steps have ``mask`` false, zero actions and rewards, and states and
    summaries repeating the last ones. The pool is stored agent-major (``[C, K, T+1, S]``) so that
    an agent's window is contiguous in memory.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        horizon: int,
        batch_size: int,
        m_range: tuple[int, int] = (16, 64),
        gamma: float = 1.0,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        refresh_every: int | None = None,
        m_draw: str = "uniform",
        agents_per_batch: int | None = None,
    ) -> None:
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        m_min, m_max = (int(v) for v in m_range)
        if not 1 <= m_min <= m_max:
            raise ValueError(f"m_range must satisfy 1 <= m_min <= m_max, got {tuple(m_range)}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        if refresh_every is not None and (int(refresh_every) != refresh_every or refresh_every < 1):
            raise ValueError(f"refresh_every must be a positive integer, got {refresh_every!r}")
        if m_draw not in M_DRAWS:
            raise ValueError(f"m_draw must be one of {', '.join(M_DRAWS)}, got {m_draw!r}")
        apb = agents_per_batch
        if apb is not None and (int(apb) != apb or apb < 1):
            raise ValueError(f"agents_per_batch must be a positive integer, got {agents_per_batch!r}")
        from mfdiffuser.utils import resolve_device

        self.dataset = dataset
        self.meta = dataset.meta
        self.horizon = int(horizon)
        self.batch_size = int(batch_size)
        self.k = dataset.meta.stored_agents
        self.m_range = (min(m_min, self.k), min(m_max, self.k))
        self.gamma = float(gamma)
        self.m_draw = m_draw
        self.agents_per_batch = None if agents_per_batch is None else int(agents_per_batch)
        self.device = torch.device(resolve_device(str(device)))
        self.rng = np.random.default_rng(seed)

        meta = dataset.meta
        e, t = meta.n_episodes, meta.horizon
        self._pop_rtg = discounted_to_go(dataset.pop_reward, self.gamma, axis=1).astype(np.float32)
        self._pop_reward = np.asarray(dataset.pop_reward, dtype=np.float32)  # [E, T]
        self._episode_return = dataset.episode_returns.astype(np.float32)
        self._expert = np.asarray(dataset.quality_labels == "expert", dtype=bool)
        self._length_all = dataset.length.astype(np.int64)

        self.block_episodes = dataset.chunk_episodes
        self.n_blocks = -(-e // self.block_episodes)
        act_bytes = 1 if meta.n_actions <= 256 else 4
        self.episode_bytes = (
            (t + 1) * self.k * (meta.state_size * 4 + 1 + 4)  # states, alive, rtg
            + t * self.k * (act_bytes + 4)  # actions, rewards
            + (t + 1) * meta.summary_size * 4
        )
        block_bytes = self.episode_bytes * self.block_episodes
        fit_blocks = max(1, int(cache_bytes) // max(1, block_bytes))
        self.resident = fit_blocks >= self.n_blocks
        self.pool_blocks = min(fit_blocks, self.n_blocks)
        self.refresh_every = int(refresh_every or max(1, -(-block_bytes // (4 << 20))))
        self._batches = 0
        self._init_pool()

    # ------------------------------------------------------------------ the pool
    @property
    def pool_episodes(self) -> int:
        """Episodes held in memory at a time."""
        return int(self._slot_episode.shape[0])

    def _init_pool(self) -> None:
        meta, c = self.meta, self.pool_blocks * self.block_episodes
        t, k = meta.horizon, self.k
        first = self.dataset.read_block(0, min(meta.n_episodes, self.block_episodes), join=False)
        # image views stay bytes in the pool (a quarter of float32) and are decoded per batch
        view_size = int(getattr(meta, "view_size", 0))
        self._states = np.zeros((c, k, t + 1, meta.state_size - view_size), dtype=np.float32)
        self._views = np.zeros((c, k, t + 1, view_size), dtype=np.uint8) if view_size else None
        self._actions = np.zeros((c, k, t), dtype=first["actions"].dtype)
        self._rewards = np.zeros((c, k, t), dtype=np.float32)
        self._alive = np.zeros((c, k, t + 1), dtype=bool)
        self._rtg = np.zeros((c, k, t + 1), dtype=np.float32)
        self._summaries = np.zeros((c, t + 1, meta.summary_size), dtype=np.float32)
        self._slot_episode = np.full(c, -1, dtype=np.int64)
        self._slot_length = np.zeros(c, dtype=np.int64)
        self._block_in_slot = np.full(self.pool_blocks, -1, dtype=np.int64)
        self._is_resident = np.zeros(self.n_blocks, dtype=bool)
        self._next_victim = 0
        if self.resident:
            blocks = np.arange(self.n_blocks)
        else:
            blocks = self.rng.choice(self.n_blocks, self.pool_blocks, replace=False)
        for slot_block, b in enumerate(blocks):
            self._put(slot_block, int(b))

    def _put(self, slot_block: int, block: int) -> None:
        """Load dataset chunk block ``block`` into pool position ``slot_block`` (agent-major)."""
        be = self.block_episodes
        e0 = block * be
        e1 = min(self.meta.n_episodes, e0 + be)
        n = e1 - e0
        data = self.dataset.read_block(e0, e1, join=False)
        s0 = slot_block * be
        sl = slice(s0, s0 + n)
        self._states[sl] = data["states"].transpose(0, 2, 1, 3)
        if self._views is not None:
            self._views[sl] = data["views"].transpose(0, 2, 1, 3)
        self._actions[sl] = data["actions"].transpose(0, 2, 1)
        self._rewards[sl] = data["rewards"].transpose(0, 2, 1)
        self._alive[sl] = data["alive"].transpose(0, 2, 1)
        self._rtg[sl] = discounted_to_go(self._rewards[sl], self.gamma, axis=2)
        self._summaries[sl] = data["summaries"]
        self._slot_episode[s0 : s0 + be] = -1
        self._slot_length[s0 : s0 + be] = 0  # a short last block leaves empty slots (no valid starts)
        self._slot_episode[sl] = np.arange(e0, e1)
        self._slot_length[sl] = self._length_all[e0:e1]
        old = self._block_in_slot[slot_block]
        if old >= 0:
            self._is_resident[old] = False
        self._block_in_slot[slot_block] = block
        self._is_resident[block] = True

    def refresh(self, n_blocks: int = 1) -> None:
        """Swap ``n_blocks`` of the oldest pool blocks for random blocks not in the pool."""
        if self.resident:
            return
        for _ in range(n_blocks):
            candidates = np.flatnonzero(~self._is_resident)
            block = int(candidates[self.rng.integers(candidates.size)])
            self._put(self._next_victim, block)
            self._next_victim = (self._next_victim + 1) % self.pool_blocks

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to draw the same batches: generator and pool contents.

        Plain Python values only (a checkpoint loads with ``weights_only=True``): the generator's
        state, the dataset block in each pool position, the next position to swap and the number
        of batches drawn (which decides when the next swap comes).
        """
        return {
            "rng": self.rng.bit_generator.state,
            "blocks": [int(b) for b in self._block_in_slot],
            "next_victim": int(self._next_victim),
            "batches": int(self._batches),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: reload the pool's blocks where they were, then the generator.

        Raises:
            ValueError: the state is not one of this dataset and pool size.
        """
        blocks = [int(b) for b in state["blocks"]]
        if len(blocks) != self.pool_blocks or not all(0 <= b < self.n_blocks for b in blocks):
            raise ValueError(
                f"sampler state of {len(blocks)} pool blocks does not fit this pool "
                f"({self.pool_blocks} of {self.n_blocks} blocks)"
            )
        for slot_block, block in enumerate(blocks):
            if self._block_in_slot[slot_block] != block:
                self._put(slot_block, block)
        self._is_resident[:] = False  # _put unmarks a block it moved away from, even if it moved in
        self._is_resident[self._block_in_slot] = True
        self._next_victim = int(state["next_victim"]) % self.pool_blocks
        self._batches = int(state["batches"])
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ sampling
    def _choose_agents(self, b: int, m: int) -> np.ndarray:
        """``[B, M]`` distinct agent positions among the K stored, a uniformly random subset per row."""
        k = self.k
        if m == k:
            return self.rng.permuted(np.broadcast_to(np.arange(k), (b, k)), axis=1)
        if 4 * m <= k:
            # Floyd's algorithm vectorized over rows: M steps of O(B), cheaper than O(B K) random keys.
            # All M x B draws in one call: the generator yields the same numbers as one call per step.
            js = np.arange(k - m, k)
            draws = self.rng.integers(0, js[:, None] + 1, size=(m, b))  # [M, B]
            out = np.empty((m, b), dtype=np.int64)
            taken = np.zeros(b * k, dtype=bool)  # flat [B, K]
            row_start = np.arange(b) * k
            for i, j in enumerate(js):
                pick = np.where(taken[row_start + draws[i]], j, draws[i])
                taken[row_start + pick] = True
                out[i] = pick
            return out.T
        keys = self.rng.random((b, k), dtype=np.float32)
        return np.argpartition(keys, m - 1, axis=1)[:, :m]

    def draw_m(self) -> int:
        """One M from ``m_range``: uniform, or log-uniform (``floor(exp(U(log lo, log(hi + 1))))``)."""
        lo, hi = self.m_range
        if self.m_draw == "uniform":
            return int(self.rng.integers(lo, hi + 1))
        return min(hi, int(np.exp(self.rng.uniform(np.log(lo), np.log(hi + 1)))))

    def rows(self, m: int) -> int:
        """B, the windows in a batch of M agents: ``batch_size``, fewer when ``agents_per_batch`` binds."""
        if self.agents_per_batch is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.agents_per_batch // m))

    def sample(self, m: int | None = None) -> TrajBatch:
        """One batch; ``m`` fixes M (at most K), otherwise M is drawn from ``m_range``."""
        if m is None:
            m = self.draw_m()
        elif int(m) != m or not 1 <= m <= self.k:
            raise ValueError(f"m must be an integer in [1, K={self.k}], got {m!r}")
        m = int(m)
        if self._batches and self._batches % self.refresh_every == 0:
            self.refresh()
        self._batches += 1
        b, h, t_max = self.rows(m), self.horizon, self.meta.horizon
        lens = self._slot_length
        cum = np.cumsum(lens)
        u = self.rng.integers(0, cum[-1], size=b)
        slot = np.searchsorted(cum, u, side="right")
        slot_len = lens[slot]
        t0 = u - (cum[slot] - slot_len)
        agents = self._choose_agents(b, m)  # [B, M]

        tt = t0[:, None] + np.arange(h + 1)  # [B, H+1]
        ts = np.minimum(tt, slot_len[:, None])  # state index: the last state repeats past the end
        ta = np.minimum(tt[:, :h], t_max - 1)  # [B, H]
        valid = tt[:, :h] < slot_len[:, None]
        # Flat indices into the agent-major pool ([C, K, T+1, ...] and [C, K, T]): one take per array.
        lane = slot[:, None] * self.k + agents  # [B, M] rows of the [C * K] agent lanes
        flat_s = lane[:, :, None] * (t_max + 1) + ts[:, None, :]  # [B, M, H+1]
        flat_alive = lane[:, :, None] * (t_max + 1) + ta[:, None, :]  # [B, M, H]
        flat_a = lane[:, :, None] * t_max + ta[:, None, :]  # [B, M, H]
        states = np.take(self._states.reshape(-1, self._states.shape[-1]), flat_s, axis=0)  # [B, M, H+1, S]
        if self._views is not None:  # decoded for this batch only
            views = np.take(self._views.reshape(-1, self._views.shape[-1]), flat_s, axis=0)
            states = join_views(states, views)
        mask = valid[:, None, :] & np.take(self._alive.reshape(-1), flat_alive)
        # the step after the window: inside the episode and the agent alive at state t+H
        acts_next = (tt[:, h] < slot_len)[:, None] & np.take(self._alive.reshape(-1), flat_s[:, :, h])
        actions = np.where(mask, np.take(self._actions.reshape(-1), flat_a), 0).astype(np.int64)
        rewards = np.where(mask, np.take(self._rewards.reshape(-1), flat_a), 0.0).astype(np.float32)
        row_s = slot[:, None] * (t_max + 1) + ts  # [B, H+1] rows of [C * (T+1)]
        summaries = np.take(self._summaries.reshape(-1, self.meta.summary_size), row_s, axis=0)  # [B, H+1, P]
        rtg = np.take(self._rtg.reshape(-1), lane * (t_max + 1) + t0[:, None])  # [B, M]
        episode = self._slot_episode[slot]
        pop_rtg = self._pop_rtg[episode, t0]
        pop_rewards = np.where(valid, self._pop_reward[episode[:, None], ta], 0.0)  # [B, H]
        dev = self.device

        def tt_(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev)

        return TrajBatch(
            states=tt_(states),
            actions=tt_(actions),
            rewards=tt_(rewards),
            summaries=tt_(summaries),
            rtg=tt_(rtg),
            pop_rtg=tt_(pop_rtg),
            mask=tt_(mask),
            timestep=tt_(t0.astype(np.int64)),
            episode_return=tt_(self._episode_return[episode]),
            expert=tt_(self._expert[episode]),
            pop_rewards=tt_(pop_rewards.astype(np.float32)),
            next_mask=tt_(acts_next),
        )

    def __iter__(self) -> Iterator[TrajBatch]:
        while True:
            yield self.sample()

    def prefetch(self, depth: int = 2) -> Iterator[TrajBatch]:
        """Endless batches made ``depth`` ahead by a background thread (same batches, same order).

        NumPy's gathers and HDF5 reads release the GIL, so sampling overlaps the training step.
        Do not call :meth:`sample` while the iterator is alive (they share the generator).
        """
        import queue
        import threading

        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        q: queue.Queue = queue.Queue(maxsize=int(depth))
        stop = threading.Event()

        def produce() -> None:
            while not stop.is_set():
                try:
                    item: object = self.sample()
                except BaseException as exc:  # handed to the consumer, which re-raises it
                    item = exc
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, BaseException):
                    return

        worker = threading.Thread(target=produce, name="WindowSampler.prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def __repr__(self) -> str:
        return (
            f"WindowSampler(H={self.horizon}, B={self.batch_size}, m_range={self.m_range}, "
            f"m_draw={self.m_draw}, agents_per_batch={self.agents_per_batch}, "
            f"gamma={self.gamma}, pool={self.pool_episodes}/{self.meta.n_episodes} episodes)"
        )
