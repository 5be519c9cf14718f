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

from mfdiffuser.algos.agentwise import (
    PerAgentLearner,
    WeightedConfig,
    exp_weights,
    make_agentwise_policy,
    policy_loss,
)
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import scalars, steps
from mfdiffuser.data.batch import TrajBatch


@dataclass
class Config(WeightedConfig):
    """Return-weighted behaviour cloning options."""

    weight_by: str = "segment"
    """segment (population return-to-go from the window's start) or episode (whole episode's return)."""


class RWBC(PerAgentLearner):
    """A shared per-agent policy fitted by return-weighted maximum likelihood."""

    config: Config

    def return_values(self, batch: TrajBatch) -> torch.Tensor:
        """``[B]`` the population return each segment is weighted by."""
        return batch.pop_rtg if self.config.weight_by == "segment" else batch.episode_return

    def loss(self, batch: TrajBatch) -> LossOutput:
        w, metrics = exp_weights(self.returns(self.return_values(batch)), self.config.beta, self.config.w_max)
        nll = policy_loss(self.policy, steps(batch, self.dims.episode_length), w[:, None, None])
        return LossOutput(nll, scalars(weighted_nll=nll) | metrics)


def build(config: Config, meta: Any, dataset: Any = None) -> RWBC:
    """An RWBC learner; with a dataset, fits the return standardisation on sampled windows."""
    return RWBC.create(config, meta, dataset)


make_policy = make_agentwise_policy
