"""mfdiffuser: offline reinforcement learning for populations of thousands of agents.

MF-Diffuser (a mean-field trajectory diffusion planner), the baselines, the mean-field benchmarks,
the offline datasets and the evaluation pipeline that compares them.
"""

from mfdiffuser.errors import MfdError

__version__ = "0.1.0"

__all__ = ["MfdError", "__version__"]
