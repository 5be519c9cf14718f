"""``bc``: behaviour cloning of a per-agent mean-field policy ``pi(a | s_i, phi(mu_t), t/T)``.

One network shared by all agents, trained by cross-entropy on every (agent, step) of the data; acts for
any N by sampling each agent's action from its own softmax (a stage game needs the mixed strategy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mfdiffuser.algos.agentwise import AgentConfig, PerAgentLearner, make_agentwise_policy, policy_loss
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import scalars, steps
from mfdiffuser.data.batch import TrajBatch


@dataclass
class Config(AgentConfig):
    """Behaviour cloning options (all shared by the per-agent baselines)."""


class BC(PerAgentLearner):
    """A shared per-agent policy fitted by maximum likelihood."""

    def loss(self, batch: TrajBatch) -> LossOutput:
        nll = policy_loss(self.policy, steps(batch, self.dims.episode_length))
        return LossOutput(nll, scalars(nll=nll))


def build(config: Config, meta: Any, dataset: Any = None) -> BC:
    """A BC learner for the sizes in ``meta``."""
    return BC.create(config, meta, dataset)


make_policy = make_agentwise_policy
