"""``dd-independent``: Decision Diffuser (Ajay et al. 2023) applied agent by agent, no interaction.

Each agent's segment of states and action channels is denoised on its own (attention over its H steps
only), conditioned on its own return rate with classifier-free guidance, its current state and the
context ``[phi(mu_t), t/T]``. Acting plans every agent independently, batched over N, so a plan's
cost grows linearly in N; like ``madiff`` it can be given a budget per plan (none by default), beyond
which a population is skipped with :class:`~mfdiffuser.errors.BudgetExceeded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from mfdiffuser.algos.common import dims_from_meta
from mfdiffuser.algos.return_diffusion import (
    PLAN_OPTIONS,
    BudgetedDiffusionConfig,
    PlannerPolicy,
    ReturnDiffuser,
    plan_budget,
    planner_policy,
)
from mfdiffuser.envs.base import PopulationEnv

__all__ = ["PLAN_OPTIONS", "Config", "build", "make_policy", "plan_budget"]


@dataclass
class Config(BudgetedDiffusionConfig):
    """Independent per-agent return-conditioned diffusion options.

    ``assumed_gflops`` 40: its plans are batched matmuls, measured at about 44 GFLOP/s on one core.
    """


def build(config: Config, meta: Any, dataset: Any = None) -> ReturnDiffuser:
    """A per-agent diffuser; with a dataset, fits state and return statistics on sampled windows."""
    learner = ReturnDiffuser(config, dims_from_meta(meta), scope="time", population_return=False)
    if dataset is not None:
        learner.fit_statistics(dataset)
    return learner


def make_policy(learner: ReturnDiffuser, config: Config, env: PopulationEnv, **options: Any) -> PlannerPolicy:
    """Plan for every agent of ``env`` independently; options: replan_every, sample_steps, eta, guidance.

    Raises:
        BudgetExceeded: one plan for ``env.n_agents`` agents would exceed the configured budget.
    """
    policy = planner_policy(learner, config, env, **options)
    plan_budget(learner, cast(Config, policy.config), env.n_agents)
    return policy
