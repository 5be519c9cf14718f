"""``awbc``: per-agent advantage-weighted behaviour cloning (AWR-style, Peng et al. 2019, offline).

Each agent's action at a window's first step is weighted by ``min(exp(beta A), w_max)``
(self-normalised), with ``A = z - V(s_i, phi(mu_t), t/T)``: ``z`` the agent's Monte-Carlo return-to-go
standardised by the training windows' statistics (buffers), ``V`` an expectile regression of ``z``
trained alongside (expectile 0.5: the mean baseline; above 0.5: an optimistic, IQL-like value).
With ``signal=team``, ``z`` is the team's return-to-go (the population's mean), shared by the agents
of a segment, and ``V(s_i, ...)`` its expectation from the agent's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mfdiffuser.algos.agentwise import (
    PerAgentLearner,
    WeightedConfig,
    exp_weights,
    make_agentwise_policy,
    policy_loss,
    signal_return_values,
    signal_rtg,
)
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import Dims, scalars, steps
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.blocks import ValueNet, expectile_loss, masked_mean


@dataclass
class Config(WeightedConfig):
    """Advantage-weighted behaviour cloning options."""

    expectile: float = 0.5
    """Expectile of the value baseline V (0.5: mean return-to-go from the state)."""
    signal: str = "agent"
    """Return the advantage is taken of: agent (the agent's own return-to-go) or team (the team's)."""


class AWBC(PerAgentLearner):
    """A per-agent policy weighted by Monte-Carlo advantages over a learned value baseline."""

    config: Config

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        self.value = ValueNet(dims.state_size, dims.context_size, config.hidden, view_shape=dims.view_shape)

    def return_values(self, batch: TrajBatch) -> torch.Tensor:
        return signal_return_values(batch, self.config.signal)

    def target_returns(self, batch: TrajBatch) -> torch.Tensor:
        """``[B, M]`` the standardised return-to-go ``z`` the advantage ``z - V`` is taken of."""
        return self.returns(signal_rtg(batch, self.config.signal))

    def loss(self, batch: TrajBatch) -> LossOutput:
        st = steps(batch, self.dims.episode_length)
        mask = st.mask[:, 0]  # [B, M]
        z = self.target_returns(batch)  # [B, M]
        v = self.value(st.states[:, 0], st.context[:, 0])  # [B, M]
        v_loss = masked_mean(expectile_loss(z - v, self.config.expectile), mask)
        w, metrics = exp_weights(z - v.detach(), self.config.beta, self.config.w_max, mask)
        pi_loss = policy_loss(self.policy, st, w, first_step_only=True)
        return LossOutput(v_loss + pi_loss, scalars(value_loss=v_loss, weighted_nll=pi_loss) | metrics)


def build(config: Config, meta: Any, dataset: Any = None) -> AWBC:
    """An AWBC learner; with a dataset, fits the return-to-go standardisation on sampled windows."""
    return AWBC.create(config, meta, dataset)


make_policy = make_agentwise_policy
