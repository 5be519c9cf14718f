"""Per-agent heads on (own state, population context): action logits and twin Q-values.

Every head sees agent i through :class:`~mfdiffuser.models.blocks.AgentEncoder` on ``(s_i, c)``, where
``c`` is the mean-field context ``[phi(mu_t), t/T]`` shared by the population (Yang et al. 2018).
"""

from __future__ import annotations

import torch
from torch import nn

from mfdiffuser.models.blocks import AgentEncoder


class PolicyNet(nn.Module):
    """``pi(a | s_i, c)``: action logits of every agent, ``[..., M, S] x [..., C] -> [..., M, A]``."""

    def __init__(
        self,
        state_size: int,
        context_size: int,
        n_actions: int,
        hidden: int = 128,
        view_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = AgentEncoder(state_size, context_size, hidden, view_shape=view_shape)
        self.head = nn.Sequential(nn.Mish(), nn.Linear(hidden, n_actions))

    def forward(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(states, context))


class TwinQNet(nn.Module):
    """Two independent ``Q(s_i, a, c)`` heads, each ``[..., M, S] x [..., C] -> [..., M, A]``."""

    def __init__(
        self,
        state_size: int,
        context_size: int,
        n_actions: int,
        hidden: int = 128,
        view_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.q1 = PolicyNet(state_size, context_size, n_actions, hidden, view_shape)
        self.q2 = PolicyNet(state_size, context_size, n_actions, hidden, view_shape)

    def forward(self, states: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(states, context), self.q2(states, context)

    def min_q(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum of the two heads, ``[..., M, A]``."""
        q1, q2 = self(states, context)
        return torch.minimum(q1, q2)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` for every parameter (soft target-network update).

    One fused ``lerp`` over all parameters (the same arithmetic as one ``lerp_`` per parameter).
    """
    targets: list[torch.Tensor] = list(target.parameters())
    sources: list[torch.Tensor] = list(source.parameters())
    if len(targets) != len(sources):
        raise ValueError(f"polyak update: {len(targets)} target parameters for {len(sources)} source ones")
    if targets:
        torch._foreach_lerp_(targets, sources, tau)
