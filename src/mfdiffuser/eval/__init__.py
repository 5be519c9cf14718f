"""Evaluation: vectorized rollouts at several N, metrics, statistics over seeds, exploitability."""

from mfdiffuser.eval.evaluate import evaluate_policy, references
from mfdiffuser.eval.exploitability import exploitability
from mfdiffuser.eval.metrics import normalized_score, summarize
from mfdiffuser.eval.rollout import rollout
from mfdiffuser.eval.stats import MeanCI, mean_ci, t_quantile

__all__ = [
    "MeanCI",
    "evaluate_policy",
    "exploitability",
    "mean_ci",
    "normalized_score",
    "references",
    "rollout",
    "summarize",
    "t_quantile",
]
