"""Diffusion with no trainable parameters: noise schedules, DDPM/DDIM steps, coarse-to-fine levels."""

from mfdiffuser.diffusion.hierarchy import (
    LevelSchedule,
    assign_blocks,
    branch,
    parent_index,
    representatives,
    state_order,
)
from mfdiffuser.diffusion.schedule import SCHEDULES, NoiseSchedule, StepOutput

__all__ = [
    "SCHEDULES",
    "LevelSchedule",
    "NoiseSchedule",
    "StepOutput",
    "assign_blocks",
    "branch",
    "parent_index",
    "representatives",
    "state_order",
]
