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

from mfdiffuser.algos.agentwise import (
    PerAgentLearner,
    TDConfig,
    conservative_gap,
    make_agentwise_policy,
    taken,
    td_target,
)
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import Dims, scalars, steps
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


class MFCQL(PerAgentLearner):
    """Conservative twin Q-learning over per-agent mean-field inputs (its policy head is unused)."""

    config: Config

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        self.q = TwinQNet(
            dims.state_size, dims.context_size, dims.n_actions, config.hidden, view_shape=dims.view_shape
        )
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.policy.requires_grad_(False)

    def loss(self, batch: TrajBatch) -> LossOutput:
        cfg = self.config
        st = steps(batch, self.dims.episode_length)
        with torch.no_grad():
            next_a = self.q.min_q(st.next_states, st.next_context).argmax(-1)  # double Q: online argmax
            next_q = taken(self.q_target.min_q(st.next_states, st.next_context), next_a)
            target = td_target(st, next_q, cfg.gamma, self.returns.std)
        q1, q2 = self.q(st.states, st.context)
        d1, d2 = taken(q1, st.actions), taken(q2, st.actions)
        td_loss = masked_mean((d1 - target).pow(2) + (d2 - target).pow(2), st.mask)
        gap = conservative_gap((q1, q2), (d1, d2), st.mask)
        metrics = scalars(td_loss=td_loss, cql_gap=gap, q_data=masked_mean(d1, st.mask))
        return LossOutput(td_loss + cfg.alpha * gap, metrics)

    def after_step(self) -> None:
        polyak_update(self.q_target, self.q, self.config.target_tau)

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Conservative Q-values ``[..., M, A]`` (minimum of the twin heads)."""
        return self.q.min_q(states, context)


def build(config: Config, meta: Any, dataset: Any = None) -> MFCQL:
    """An MF-CQL learner; with a dataset, fits the return scale on sampled windows."""
    return MFCQL.create(config, meta, dataset)


make_policy = make_agentwise_policy
