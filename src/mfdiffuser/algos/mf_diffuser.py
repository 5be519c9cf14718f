"""MF-Diffuser: value-weighted mean-field trajectory diffusion with a coarse-to-fine receding-horizon planner.

Training minimises the value-weighted chaotic entropy surrogate of SPEC section 2,
``E[w(X) (1/M) sum_i ||eps^i - eps_theta(X_k, k, c)^i||^2]`` on random M-agent subsets, with
``w = clip(exp(beta (V - b) / sd), w_max)`` self-normalised over the batch and ``V`` from a jointly
trained expectile value (or Monte-Carlo returns). Acting samples plans for representatives of the N
agents by coarse-to-fine denoising (:func:`sample_plan`) and lifts them to every agent by block assignment.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mfdiffuser.algos.base import LossOutput, ParamGroup
from mfdiffuser.algos.critics import (
    CRITICS,
    check_search_options,
    make_critic,
    resolve_critic,
    select_candidate,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.diffusion import (
    SCHEDULES,
    LevelSchedule,
    NoiseSchedule,
    assign_blocks,
    branch,
    parent_index,
    representatives,
    state_order,
)
from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.errors import MfdError, first_line
from mfdiffuser.models.action_head import ActionHead
from mfdiffuser.models.blocks import ValueNet, expectile_loss
from mfdiffuser.models.critics import channel_probs
from mfdiffuser.models.denoiser import MeanFieldDenoiser
from mfdiffuser.models.policy import polyak_update

VALUE_SOURCES = ("learned", "mc")
WEIGHTINGS = ("segment", "agent", "episode")
MODES = ("representatives", "population")
DECODERS = ("categorical", "argmax", "head")
M_DRAWS = ("uniform", "log")
SELECTS = ("best", "softmax")
HEAD_INPUTS = ("data", "denoised", "both")
SCORE_ACTIONS = ("channels", "decoded")


@dataclass
class Config:
    """Options of MF-Diffuser (training and the defaults of its planner)."""

    horizon: int = 4
    """H, steps per planned segment (and per training window)."""
    m_range: tuple[int, int] = (8, 64)
    """Range M is drawn from for each training batch (subdivision: random M-agent subsets)."""
    hidden: int = 96
    """Channel width of the denoiser."""
    n_blocks: int = 3
    """Number of (temporal, mean-field interaction) block pairs."""
    interaction: bool = True
    """Use the mean-field interaction blocks (False: independent agents, an ablation)."""
    diffusion_steps: int = 20
    """K, diffusion steps of the noise schedule."""
    schedule: str = "cosine"
    """Noise schedule: cosine or linear."""
    beta: float = 1.0
    """Inverse temperature of the value weights on the standardised value (0: plain diffusion)."""
    w_max: float = 20.0
    """Clip of the value weights before self-normalisation."""
    value_source: str = "learned"
    """Value of a segment: learned (expectile V_psi, n-step advantage) or mc (Monte-Carlo return-to-go)."""
    weighting: str = "segment"
    """One weight per population segment (shared rewards), per agent (local rewards), or per episode
    (the segment's episode's own mean return, centred over the batch; value_source is not used)."""
    expectile: float = 0.7
    """Expectile tau of the value regression (0.5 = mean)."""
    value_hidden: int = 128
    """Width of the value network."""
    value_coef: float = 1.0
    """Weight of the value regression loss in the summed loss."""
    std_momentum: float = 0.99
    """Momentum of the running estimate of the value's standard deviation (the weights' scale)."""
    stats_batches: int = 16
    """Batches drawn at build time to estimate state/summary normalisation and the action histogram."""
    levels: tuple[int, ...] = (128, 256, 1024)
    """Coarse-to-fine particle counts M_0 < ... < M_L of the planner (M_0 >= 128 keeps plans coherent)."""
    steps_per_level: tuple[int, ...] = (12, 4, 4)
    """Denoising steps at each level (sum at most K); 12/4/4 costs 0.33x of one level of 1,000 particles."""
    branch_keep: float = 0.0
    """Correlation of a child's noise with its parent's at a branch (0: fresh noise, 1: copy the parent)."""
    mode: str = "representatives"
    """Planner mode: representatives (final level M_L, plan cost flat in N) or population (final level N)."""
    population_cap: int = 4096
    """Largest final level of the population mode."""
    replan_every: int = 1
    """Environment steps between plans (at most H); every step, as plans go stale fast (docs/design.md)."""
    eta: float = 1.0
    """DDIM eta of the planner (0 deterministic, 1 ancestral)."""
    sample_steps: int | None = None
    """Denoising steps of a plan, spread evenly over the K training steps (a DDIM stride) and shared
    among the levels in proportion to steps_per_level; None: the sum of steps_per_level."""
    distilled_grid: tuple[int, ...] = ()
    """Diffusion step indices a distilled denoiser was trained to step through, descending (written by
    ``mfd distill``); empty: a denoiser trained on every step, which plans on any DDIM stride. A
    distilled model plans with exactly these steps (steps_per_level sums to their number)."""
    compile: bool = False
    """Plan with the denoiser compiled by ``torch.compile`` (once per particle count; the first plan at
    each level pays the compilation, tens of seconds on a CPU). A failed compilation is an error."""
    action_decode: str = "categorical"
    """Decoding of a plan's actions: categorical (sample from the clipped one-hot channels), argmax (of
    the channels) or head (sample from the action head on the planned states: inverse dynamics
    p(a | s_h, s_h+1, c), and a policy head p(a | s, c) for the last planned step)."""
    snap_states: bool = False
    """With action_decode=head: project each planned state to the nearest (normalised) state the env
    can be in at that step before the head (and a critic ranking candidates) reads it. Needs an env
    that lists its cells' observations (crowd, crowd-2d: ``cell_observations``)."""

    # --- calibrated actions, weights from the first step, the range of M
    head_hidden: int = 128
    """Width of the action head (inverse dynamics and last-step policy, trained by cross-entropy)."""
    head_coef: float = 1.0
    """Weight of the action head's cross-entropy in the summed loss."""
    head_inputs: str = "data"
    """States the action head is trained on: data (the batch's states), denoised (the denoiser's
    prediction x0-hat of the clean segment from the denoising loss's noised batch, detached) or both
    (the mean of the two cross-entropies)."""
    head_denoised_steps: float = 0.25
    """With head_inputs denoised or both: the least noisy share of the K diffusion steps whose x0-hat
    trains the head (the planner decodes the prediction of its last, least noisy steps)."""
    value_lr: float | None = None
    """Learning rate of the value net's parameter group (None: the trainer's lr)."""
    value_clip: float | None = None
    """Gradient-norm clip of the value net's parameter group (None: the trainer's grad_clip; 0: none)."""
    weight_warmup: int = 0
    """Training steps with all weights 1 while the value learns; the weights' running s.d. starts after."""
    weight_scale: float | None = None
    """Fixed s.d. of the centred values, in units of the returns' spread (None: a running estimate)."""
    value_target_tau: float = 0.0
    """Polyak rate of a target value net used in the n-step advantage (0: the online value)."""
    m_draw: str = "uniform"
    """How M is drawn from m_range for each batch: uniform or log (log-uniform)."""
    agents_per_batch: int | None = None
    """Bound on B x M per batch: batches with large M hold fewer segments (None: B segments always)."""
    gate: bool = False
    """Scale each interaction block's output by a learned scalar initialised at 0 (starts as identity)."""
    # critics and search
    critic: str = "none"
    """TD critic trained with the denoiser to rank candidate plans: none, agent (per-agent IQL),
    population (segment critic, shared-reward games) or auto (population where every agent gets the
    population's reward, as in gaussian-squeeze; else agent)."""
    critic_hidden: int = 128
    """Width of the critic networks."""
    critic_gamma: float = 0.99
    """Discount of the critic's TD targets."""
    critic_expectile: float = 0.7
    """Expectile tau of the critic's state value against its target Q."""
    critic_tau: float = 0.005
    """Polyak rate of the critic's target Q."""
    critic_lr: float = 3e-4
    """Learning rate of the critic's parameter group."""
    critic_clip: float = 10.0
    """Gradient-norm clip of the critic's parameter group (0 disables)."""
    critic_support: float = 0.0
    """Population critic: weight of a support penalty subtracted from a candidate's score, the mean
    squared z-score of its per-step action histograms against running estimates of the data's (kept
    in the checkpoint from training); 0: none. Needs critic=population or auto (where auto picks the agent
    critic, as on ising, crowd and battle, there is no penalty)."""
    candidates: int = 1
    """Candidate plans drawn at the coarsest level and ranked by the critic (1: no search)."""
    select: str = "best"
    """Which candidate is refined: best (highest score) or softmax (drawn with p ~ exp(score / T))."""
    select_temperature: float = 1.0
    """T of softmax selection, in units of the data's return-to-go s.d. (the critic's reward scale)."""
    guidance: float = 0.0
    """Gradient guidance: after each denoising step, the predicted clean segment (and the step's sample
    with it) moves up the critic's gradient by this much, in RMS units of the normalised segment (the
    gradient is scaled to unit RMS over the batch); 0: none. Needs a critic; reads the actions as
    score_actions says."""
    score_actions: str = "channels"
    """Actions the critic reads when it ranks candidates: channels (the law of the action channels) or
    decoded (the law action_decode draws from: the head's probabilities with head, a one-hot of the
    channels' argmax with argmax), so that what is ranked is what is executed."""

    def __post_init__(self) -> None:
        self.m_range = tuple(int(v) for v in self.m_range)  # type: ignore[assignment]
        self.levels = tuple(int(v) for v in self.levels)
        self.steps_per_level = tuple(int(v) for v in self.steps_per_level)
        self.distilled_grid = tuple(int(v) for v in self.distilled_grid)
        if self.horizon < 1:
            raise ValueError(f"mf-diffuser: horizon must be >= 1, got {self.horizon}")
        if len(self.m_range) != 2 or not 1 <= self.m_range[0] <= self.m_range[1]:
            raise ValueError(f"mf-diffuser: m_range must be (lo, hi) with 1 <= lo <= hi, got {self.m_range}")
        choices = {
            "schedule": SCHEDULES,
            "value_source": VALUE_SOURCES,
            "weighting": WEIGHTINGS,
            "mode": MODES,
            "action_decode": DECODERS,
            "m_draw": M_DRAWS,
            "head_inputs": HEAD_INPUTS,
            "score_actions": SCORE_ACTIONS,
            "critic": CRITICS,
            "select": SELECTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"mf-diffuser: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.beta < 0 or self.w_max < 1:
            raise ValueError(f"mf-diffuser: need beta >= 0 and w_max >= 1, got {self.beta}, {self.w_max}")
        if not 0.0 <= self.branch_keep <= 1.0:
            raise ValueError(f"mf-diffuser: branch_keep must lie in [0, 1], got {self.branch_keep}")
        if self.head_hidden < 1 or self.head_coef < 0 or self.weight_warmup < 0:
            raise ValueError(
                f"mf-diffuser: need head_hidden >= 1, head_coef >= 0 and weight_warmup >= 0, got "
                f"{self.head_hidden}, {self.head_coef}, {self.weight_warmup}"
            )
        if self.snap_states and self.action_decode != "head":
            raise ValueError(
                f"mf-diffuser: snap_states projects the states the action head reads; it needs "
                f"action_decode=head, got {self.action_decode!r}"
            )
        if not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise ValueError(f"mf-diffuser: guidance must be a finite number >= 0, got {self.guidance}")
        if not 0.0 < self.head_denoised_steps <= 1.0:
            raise ValueError(
                f"mf-diffuser: head_denoised_steps must lie in (0, 1], got {self.head_denoised_steps}"
            )
        for name in ("value_lr", "value_clip", "weight_scale"):
            value = getattr(self, name)
            if value is not None and not (value > 0 or (name == "value_clip" and value == 0)):
                raise ValueError(f"mf-diffuser: {name} must be > 0 (or None), got {value}")
        if not 0.0 <= self.value_target_tau <= 1.0:
            raise ValueError(f"mf-diffuser: value_target_tau must lie in [0, 1], got {self.value_target_tau}")
        if self.agents_per_batch is not None and self.agents_per_batch < self.m_range[1]:
            raise ValueError(
                f"mf-diffuser: agents_per_batch ({self.agents_per_batch}) must be at least the largest M "
                f"({self.m_range[1]}): a batch holds at least one segment"
            )
        if not 0 < self.expectile < 1:
            raise ValueError(f"mf-diffuser: expectile must lie in (0, 1), got {self.expectile}")
        if not 1 <= self.replan_every <= self.horizon:
            raise ValueError(
                f"mf-diffuser: replan_every must lie in [1, H={self.horizon}], got {self.replan_every}"
            )
        check_search_options(self)
        levels = LevelSchedule(self.levels, self.steps_per_level)
        if levels.total_steps > self.diffusion_steps:
            raise ValueError(
                f"mf-diffuser: steps_per_level sum to {levels.total_steps} > "
                f"diffusion_steps={self.diffusion_steps}"
            )
        n_levels = len(self.levels)
        if self.sample_steps is not None and not n_levels <= self.sample_steps <= self.diffusion_steps:
            raise ValueError(
                f"mf-diffuser: sample_steps must lie in [{n_levels} (one per level), "
                f"K={self.diffusion_steps}], got {self.sample_steps}"
            )
        if self.distilled_grid:
            check_grid(self.distilled_grid, self.diffusion_steps)
            if self.level_schedule.total_steps != len(self.distilled_grid):
                raise ValueError(
                    f"mf-diffuser: this model was distilled to plan in {len(self.distilled_grid)} steps; "
                    f"the planner's levels take {self.level_schedule.total_steps} (set sample_steps="
                    f"{len(self.distilled_grid)} or steps_per_level summing to it)"
                )

    @property
    def level_schedule(self) -> LevelSchedule:
        """The planner's coarse-to-fine schedule (steps rescaled to ``sample_steps`` when set)."""
        levels = LevelSchedule(self.levels, self.steps_per_level)
        return levels if self.sample_steps is None else levels.with_total_steps(self.sample_steps)


def check_grid(grid: tuple[int, ...], n_steps: int) -> None:
    """Raise ValueError unless ``grid`` is a strictly descending run of step indices in ``[0, K)``."""
    descending = all(b < a for a, b in itertools.pairwise(grid))
    if not grid or not descending or any(not 0 <= k < n_steps for k in grid):
        raise ValueError(
            f"mf-diffuser: a sampling grid must be strictly descending step indices in [0, {n_steps - 1}], "
            f"got {list(grid)}"
        )


class DenoisingPass(NamedTuple):
    """The denoising loss of a batch and, when asked for, the denoiser's prediction of its clean segments."""

    per_particle: torch.Tensor
    """``[B, M]`` masked mean of ``||eps - eps_theta||^2`` over (H, D)."""
    x0_hat: torch.Tensor | None
    """``[B, M, H, D]`` detached prediction x0-hat of the clean segments, current states inpainted."""


class MFDiffuser(nn.Module):
    """The learner: mean-field denoiser, expectile value, action head, and data statistics as buffers.

    Segments are laid out per agent per step as ``[normalised state (S), action one-hot in {-1, 1} (A)]``,
    ``x [B, M, H, D]`` with ``D = S + A``; the first step's state channels are the conditioning and are
    inpainted (fixed) both in training and sampling.

    With ``view_shape`` (observations ``[..., S + V*V*C]`` that end in an image view, ``battle``'s view
    mode) only the S features are planned; the current view conditions the denoiser, the value and
    the action head, each through the shared encoders of :mod:`mfdiffuser.models.view`, as in every
    other learner (:meth:`cond_states`).
    """

    state_mean: torch.Tensor
    state_std: torch.Tensor
    summary_mean: torch.Tensor
    summary_std: torch.Tensor
    action_hist: torch.Tensor
    return_scale: torch.Tensor
    value_var: torch.Tensor
    value_var_ready: torch.Tensor
    weight_step: torch.Tensor
    channel_mask: torch.Tensor
    value_target: ValueNet | None

    def __init__(
        self,
        config: Config,
        state_size: int,
        n_actions: int,
        summary_size: int,
        episode_len: int,
        critic: str | None = None,
        view_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.config = config
        view_size = math.prod(view_shape) if view_shape is not None else 0
        if view_size >= state_size:
            raise ValueError(
                f"mf-diffuser: a {view_shape} view needs more than {state_size} observation features"
            )
        self.view_shape = view_shape
        self.obs_size = state_size  # features of an observation: the planned S, then the view's if any
        state_size -= view_size
        self.S, self.A, self.P, self.T = state_size, n_actions, summary_size, episode_len
        self.H = config.horizon
        self.scheduler = NoiseSchedule(config.diffusion_steps, config.schedule)
        ctx = summary_size + 1  # [phi(mu_t), t/T]
        self.denoiser = MeanFieldDenoiser(
            state_size,
            n_actions,
            ctx,
            config.horizon,
            config.hidden,
            config.n_blocks,
            config.interaction,
            gate=config.gate,
            view_shape=view_shape,
        )
        self.value = ValueNet(self.obs_size, ctx, config.value_hidden, view_shape=view_shape)
        self.value_target = (
            copy.deepcopy(self.value).requires_grad_(False) if config.value_target_tau > 0 else None
        )
        self.action_head = ActionHead(state_size, ctx, n_actions, config.head_hidden, view_shape=view_shape)
        self.critic = make_critic(config, critic or config.critic, state_size, n_actions, ctx)
        self.register_buffer("state_mean", torch.zeros(state_size))
        self.register_buffer("state_std", torch.ones(state_size))
        self.register_buffer("summary_mean", torch.zeros(summary_size))
        self.register_buffer("summary_std", torch.ones(summary_size))
        self.register_buffer("action_hist", torch.full((n_actions,), 1.0 / n_actions))
        self.register_buffer("return_scale", torch.ones(()))
        self.register_buffer("value_var", torch.ones(()))
        self.register_buffer("value_var_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("weight_step", torch.zeros((), dtype=torch.int64))  # optimizer steps taken
        cm = torch.ones(config.horizon, self.D)
        cm[0, :state_size] = 0.0  # inpainted: no loss on the conditioning
        self.register_buffer("channel_mask", cm, persistent=False)

    @property
    def D(self) -> int:
        """Channels per agent per step."""
        return self.S + self.A

    def sample_timesteps(self, n_steps: int) -> list[int]:
        """The descending step indices of a plan of ``n_steps`` denoising steps.

        A distilled model's own grid (``distilled_grid``; any other count is a ValueError), else
        ``n_steps`` indices spread evenly over the K training steps (:meth:`NoiseSchedule.timesteps`).
        """
        grid = self.config.distilled_grid
        if not grid:
            return self.scheduler.timesteps(n_steps)
        if n_steps != len(grid):
            raise ValueError(
                f"mf-diffuser: this model was distilled to plan in {len(grid)} steps, not {n_steps}"
            )
        return list(grid)

    def x0_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` ``[D]`` bounds of a predicted clean segment: actions in [-1, 1], states free."""
        low = torch.full((self.D,), -torch.inf, device=self.state_mean.device)
        low[self.S :] = -1.0
        return low, -low

    # ------------------------------------------------------------------ data layout
    @torch.no_grad()
    def fit_statistics(self, batches: list[TrajBatch]) -> None:
        """Set the normalisation buffers and the data's action histogram from sample batches."""
        valid = torch.cat([b.mask.reshape(-1) for b in batches])
        states = torch.cat([b.states[:, :, :-1].reshape(-1, self.obs_size) for b in batches])[valid, : self.S]
        summaries = torch.cat([b.summaries.reshape(-1, self.P) for b in batches])
        actions = torch.cat([b.actions.reshape(-1) for b in batches])[valid]
        self.state_mean.copy_(states.mean(0))
        self.state_std.copy_(states.std(0, correction=0).clamp_min(1e-2))
        self.summary_mean.copy_(summaries.mean(0))
        self.summary_std.copy_(summaries.std(0, correction=0).clamp_min(1e-2))
        self.action_hist.copy_(torch.bincount(actions, minlength=self.A).float() / max(len(actions), 1))
        rtg = torch.cat([b.rtg.reshape(-1) for b in batches])
        self.return_scale.copy_(rtg.std(correction=0).clamp_min(1e-3))

    def norm_states(self, s: torch.Tensor) -> torch.Tensor:
        """Normalised planned features ``[..., S]`` of observations ``[..., S]`` (or ``[..., S + view]``)."""
        return (s[..., : self.S] - self.state_mean) / self.state_std

    def cond_states(self, s: torch.Tensor) -> torch.Tensor:
        """The denoiser's conditioning on observations ``s``: normalised features, then the view if any."""
        if self.view_shape is None:
            return self.norm_states(s)
        return torch.cat([self.norm_states(s), s[..., self.S :]], dim=-1)

    def views(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The views ``[..., V*V*C]`` closing observations or conditioning states (None without a view)."""
        if self.view_shape is None:
            return None
        if cond is None:
            raise ValueError("mf-diffuser: this model conditions on the agents' views; none were given")
        return cond[..., self.S :]

    def context(self, summary: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[..., P]`` summary and ``[...]`` step -> ``[..., P+1]`` normalised ``[phi(mu_t), t/T]``."""
        phi = (summary - self.summary_mean) / self.summary_std
        return torch.cat([phi, (t.to(phi.dtype) / self.T).unsqueeze(-1)], dim=-1)

    def step_context(self, summary: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Context of each of the H steps of a segment from its first step: ``[B, P], [B] -> [B, H, P+1]``.

        Every step keeps the population summary of the segment's first step (a plan does not predict
        later summaries) and gets its own time ``(t + h) / T``.
        """
        steps = t.unsqueeze(-1) + torch.arange(self.H, device=t.device)
        return self.context(summary.unsqueeze(-2).expand(*steps.shape, summary.shape[-1]), steps)

    def encode(self, batch: TrajBatch) -> torch.Tensor:
        """Clean segments ``x_0 [B, M, H, D]`` of a batch."""
        s = self.norm_states(batch.states[:, :, : self.H])
        a = 2.0 * F.one_hot(batch.actions, self.A).to(s.dtype) - 1.0
        return torch.cat([s, a], dim=-1)

    def inpaint(self, x: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        """Fix the first step's state channels of ``x [B, M, H, D]`` to ``s0 [B, M, S]`` (normalised).

        ``s0`` may be conditioning states (:meth:`cond_states`): only its first S features are used.
        """
        x = x.clone()
        x[:, :, 0, : self.S] = s0[..., : self.S]
        return x

    def action_probs(
        self,
        x0: torch.Tensor,
        mode: str,
        step_context: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The law ``[B, M, H, A]`` decoding ``mode`` draws the actions of segments ``[B, M, H, D]`` from.

        ``categorical``: the positive part of the action channels, normalised (:func:`channel_probs`);
        ``argmax``: a one-hot of the channels' argmax; ``head``: the action head's softmax on the
        planned states, which needs ``step_context [B, H, P+1]`` (:meth:`step_context`) and, for a
        model with a view, the conditioning states ``cond [B, M, S + view]``.
        """
        chans = x0[..., self.S :]
        if mode == "argmax":
            return F.one_hot(chans.argmax(-1), self.A).to(chans.dtype)
        if mode == "head":
            if step_context is None:
                raise ValueError("mf-diffuser: head decoding needs the steps' context")
            ctx = step_context.unsqueeze(1).expand(*x0.shape[:-1], step_context.shape[-1])
            return self.action_head(x0[..., : self.S], ctx, self.views(cond)).softmax(-1)
        return channel_probs(chans)

    def decode_actions(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        mode: str,
        step_context: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Actions ``[B, M, H]`` of clean segments ``[B, M, H, D]``.

        ``categorical`` and ``argmax`` read the action channels (a clean one-hot in {-1, 1} has
        exactly one positive channel: categorical samples among the positive channels in proportion
        to their height, argmax where none is positive); ``head`` samples from the action head on
        the planned states. Arguments as :meth:`action_probs`.
        """
        if mode == "argmax":
            return x0[..., self.S :].argmax(-1)
        probs = self.action_probs(x0, mode, step_context, cond)
        return torch.multinomial(probs.reshape(-1, self.A), 1, generator=generator).reshape(probs.shape[:-1])

    # ---------------------------------------------------------------------- loss
    def denoising_loss(
        self,
        x0: torch.Tensor,
        s0: torch.Tensor,
        ctx: torch.Tensor,
        noise: torch.Tensor,
        k: torch.Tensor,
        step_mask: torch.Tensor,
        predict: bool = False,
    ) -> DenoisingPass:
        """Per-particle denoising loss, and with ``predict`` the denoiser's clean-segment prediction x0-hat.

        The loss is the masked mean of ``||eps - eps_theta||^2`` over (H, D). x0-hat inverts the
        forward process with the denoiser's noise estimate at the same noised batch (no second
        forward), detached, with the current states inpainted: what the planner decodes after its
        last step.

        Args:
            x0: ``[B, M, H, D]`` clean segments.
            s0: ``[B, M, S]`` normalised current states (inpainted and given explicitly), followed by
                the views with a view model (:meth:`cond_states`).
            ctx: ``[B, P+1]`` context.
            noise: ``[B, M, H, D]`` the noise eps.
            k: ``[B]`` diffusion steps.
            step_mask: ``[B, M, H]`` valid steps.
            predict: also return x0-hat (None otherwise).
        """
        x_k = self.inpaint(self.scheduler.add_noise(x0, noise, k), s0)
        eps = self.denoiser(x_k, k, s0, ctx)
        m = step_mask.unsqueeze(-1).to(x0.dtype) * self.channel_mask
        per_particle = ((eps - noise).pow(2) * m).sum((-1, -2)) / m.sum((-1, -2)).clamp_min(1.0)
        x0_hat = None
        if predict:
            x0_hat = self.inpaint(self.scheduler.predict_x0(x_k, eps.detach(), k), s0)
        return DenoisingPass(per_particle, x0_hat)

    def head_loss(
        self,
        batch: TrajBatch,
        x0: torch.Tensor,
        x0_hat: torch.Tensor | None,
        k: torch.Tensor,
        w: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the action head on the states ``head_inputs`` names, and its parts as metrics.

        Args:
            batch: the training batch (actions, masks, summaries, views).
            x0: ``[B, M, H, D]`` clean data segments.
            x0_hat: ``[B, M, H, D]`` the denoiser's detached prediction of them (None with ``data``).
            k: ``[B]`` diffusion step of each row: only rows with ``k < head_denoised_steps * K``
                train the head on x0-hat.
            w: ``[B, M]`` value weights of the policy head's step.
        """
        step_ctx = self.step_context(batch.summaries[:, 0], batch.timestep).unsqueeze(1)
        views = self.views(batch.states[:, :, 0])

        def cross_entropy(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.action_head.loss(states[..., : self.S], step_ctx, batch.actions, mask, w, views)

        inputs = self.config.head_inputs
        if inputs == "data":
            return cross_entropy(x0, batch.mask), {}
        if x0_hat is None:
            raise ValueError(f"mf-diffuser: head_inputs={inputs} needs the denoiser's prediction x0-hat")
        low = k < self.config.head_denoised_steps * self.scheduler.n_steps  # [B]
        denoised = cross_entropy(x0_hat, batch.mask & low[:, None, None])
        metrics = {"head_loss_denoised": float(denoised.detach())}
        if inputs == "denoised":
            return denoised, metrics
        data = cross_entropy(x0, batch.mask)
        return 0.5 * (data + denoised), metrics | {"head_loss_data": float(data.detach())}

    def segment_value(self, batch: TrajBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Value regression loss and the (un-standardised) centred values ``V - b`` per agent ``[B, M]``."""
        cfg = self.config
        s = batch.states
        t0 = batch.timestep
        ctx0 = self.context(batch.summaries[:, 0], t0)
        v0 = self.value(s[:, :, 0], ctx0) * self.return_scale  # [B, M]
        valid0 = batch.mask[:, :, 0]
        diff = (batch.rtg - v0) / self.return_scale  # regress in units of the returns' spread
        v_loss = (expectile_loss(diff, cfg.expectile) * valid0).sum() / valid0.sum().clamp_min(1)
        with torch.no_grad():
            if cfg.weighting == "episode":
                v = batch.episode_return.unsqueeze(1).expand_as(batch.rtg)
                centred = v - v[valid0].mean() if valid0.any() else v
            elif cfg.value_source == "mc":
                if cfg.weighting == "segment":
                    v = batch.pop_rtg.unsqueeze(1).expand_as(batch.rtg)
                else:
                    v = batch.rtg
                centred = v - v[valid0].mean() if valid0.any() else v
            else:
                # n-step advantage: R(X) + V(s_{t+H}) - V(s_t), bootstrapping only inside the episode,
                # with the slowly moving target value when there is one.
                value = self.value if self.value_target is None else self.value_target
                v_start = v0 if self.value_target is None else value(s[:, :, 0], ctx0) * self.return_scale
                ret = (batch.rewards * batch.mask).sum(-1)
                ctx_h = self.context(batch.summaries[:, -1], t0 + self.H)
                inside = batch.mask[:, :, -1] & (t0 + self.H < self.T).unsqueeze(1)
                if inside.any():
                    v_end = value(s[:, :, -1], ctx_h) * self.return_scale * inside
                else:
                    v_end = torch.zeros_like(ret)
                centred = ret + v_end - v_start
                if cfg.weighting == "segment":
                    w = valid0.to(centred.dtype)
                    seg = (centred * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
                    centred = seg.expand_as(centred)
        return v_loss, centred, {"value_loss": float(v_loss.detach())}

    def weights(self, centred: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Self-normalised weights ``[B, M]`` from centred values (beta on the standardised scale).

        The scale is ``weight_scale`` times the returns' spread when set, else a running s.d. of the
        centred values. During the first ``weight_warmup`` steps every weight is 1 and the running
        s.d. is not updated: it starts from the first batch after the warm-up, when the value has
        learned, not from the untrained value.
        """
        cfg = self.config
        with torch.no_grad():
            var = centred[valid].var(correction=0) if valid.any() else centred.new_zeros(())
            per_row = cfg.weighting != "agent"  # one value per row: the spread is across rows
            if per_row:
                var = centred[:, 0].var(correction=0) if centred.shape[0] > 1 else centred.new_zeros(())
            # a single row says nothing about the spread across rows (agents_per_batch makes such batches)
            informative = valid.any() and (not per_row or centred.shape[0] > 1)
            if int(self.weight_step) < cfg.weight_warmup:
                w = valid.to(centred.dtype)
                return w, {"ess": 1.0, "w_max_batch": 1.0, "value_sd": float(var.sqrt())}
            if cfg.weight_scale is not None:
                self.value_var.fill_((cfg.weight_scale * self.return_scale) ** 2)
            elif self.training and informative:
                if bool(self.value_var_ready):
                    self.value_var.mul_(cfg.std_momentum).add_((1 - cfg.std_momentum) * var)
                else:
                    self.value_var.copy_(var)
                    self.value_var_ready.fill_(True)
            sd = self.value_var.sqrt().clamp_min(1e-6)
            w = torch.exp((cfg.beta * centred / sd).clamp(max=50.0)).clamp(max=cfg.w_max)
            w = w * valid
            w = w / (w.sum() / valid.sum().clamp_min(1)).clamp_min(1e-12)
            ess = float(w.sum() ** 2 / (w.pow(2).sum() * valid.sum()).clamp_min(1e-12))
        return w, {"ess": ess, "w_max_batch": float(w.max()), "value_sd": float(sd)}

    def loss(self, batch: TrajBatch) -> LossOutput:
        """Value-weighted chaotic entropy surrogate + expectile value regression (disjoint parameters)."""
        b = batch.batch_size
        x0 = self.encode(batch)
        s0 = self.cond_states(batch.states[:, :, 0])  # [B, M, S (+ view)]
        ctx = self.context(batch.summaries[:, 0], batch.timestep)
        k = torch.randint(0, self.scheduler.n_steps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        predict = self.config.head_inputs != "data"
        per_particle, x0_hat = self.denoising_loss(x0, s0, ctx, noise, k, batch.mask, predict)  # [B, M]
        v_loss, centred, metrics = self.segment_value(batch)
        valid = batch.mask.any(-1)
        w, w_metrics = self.weights(centred, valid)
        diff_loss = (w * per_particle).sum() / valid.sum().clamp_min(1)
        head_loss, head_metrics = self.head_loss(batch, x0, x0_hat, k, w)
        total = diff_loss + self.config.value_coef * v_loss + self.config.head_coef * head_loss
        metrics |= {"diffusion_loss": float(diff_loss.detach()), "head_loss": float(head_loss.detach())}
        metrics |= head_metrics
        if batch.expert is not None:
            expert = batch.expert.unsqueeze(1) & valid
            if expert.any() and not bool(expert.eq(valid).all()):  # both kinds of episode in the batch
                metrics["expert_weight_share"] = float(w[expert].sum() / w[valid].sum())
        if self.critic is not None:  # disjoint parameters, own param group: the sum trains each apart
            critic_out = self.critic.loss(self, batch)
            total, metrics = total + critic_out.loss, {**metrics, **critic_out.metrics}
        return LossOutput(total, {**metrics, **w_metrics})

    def after_step(self) -> None:
        """Per optimiser step: count it (the weights' warm-up); target value and critic follow (Polyak)."""
        self.weight_step.add_(1)
        if self.value_target is not None:
            polyak_update(self.value_target, self.value, self.config.value_target_tau)
        if self.critic is not None:
            self.critic.update_target()

    def param_groups(self) -> list[ParamGroup]:
        """Optimiser groups: value and critic (if any) with their own lr and clip, the rest the trainer's."""
        cfg = self.config
        groups = [
            ParamGroup("denoiser", list(self.denoiser.parameters()), None, None),
            ParamGroup("value", list(self.value.parameters()), cfg.value_lr, cfg.value_clip),
            ParamGroup("action_head", list(self.action_head.parameters()), None, None),
        ]
        critic = self.critic.trainable() if self.critic is not None else []
        if critic:
            groups.append(ParamGroup("critic", critic, cfg.critic_lr, cfg.critic_clip))
        return groups


# ------------------------------------------------------------------------- build
def build(config: Config, meta: Any, dataset: Any) -> MFDiffuser:
    """The MF-Diffuser learner for a dataset's dimensions; statistics from ``dataset`` when given."""
    from mfdiffuser.algos.common import dims_from_meta

    critic = resolve_critic(config.critic, meta.env)
    learner = MFDiffuser(
        config,
        meta.state_size,
        meta.n_actions,
        meta.summary_size,
        meta.horizon,
        critic,
        view_shape=dims_from_meta(meta).view_shape,
    )
    if dataset is not None:
        from mfdiffuser.algos.run import sampler_options
        from mfdiffuser.data import WindowSampler

        sampler = WindowSampler(
            dataset,
            horizon=config.horizon,
            batch_size=64,
            m_range=config.m_range,
            seed=12345,
            **sampler_options(config),
        )
        learner.fit_statistics([sampler.sample() for _ in range(config.stats_batches)])
    return learner


# ---------------------------------------------------------------------- sampling
class PlanOutput(NamedTuple):
    """A sampled plan for a population of N agents."""

    actions: np.ndarray
    """``[N, H]`` int64: planned actions of every agent (lifted from the particles)."""
    particle_actions: np.ndarray
    """``[M_L, H]`` int64: actions decoded from the final particles."""
    particle_states: np.ndarray
    """``[M_L, H, S]`` float32: planned states of the final particles (de-normalised)."""
    assignment: np.ndarray
    """``[N]`` int64: particle each agent follows."""
    levels: LevelSchedule
    """The level schedule used (capped at N)."""
    scores: np.ndarray | None = None
    """``[K]`` float32: the critic's score of each candidate (None with one candidate)."""
    chosen: int = 0
    """Index of the candidate that was refined."""


GUIDANCE_SHARPNESS = 2.0
"""Gradient guidance reads action channels ``c`` in [-1, 1] as ``softmax(GUIDANCE_SHARPNESS * c)``: a
smooth stand-in for the categorical decoding's law (the positive part, normalised), whose gradient
vanishes wherever one channel alone is positive, as on every clean one-hot. At 2, a clean one-hot of
A actions gives its action e^4 / (e^4 + (A - 1)) of the mass (0.98 for A = 2)."""
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(segments [K, M, H, D], context [K, C], action_probs [K, M, H, A]) -> scores [K]``: ranks clean
candidate segments whose particles draw their actions from ``action_probs``."""
Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_k [B, M, H, D], step [1], conditioning [B, M, C]) -> eps [B, M, H, D]``: the noise predictor."""


class CompileError(MfdError):
    """``torch.compile`` could not compile the denoiser (the planner does not fall back to eager)."""


def compiled_denoiser(learner: MFDiffuser) -> Denoise:
    """The learner's denoiser (:meth:`~mfdiffuser.models.denoiser.MeanFieldDenoiser.denoise`), compiled.

    Shapes are static (one graph per particle count, compiled at its first call); the diffusion step
    is a tensor, so a new step does not recompile. A failure to compile raises :class:`CompileError`
    with a one-line reason instead of running eager unannounced.
    """
    compiled = torch.compile(learner.denoiser.denoise, dynamic=False)
    seen: set[tuple[int, ...]] = set()

    def denoise(x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape in seen:
            return compiled(x, k, cond)
        try:
            out = compiled(x, k, cond)
        except Exception as exc:  # any failure of dynamo / inductor / the C++ toolchain
            raise CompileError(
                f"mf-diffuser: compile=True could not compile the denoiser for x of shape {tuple(x.shape)} "
                f"({type(exc).__name__}: {first_line(exc)[:300]}); plan with compile=False"
            ) from exc
        seen.add(tuple(x.shape))
        return out

    return denoise


def snap_to_lattice(learner: MFDiffuser, x0: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Clean segments ``x0 [B, M, H, D]`` with each planned state moved to the nearest state of its step.

    Args:
        learner: the learner whose normalisation the distance is measured in (the denoiser's space).
        x0: ``[B, M, H, D]`` clean segments (normalised states).
        lattice: ``[H, X, S]`` observations of the X states an agent can be in at each planned step,
            de-normalised (an env's ``cell_observations`` at the plan's times).

    Returns:
        A copy of ``x0`` whose state channels at step h hold the normalised lattice state of step h
        nearest (Euclidean) to the planned one; action channels unchanged.
    """
    b, m, h, _ = x0.shape
    grid = learner.norm_states(lattice.to(x0.dtype))  # [H, X, S]
    planned = x0[..., : learner.S].movedim(2, 0).reshape(h, b * m, learner.S)
    nearest = torch.cdist(planned, grid).argmin(-1)  # [H, B*M]
    snapped = torch.gather(grid, 1, nearest.unsqueeze(-1).expand(-1, -1, learner.S))
    out = x0.clone()
    out[..., : learner.S] = snapped.reshape(h, b, m, learner.S).movedim(0, 2)
    return out


@torch.inference_mode()
def sample_plan(
    learner: MFDiffuser,
    states: np.ndarray,
    summary: np.ndarray,
    t: int,
    levels: LevelSchedule,
    rng: np.random.Generator,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    action_decode: str = "categorical",
    branch_keep: float = 0.0,
    candidates: int = 1,
    select: str = "best",
    select_temperature: float = 1.0,
    scorer: Scorer | None = None,
    denoise: Denoise | None = None,
    lattice: torch.Tensor | None = None,
    score_actions: str = "channels",
    guidance: float = 0.0,
) -> PlanOutput:
    """Sample one plan for N agents by coarse-to-fine denoising, and lift it to every agent.

    The loop is ``model -> scheduler.step -> inpaint -> branch``: at each level the M_j particles
    are tied to representative agents (middle of their rank block in :func:`state_order`), whose
    current states are inpainted and given explicitly; at a level boundary each particle branches
    into children re-noised from its predicted clean sample (:func:`branch`).

    Critic-guided search: with K ``candidates`` the coarsest level denoises K particle sets at once
    (batch B = K); after its steps the critic scores each candidate's predicted clean segment, one
    survivor is kept (:func:`~mfdiffuser.algos.critics.select_candidate`) and only it is refined
    through the finer levels. One candidate draws exactly what the planner without search draws.
    The critic reads each particle's actions as the law of its action channels or, with
    ``score_actions=decoded``, as the law ``action_decode`` draws from (the head's probabilities).

    Args:
        learner: a trained :class:`MFDiffuser` (EMA weights).
        states: ``[N, S]`` current states of all agents.
        summary: ``[P]`` phi(mu_t) over all N agents.
        t: current env step.
        levels: particle counts and steps per level (capped at N here).
        rng: generator of the grouping's tie-break.
        generator: torch generator of the diffusion noise.
        eta: DDIM eta.
        action_decode: ``categorical``, ``argmax`` or ``head`` (:meth:`MFDiffuser.decode_actions`).
        branch_keep: correlation of a child's noise with its parent's (see :func:`branch`).
        candidates: K, candidate plans at the coarsest level (1: no search).
        select: ``best`` or ``softmax`` (see :func:`~mfdiffuser.algos.critics.select_candidate`).
        select_temperature: temperature of ``softmax`` selection.
        scorer: ranks the candidates; default the learner's critic (required when K > 1).
        denoise: the noise predictor; default the learner's denoiser (:func:`compiled_denoiser` for a
            compiled one).
        lattice: ``[H, X, S]`` de-normalised states an agent can be in at each planned step: when
            given, the clean segments' states are projected onto it (:func:`snap_to_lattice`) before
            they are scored and decoded (``particle_states`` stay the denoiser's).
        score_actions: ``channels`` or ``decoded``: the actions the critic reads.
        guidance: step size of gradient guidance (0: none): after every denoising step the predicted
            clean segment x0 moves by ``guidance * g / rms(g)``, g the gradient of the critic's score
            (``scorer``) of the decoded segment with respect to x0, and the step's sample by
            ``sqrt(abar_{k-1})`` times that (its x0 component). The gradient reads the action
            channels through :data:`GUIDANCE_SHARPNESS` (the head's probabilities where the head
            decodes and is scored). Needs a critic.
    """
    if candidates < 1:
        raise ValueError(f"mf-diffuser: candidates must be >= 1, got {candidates}")
    if score_actions not in SCORE_ACTIONS:
        raise ValueError(f"mf-diffuser: score_actions must be channels or decoded, got {score_actions!r}")
    if (candidates > 1 or guidance > 0) and scorer is None:
        if learner.critic is None:
            what = "candidates > 1" if candidates > 1 else "guidance > 0"
            raise ValueError(
                f"mf-diffuser: {what} needs a critic (train with critic=agent, population or auto)"
            )
        scorer = learner.critic.score
    n = states.shape[0]
    levels = levels.capped(n)
    sched = learner.scheduler
    device = learner.state_mean.device
    order = state_order(states, rng)

    def rep_states(m: int) -> torch.Tensor:
        """``[1, m, S]`` normalised states of the m representatives (only they are normalised: O(m))."""
        rep = np.asarray(states[representatives(order, m)], dtype=np.float32)
        return learner.cond_states(torch.as_tensor(rep, device=device))[None]

    ctx = learner.context(
        torch.as_tensor(summary, dtype=torch.float32, device=device)[None], torch.tensor([t], device=device)
    )
    step_ctx = learner.step_context(ctx.new_tensor(summary)[None], torch.tensor([t], device=device))

    def decoded_segments(x0: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        """Clean segments as scored and decoded: current states inpainted, snapped with a lattice."""
        x0 = learner.inpaint(x0, s0)
        return x0 if lattice is None else snap_to_lattice(learner, x0, lattice)

    score_mode = action_decode if score_actions == "decoded" else "categorical"

    def scored(x0: torch.Tensor, s0: torch.Tensor, ctx: torch.Tensor, smooth: bool = False) -> torch.Tensor:
        """``[B]`` the critic's scores of clean segments ``x0 [B, M, H, D]``, as decoded.

        ``smooth`` reads the action channels through :data:`GUIDANCE_SHARPNESS` (for a gradient)
        instead of the decoding's law, unless the head decodes and is scored.
        """
        assert scorer is not None
        segments = decoded_segments(x0, s0)
        if smooth and score_mode != "head":
            probs = (GUIDANCE_SHARPNESS * segments[..., learner.S :]).softmax(-1)
        else:
            probs = learner.action_probs(segments, score_mode, step_ctx.expand(x0.shape[0], -1, -1), s0)
        return scorer(segments, ctx, probs)

    def guided(
        x0: torch.Tensor, x: torch.Tensor, k_prev: int, s0: torch.Tensor, ctx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, x)`` moved up the critic's gradient (see ``guidance``)."""
        with torch.inference_mode(False), torch.enable_grad():  # plain copies: autograd needs them
            x0_g = x0.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(scored(x0_g, s0.clone(), ctx.clone(), smooth=True).sum(), x0_g)
        shift = guidance * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12)
        return x0 + shift, x + float(sched.abar(k_prev)) ** 0.5 * shift

    clip = learner.x0_bounds()
    timesteps = learner.sample_timesteps(levels.total_steps)
    k_index = torch.tensor(timesteps, device=device).unsqueeze(-1)  # [steps, 1]: no per-step host copy
    denoise = denoise or learner.denoiser.denoise
    m = levels.sizes[0]
    s0 = rep_states(m).expand(candidates, -1, -1)  # [K, M_0, S]
    ctx = ctx.expand(candidates, -1)  # [K, C]
    x = torch.randn((candidates, m, learner.H, learner.D), generator=generator, device=device)
    i = 0
    x0 = x
    scores: torch.Tensor | None = None
    chosen = 0
    for j, n_steps in enumerate(levels.steps):
        cond = learner.denoiser.condition(s0, ctx)  # [K, M_j, C]: the same for every step of the level
        for _ in range(n_steps):
            k, k_prev = timesteps[i], (timesteps[i + 1] if i + 1 < len(timesteps) else -1)
            x[:, :, 0, : learner.S] = s0[..., : learner.S]  # inpaint (x is this step's own tensor)
            eps = denoise(x, k_index[i], cond)
            x, x0 = sched.ddim_step(eps, k, k_prev, x, eta=eta, generator=generator, clip=clip)
            if guidance > 0:
                x0, x = guided(x0, x, k_prev, s0, ctx)
            i += 1
        if candidates > 1 and scorer is not None and j == 0:  # rank the coarse candidates, refine one
            scores = scored(x0, s0, ctx)
            chosen = select_candidate(scores, select, select_temperature, generator)
            keep = slice(chosen, chosen + 1)
            x, x0, s0, ctx = x[keep], x0[keep], s0[keep], ctx[keep]
        if j + 1 < len(levels.sizes):
            m_next = levels.sizes[j + 1]
            s0 = rep_states(m_next)
            x = branch(x0, parent_index(m, m_next), k_prev, sched, generator, x, branch_keep)
            m = m_next
    decoded = learner.decode_actions(decoded_segments(x0, s0), generator, action_decode, step_ctx, s0)[0]
    x0 = learner.inpaint(x0, s0)
    actions = decoded.cpu().numpy().astype(np.int64)
    plan_states = (x0[0, :, :, : learner.S] * learner.state_std + learner.state_mean).cpu().numpy()
    assignment = assign_blocks(order, m)
    return PlanOutput(
        actions[assignment], actions, plan_states.astype(np.float32), assignment, levels,
        None if scores is None else scores.float().cpu().numpy(), chosen,
    )


# ------------------------------------------------------------------------ acting
class MFDiffuserPolicy:
    """Receding-horizon planner for N agents: replan every ``replan_every`` steps, follow the plan between.

    Args:
        learner: trained learner (EMA weights).
        config: its config (planner defaults).
        mode: ``representatives`` (final level M_L) or ``population`` (final level N, up to the cap).
        levels: override of the level sizes.
        steps_per_level: override of the steps per level.
        replan_every: override of the replanning period.
        eta: override of DDIM eta.
        action_decode: override of the action decoding.
        population_cap: override of the population mode's cap.
        branch_keep: override of the branching noise correlation.
        sample_steps: override of the number of denoising steps per plan (DDIM stride).
        candidates: override of the number of candidate plans ranked by the critic.
        select: override of the candidate selection (best or softmax).
        select_temperature: override of the softmax selection's temperature.
        compile: override of compiling the denoiser (:func:`compiled_denoiser`).
        snap_states: override of projecting planned states onto the env's lattice before decoding.
        score_actions: override of the actions the critic reads (channels or decoded).
        guidance: override of the gradient guidance's step size.
    """

    def __init__(
        self,
        learner: MFDiffuser,
        config: Config,
        mode: str | None = None,
        levels: tuple[int, ...] | None = None,
        steps_per_level: tuple[int, ...] | None = None,
        replan_every: int | None = None,
        eta: float | None = None,
        action_decode: str | None = None,
        population_cap: int | None = None,
        branch_keep: float | None = None,
        sample_steps: int | None = None,
        candidates: int | None = None,
        select: str | None = None,
        select_temperature: float | None = None,
        compile: bool | None = None,
        snap_states: bool | None = None,
        score_actions: str | None = None,
        guidance: float | None = None,
    ) -> None:
        over: dict[str, Any] = {
            "mode": mode,
            "levels": levels,
            "steps_per_level": steps_per_level,
            "replan_every": replan_every,
            "eta": eta,
            "action_decode": action_decode,
            "population_cap": population_cap,
            "branch_keep": branch_keep,
            "sample_steps": sample_steps,
            "candidates": candidates,
            "select": select,
            "select_temperature": select_temperature,
            "compile": compile,
            "snap_states": snap_states,
            "score_actions": score_actions,
            "guidance": guidance,
        }
        self.config = dataclasses.replace(config, **{k: v for k, v in over.items() if v is not None})
        for name, value, default in (
            ("candidates", self.config.candidates, 1),
            ("guidance", self.config.guidance, 0),
        ):
            if value != default and learner.critic is None:
                raise ValueError(
                    f"mf-diffuser: {name}={value} needs a critic, and this model has none "
                    "(train with critic=agent, population or auto)"
                )
        self.learner = learner.eval()
        self.denoise = compiled_denoiser(self.learner) if self.config.compile else None
        self.last_plan: PlanOutput | None = None
        self._cursor = 0
        self._lattice: torch.Tensor | None = None

    def levels_for(self, n: int) -> LevelSchedule:
        """The level schedule used for a population of ``n`` agents."""
        levels = self.config.level_schedule
        if self.config.mode == "population":
            return levels.with_final(min(n, self.config.population_cap))
        return levels.capped(n)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        dims = (env.state_size, env.n_actions, env.summary_size)
        if dims != (self.learner.obs_size, self.learner.A, self.learner.P):
            raise ValueError(
                f"mf-diffuser: env has S={env.state_size}, A={env.n_actions}, P={env.summary_size}; "
                f"the model was trained with S={self.learner.obs_size}, A={self.learner.A}, "
                f"P={self.learner.P}"
            )
        self._n = env.n_agents
        self._rng = rng
        self._gen = torch.Generator(device=self.learner.state_mean.device)
        self._gen.manual_seed(int(rng.integers(2**62)))
        self._levels = self.levels_for(self._n)
        self._lattice = env_lattice(env, self.learner.state_mean.device) if self.config.snap_states else None
        self.last_plan = None
        self._cursor = 0

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if self.last_plan is None or self._cursor >= self.config.replan_every:
            self.last_plan = sample_plan(
                self.learner,
                obs,
                info["summary"],
                int(info["t"]),
                self._levels,
                self._rng,
                self._gen,
                self.config.eta,
                self.config.action_decode,
                self.config.branch_keep,
                self.config.candidates,
                self.config.select,
                self.config.select_temperature,
                denoise=self.denoise,
                lattice=self._plan_lattice(int(info["t"])),
                score_actions=self.config.score_actions,
                guidance=self.config.guidance,
            )
            self._cursor = 0
        actions = self.last_plan.actions[:, self._cursor]
        self._cursor += 1
        return actions

    def _plan_lattice(self, t: int) -> torch.Tensor | None:
        """``[H, X, S]`` the env's states at the steps ``t..t+H-1`` of a plan (the last one past T)."""
        if self._lattice is None:
            return None
        last = self._lattice.shape[0] - 1
        steps = torch.arange(t, t + self.learner.H).clamp_max(last)
        return self._lattice[steps.to(self._lattice.device)]


def env_lattice(env: PopulationEnv, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[T+1, X, S]`` the observation of an agent in each of the env's X cells at every step 0..T.

    From the env's ``cell_observations(t)`` (crowd and crowd-2d: a one-hot cell and t/T); a
    ValueError for an env without a finite table of states.
    """
    cells = getattr(env, "cell_observations", None)
    if not callable(cells):
        raise ValueError(
            f"mf-diffuser: snap_states needs an env that lists its states (cell_observations, as crowd "
            f"and crowd-2d do); {env.name} does not"
        )
    table = np.stack([np.asarray(cells(t), dtype=np.float32) for t in range(env.horizon + 1)])
    return torch.as_tensor(table, device=device)


PLAN_OPTIONS = tuple(inspect.signature(MFDiffuserPolicy.__init__).parameters)[3:]
"""Config fields a planner option may override at evaluation time (the policy's keyword overrides)."""


def make_policy(learner: MFDiffuser, config: Config, env: PopulationEnv, **options: Any) -> MFDiffuserPolicy:
    """The receding-horizon planner of a trained learner for ``env`` (any N); options override the config."""
    allowed = set(PLAN_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"mf-diffuser: unknown planner option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(allowed))}"
        )
    if "levels" in options and "steps_per_level" not in options and len(options["levels"]) == 1:
        options["steps_per_level"] = (sum(config.steps_per_level),)
    return MFDiffuserPolicy(learner, config, **options)
