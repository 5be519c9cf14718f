"""``rwbc``: return-weighted behaviour cloning at the population level.

Every population segment's actions are weighted by ``min(exp(beta z), w_max)`` (self-normalised),
where ``z`` is the segment's population return-to-go (or its episode's return) standardised by the
mean and standard deviation of the training windows (registered buffers, so a loaded run keeps them).
``beta = 0`` is plain behaviour cloning.
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
from mfdiffuser.models.policy import PolicyNet


@dataclass
class Config(AgentConfig):
    """Return-weighted behaviour cloning options."""

    beta: float = 2.0
    """Inverse temperature on the standardised population return (0: plain BC)."""
    w_max: float = 20.0
    """Upper clip of the unnormalised weights."""
    weight_by: str = "segment"
    """segment (population return-to-go from the window's start) or episode (whole episode's return)."""


def population_return(batch: TrajBatch, weight_by: str) -> torch.Tensor:
    """``[B]`` the return a segment is weighted by."""
    return batch.pop_rtg if weight_by == "segment" else batch.episode_return


class RWBC(nn.Module):
    """A shared per-agent policy fitted by return-weighted maximum likelihood."""

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.policy = PolicyNet(dims.state_size, dims.context_size, dims.n_actions, config.hidden)
        self.returns = Standardizer()

    def loss(self, batch: TrajBatch) -> LossOutput:
        z = self.returns(population_return(batch, self.config.weight_by))  # [B]
        w, metrics = exp_weights(z, self.config.beta, self.config.w_max)
        nll = policy_loss(self.policy, steps(batch, self.dims.episode_length), w[:, None, None])
        return LossOutput(nll, scalars(weighted_nll=nll) | metrics)

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Action logits ``[..., M, A]``."""
        return self.policy(states, context)


def build(config: Config, meta: Any, dataset: Any = None) -> RWBC:
    """An RWBC learner; with a dataset, fits the return standardisation on sampled windows."""
    learner = RWBC(config, dims_from_meta(meta))
    if dataset is not None:
        learner.returns.fit(sampled_values(dataset, config, lambda b: population_return(b, config.weight_by)))
    return learner


make_policy = make_agentwise_policy
