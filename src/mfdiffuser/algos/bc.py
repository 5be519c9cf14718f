"""``bc``: behaviour cloning of a per-agent mean-field policy ``pi(a | s_i, phi(mu_t), t/T)``.

One network shared by all agents, trained by cross-entropy on every (agent, step) of the data; acts for
any N by sampling each agent's action from its own softmax (a stage game needs the mixed strategy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import (
    AgentConfig,
    Dims,
    dims_from_meta,
    make_agentwise_policy,
    policy_loss,
    scalars,
    steps,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.policy import PolicyNet


@dataclass
class Config(AgentConfig):
    """Behaviour cloning options (all shared by the per-agent baselines)."""


class BC(nn.Module):
    """A shared per-agent policy fitted by maximum likelihood."""

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.policy = PolicyNet(dims.state_size, dims.context_size, dims.n_actions, config.hidden)

    def loss(self, batch: TrajBatch) -> LossOutput:
        nll = policy_loss(self.policy, steps(batch, self.dims.episode_length))
        return LossOutput(nll, scalars(nll=nll))

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Action logits ``[..., M, A]``."""
        return self.policy(states, context)


def build(config: Config, meta: Any, dataset: Any = None) -> BC:
    """A BC learner for the sizes in ``meta`` (nothing is computed from the data)."""
    return BC(config, dims_from_meta(meta))


make_policy = make_agentwise_policy
