"""The training batch every learner consumes: windows of H steps of M representative agents.

Shapes use the glossary letters: B batch, M agents in the subset, H window (planning horizon),
S per-agent state size, P summary size. ``states`` has H + 1 entries (s_t .. s_{t+H}); actions and
rewards have H (a_t .. a_{t+H-1}). Steps past an episode's end or of dead agents have ``mask`` false.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class TrajBatch:
    """A batch of population segments ``X = (x^1..x^M)`` with their conditioning."""

    states: torch.Tensor
    """``[B, M, H+1, S]`` float32: per-agent states s_t..s_{t+H}."""
    actions: torch.Tensor
    """``[B, M, H]`` int64: per-agent actions a_t..a_{t+H-1}."""
    rewards: torch.Tensor
    """``[B, M, H]`` float32: per-agent rewards r_t..r_{t+H-1}."""
    summaries: torch.Tensor
    """``[B, H+1, P]`` float32: phi(mu_t)..phi(mu_{t+H}) computed over all N agents."""
    rtg: torch.Tensor
    """``[B, M]`` float32: each agent's (discounted) return-to-go from t to the episode's end."""
    pop_rtg: torch.Tensor
    """``[B]`` float32: the population's mean (discounted) return-to-go from t (over all N agents)."""
    mask: torch.Tensor
    """``[B, M, H]`` bool: step is inside the episode and the agent is alive."""
    timestep: torch.Tensor
    """``[B]`` int64: t, the window's first step within its episode."""
    episode_return: torch.Tensor
    """``[B]`` float32: the whole episode's per-agent mean return (for episode-level weighting)."""
    expert: torch.Tensor | None = None
    """``[B]`` bool: the window's episode was played by the expert behaviour policy (None: unknown)."""
    pop_rewards: torch.Tensor | None = None
    """``[B, H]`` float32: the population's mean reward r_t..r_{t+H-1} over all N agents (0 past the
    episode's end); None where a batch was built without it."""
    next_mask: torch.Tensor | None = None
    """``[B, M]`` bool: the agent acts at step t+H (inside the episode and alive), so a value of
    s_{t+H} may be bootstrapped; False where it died or the episode ended by then. None where a
    batch was built without it (then only the episode's horizon T ends a bootstrap)."""

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])

    @property
    def n_agents(self) -> int:
        """M, the number of agents in each segment."""
        return int(self.states.shape[1])

    @property
    def horizon(self) -> int:
        """H, the number of actions in each segment."""
        return int(self.actions.shape[2])

    def to(self, device: str | torch.device) -> TrajBatch:
        moved: dict[str, torch.Tensor] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                moved[f.name] = value.to(device)
        return TrajBatch(**moved)
