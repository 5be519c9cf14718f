"""``madiff``: joint trajectory diffusion over all agents with full attention (MADiff, Zhu et al. 2024).

A centralized planner: the tokens are agents x steps and every block attends over all of them, so
agents coordinate directly, at a cost growing as (N H)^2 when planning for a population of N. The
segment is conditioned on the population's return rate with classifier-free guidance. Before acting,
the plan's memory and time are estimated from N; a plan beyond the configured budget raises
:class:`~mfdiffuser.errors.BudgetExceeded` (recorded by evaluation grids as skipped).
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
from mfdiffuser.errors import BudgetExceeded

__all__ = ["PLAN_OPTIONS", "BudgetExceeded", "Config", "build", "make_policy", "plan_budget"]


@dataclass
class Config(BudgetedDiffusionConfig):
    """Joint (full-attention) return-conditioned diffusion options.

    Budgeted by default: 4 GiB and 60 s per plan, the time estimated at 40 GFLOP/s. Measured on one
    thread of a 2-core AMD EPYC (AVX2) with the other core busy, a plan ran at 54-59 GFLOP/s
    effective (22.8 s at Ising N = 1,024, 21.4 s at crowd N = 1,000, 1.9 s at battle 256 per side),
    so the estimate errs about 1.4x on the slow side.
    """

    max_memory_gib: float | None = 4.0
    max_plan_seconds: float | None = 60.0
    assumed_gflops: float = 40.0


def build(config: Config, meta: Any, dataset: Any = None) -> ReturnDiffuser:
    """A joint diffuser; with a dataset, fits state and return statistics on sampled windows."""
    learner = ReturnDiffuser(config, dims_from_meta(meta), scope="joint", population_return=True)
    if dataset is not None:
        learner.fit_statistics(dataset)
    return learner


def make_policy(learner: ReturnDiffuser, config: Config, env: PopulationEnv, **options: Any) -> PlannerPolicy:
    """Plan jointly for all N agents of ``env`` (acting options as dd-independent) within the budget.

    Raises:
        BudgetExceeded: one plan for ``env.n_agents`` agents would exceed the memory or time budget.
    """
    policy = planner_policy(learner, config, env, **options)
    plan_budget(learner, cast(Config, policy.config), env.n_agents)
    return policy
