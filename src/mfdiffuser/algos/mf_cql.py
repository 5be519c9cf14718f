"""``mf-cql``: offline mean-field Q-learning with a conservative penalty (discrete CQL, Kumar et al. 2020).

``Q(s_i, a, c)`` with ``c = [phi(mu_t), t/T]`` in the spirit of MF-Q (Yang et al. 2018): twin heads,
double-Q targets from a Polyak target network, terminal transitions not bootstrapped, plus
``alpha (logsumexp_a Q(s, a) - Q(s, a_data))``. Rewards are divided by the standard deviation of the
data's returns-to-go (a buffer). Acts greedily or by a Boltzmann policy ``softmax(Q / temperature)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import (
    Dims,
    Standardizer,
    TDConfig,
    dims_from_meta,
    make_agentwise_policy,
    sampled_values,
    scalars,
    steps,
    taken,
    td_target,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.blocks import masked_mean
from mfdiffuser.models.policy import TwinQNet, polyak_update


@dataclass
class Config(TDConfig):
    """Mean-field CQL options."""

    alpha: float = 1.0
    """Weight of the conservative penalty logsumexp Q - Q(data)."""
    temperature: float = 0.3
    """Boltzmann temperature of acting, in units of the data's return-to-go standard deviation."""


class MFCQL(nn.Module):
    """Conservative twin Q-learning over per-agent mean-field inputs."""

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.q = TwinQNet(dims.state_size, dims.context_size, dims.n_actions, config.hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.returns = Standardizer()

    def loss(self, batch: TrajBatch) -> LossOutput:
        cfg = self.config
        st = steps(batch, self.dims.episode_length)
        with torch.no_grad():
            next_a = self.q.min_q(st.next_states, st.next_context).argmax(-1)  # double Q: online argmax
            next_q = taken(self.q_target.min_q(st.next_states, st.next_context), next_a)
            target = td_target(st, next_q, cfg.gamma, self.returns.std)
        q1, q2 = self.q(st.states, st.context)
        d1, d2 = taken(q1, st.actions), taken(q2, st.actions)
        td = (d1 - target).pow(2) + (d2 - target).pow(2)
        gap = (torch.logsumexp(q1, -1) - d1) + (torch.logsumexp(q2, -1) - d2)
        td_loss, cql_loss = masked_mean(td, st.mask), masked_mean(gap, st.mask)
        metrics = scalars(td_loss=td_loss, cql_gap=cql_loss, q_data=masked_mean(d1, st.mask))
        return LossOutput(td_loss + cfg.alpha * cql_loss, metrics)

    def after_step(self) -> None:
        polyak_update(self.q_target, self.q, self.config.target_tau)

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Conservative Q-values ``[..., M, A]`` (minimum of the twin heads)."""
        return self.q.min_q(states, context)


def build(config: Config, meta: Any, dataset: Any = None) -> MFCQL:
    """An MF-CQL learner; with a dataset, fits the return scale on sampled windows."""
    learner = MFCQL(config, dims_from_meta(meta))
    if dataset is not None:
        learner.returns.fit(sampled_values(dataset, config, lambda b: b.rtg[b.mask[:, :, 0]]))
    return learner


make_policy = make_agentwise_policy
