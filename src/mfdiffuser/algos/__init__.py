"""Learners: MF-Diffuser and the baselines, each one readable file, sharing ``trainer.fit``.

Every algorithm module defines ``Config`` (a dataclass, one docstring per field), ``build(config,
meta) -> Learner`` (the torch module with ``loss``) and ``make_policy(learner, env, config, **kw)``
(a :class:`~mfdiffuser.envs.base.PopulationPolicy` for any N). :data:`ALGOS` maps names to modules,
imported lazily.
"""

from mfdiffuser.algos.base import ALGOS, algo_module, list_algos

__all__ = ["ALGOS", "algo_module", "list_algos"]
