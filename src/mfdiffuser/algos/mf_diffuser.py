"""MF-Diffuser: value-weighted mean-field trajectory diffusion with a coarse-to-fine receding-horizon planner.

Training minimises the value-weighted chaotic entropy surrogate of SPEC section 2,
``E[w(X) (1/M) sum_i ||eps^i - eps_theta(X_k, k, c)^i||^2]`` on random M-agent subsets, with
``w = clip(exp(beta (V - b) / sd), w_max)`` self-normalised over the batch and ``V`` from a jointly
trained expectile value (or Monte-Carlo returns). Acting samples plans for representatives of the N
agents by coarse-to-fine denoising and lifts them to every agent by block assignment: the planner is
:mod:`mfdiffuser.algos.mf_planner`.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mfdiffuser.algos.base import LossOutput, ParamGroup
from mfdiffuser.algos.critics import CRITICS, check_search_options, make_critic, resolve_critic
from mfdiffuser.algos.mf_planner import PLAN_OPTIONS, PRECISIONS, SCORE_ACTIONS, MFDiffuserPolicy
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.diffusion import SCHEDULES, LevelSchedule, NoiseSchedule
from mfdiffuser.envs.base import PopulationEnv
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
    action_weight: float = 1.0
    """Weight of each action channel in the denoising loss, a state channel's being 1. With A actions
    and S state features the actions carry A / (A + S) of an unweighted loss (crowd-2d: 5 of 26)."""
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
    precision: str = "float32"
    """Number format of the planner's denoiser: float32, or bfloat16 (a copy of the weights; the
    sampler's arithmetic stays float32). bfloat16 is faster only where the hardware has bfloat16
    matrix instructions (AVX512-BF16 or AMX CPUs, recent GPUs); it changes the plans slightly."""
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
    critic_conservative: float = 0.0
    """Agent critic: weight alpha of CQL's penalty ``alpha (logsumexp_a Q - Q(a_data))`` added to its
    IQL loss, which lowers Q at actions the data did not take; 0: plain IQL. Needs critic=agent or
    auto (where auto picks the population critic, as on gaussian-squeeze, there is no penalty)."""
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
            "precision": tuple(PRECISIONS),
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
        if not (self.action_weight > 0 and math.isfinite(self.action_weight)):
            msg = f"mf-diffuser: action_weight must be a finite number > 0, got {self.action_weight!r}"
            raise ValueError(msg)
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


def feature_scale(values: torch.Tensor) -> torch.Tensor:
    """Per-feature scale of ``values [n, F]``: the s.d., at least 0.01; 1 for a feature constant in the data.

    A constant feature normalises to 0 on every row of the data either way. Scale 1 keeps a value off
    the data's support at its own magnitude: battle's ``alive`` flag is 1 on every valid row, and a
    dead agent's row inside a training window (0) would otherwise normalise to -100.
    """
    std = values.std(0, correction=0)
    return torch.where(std > 1e-6, std.clamp_min(1e-2), torch.ones_like(std))


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
        cm[:, state_size:] = config.action_weight
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
        self.state_std.copy_(feature_scale(states))
        self.summary_mean.copy_(summaries.mean(0))
        self.summary_std.copy_(feature_scale(summaries))
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
                if batch.next_mask is not None:  # no bootstrap from a dead agent's state
                    inside = inside & batch.next_mask
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


# ------------------------------------------------------------------------ acting
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
