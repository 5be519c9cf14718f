"""Shared helper of the MF-Diffuser tests: a random training batch drawn in a fixed order."""

from __future__ import annotations

import torch

from mfdiffuser.data.batch import TrajBatch


def random_batch(
    size: int,
    n_actions: int,
    summary: int,
    episode_len: int,
    *,
    b: int,
    m: int,
    h: int,
    seed: int,
    view_from: int | None = None,
) -> TrajBatch:
    """``b`` windows of ``m`` agents and ``h`` steps with random states, actions, rewards and returns.

    With ``view_from`` the state fields from that index on (an image view) are redrawn in [0, 1]. The
    draws come in a fixed order from one generator seeded with ``seed``, so tests may pin values.
    """
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, m, h + 1, size, generator=g)
    if view_from is not None:
        states[..., view_from:] = torch.rand(b, m, h + 1, size - view_from, generator=g)
    return TrajBatch(
        states=states,
        actions=torch.randint(0, n_actions, (b, m, h), generator=g),
        rewards=torch.rand(b, m, h, generator=g),
        summaries=torch.rand(b, h + 1, summary, generator=g),
        rtg=torch.rand(b, m, generator=g) * 5,
        pop_rtg=torch.rand(b, generator=g) * 5,
        mask=torch.ones(b, m, h, dtype=torch.bool),
        timestep=torch.randint(0, episode_len - h, (b,), generator=g),
        episode_return=torch.rand(b, generator=g),
    )
