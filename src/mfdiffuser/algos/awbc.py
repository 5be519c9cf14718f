"""``awbc``: per-agent advantage-weighted behaviour cloning (AWR-style, Peng et al. 2019, offline).

Each agent's action at a window's first step is weighted by ``min(exp(beta A), w_max)``
(self-normalised), with ``A = z - V(s_i, phi(mu_t), t/T)``: ``z`` the agent's Monte-Carlo return-to-go
standardised by the training windows' statistics (buffers), ``V`` an expectile regression of ``z``
trained alongside (expectile 0.5: the mean baseline; above 0.5: an optimistic, IQL-like value).
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
    Standardizer,
    dims_from_meta,
    exp_weights,
    make_agentwise_policy,
    policy_loss,
    sampled_values,
    scalars,
    steps,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.blocks import ValueNet, expectile_loss, masked_mean
from mfdiffuser.models.policy import PolicyNet


@dataclass
class Config(AgentConfig):
    """Advantage-weighted behaviour cloning options."""

    beta: float = 2.0
    """Inverse temperature on the advantage, in units of the return's standard deviation (0: BC)."""
    w_max: float = 20.0
    """Upper clip of the unnormalised weights."""
    expectile: float = 0.5
    """Expectile of the value baseline V (0.5: mean return-to-go from the state)."""


class AWBC(nn.Module):
    """A per-agent policy weighted by Monte-Carlo advantages over a learned value baseline."""

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.policy = PolicyNet(dims.state_size, dims.context_size, dims.n_actions, config.hidden)
        self.value = ValueNet(dims.state_size, dims.context_size, config.hidden)
        self.returns = Standardizer()

    def loss(self, batch: TrajBatch) -> LossOutput:
        st = steps(batch, self.dims.episode_length)
        mask = st.mask[:, 0]  # [B, M]
        z = self.returns(batch.rtg)  # [B, M]
        v = self.value(st.states[:, 0], st.context[:, 0])  # [B, M]
        v_loss = masked_mean(expectile_loss(z - v, self.config.expectile), mask)
        w, metrics = exp_weights(z - v.detach(), self.config.beta, self.config.w_max, mask)
        pi_loss = policy_loss(self.policy, st, w, first_step_only=True)
        return LossOutput(v_loss + pi_loss, scalars(value_loss=v_loss, weighted_nll=pi_loss) | metrics)

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Action logits ``[..., M, A]``."""
        return self.policy(states, context)


def build(config: Config, meta: Any, dataset: Any = None) -> AWBC:
    """An AWBC learner; with a dataset, fits the return-to-go standardisation on sampled windows."""
    learner = AWBC(config, dims_from_meta(meta))
    if dataset is not None:
        learner.returns.fit(sampled_values(dataset, config, lambda b: b.rtg[b.mask[:, :, 0]]))
    return learner


make_policy = make_agentwise_policy
