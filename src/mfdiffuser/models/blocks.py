"""Basic blocks used by every learner: MLPs, the per-agent (state, phi(mu)) encoder, the expectile value.

The expectile value ``V_psi(s, phi(mu))`` (IQL, Kostrikov et al. 2022) is shared by MF-Diffuser's
value weighting and the ``mf-iql`` baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from mfdiffuser.models.view import ObsEncoder


class MLP(nn.Sequential):
    """``Linear -> act`` repeated, then a final ``Linear`` to ``out_dim``."""

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, n_layers: int = 2, act: type[nn.Module] = nn.Mish
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), act()]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


class AgentEncoder(nn.Module):
    """Embed each agent's own state together with the population summary: ``[..., S] x [..., P] -> [..., E]``.

    The summary is broadcast over the agent axis, so the input is ``(s_i, phi(mu))`` for every agent i,
    the input of a mean-field policy or value (Yang et al. 2018).
    """

    def __init__(
        self,
        state_size: int,
        summary_size: int,
        hidden: int,
        out_dim: int | None = None,
        view_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.obs = ObsEncoder(state_size, view_shape)  # the identity unless observations end in a view
        self.net = MLP(self.obs.out_size + summary_size, hidden, out_dim or hidden, n_layers=2)

    def forward(self, states: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """``states [..., M, S]`` and ``summary [..., P]`` (broadcast over M) -> ``[..., M, E]``."""
        states = self.obs(states)
        summary = summary.unsqueeze(-2).expand(*states.shape[:-1], summary.shape[-1])
        return self.net(torch.cat([states, summary], dim=-1))


class ValueNet(nn.Module):
    """``V(s, phi(mu), t/T)``: a per-agent value of the mean-field state, trained by expectile regression."""

    def __init__(
        self,
        state_size: int,
        summary_size: int,
        hidden: int = 128,
        view_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.encoder = AgentEncoder(state_size, summary_size, hidden, view_shape=view_shape)
        self.head = nn.Sequential(nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """``[..., M, S]``, ``[..., P]`` -> ``[..., M]``."""
        return self.head(self.encoder(states, summary)).squeeze(-1)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise asymmetric squared loss ``|tau - 1(diff < 0)| diff^2``, ``diff = target - pred``."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.pow(2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is true (all entries when ``mask`` is None)."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)
