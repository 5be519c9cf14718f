"""MF-Diffuser's coarse-to-fine planner: sampling a plan for N agents, and acting on it.

:func:`sample_plan` denoises the segments of a few representative agents, growing their number level
by level (optionally ranking candidates with a critic), and lifts the plan to every agent;
:class:`MFDiffuserPolicy` replans on a receding horizon. The learner is
:class:`~mfdiffuser.algos.mf_diffuser.MFDiffuser`, read through its methods only.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from mfdiffuser.algos.critics import select_candidate
from mfdiffuser.diffusion import (
    LevelSchedule,
    assign_blocks,
    branch,
    parent_index,
    representatives,
    state_order,
)
from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.errors import MfdError, first_line

if TYPE_CHECKING:
    from mfdiffuser.algos.mf_diffuser import Config, MFDiffuser

SCORE_ACTIONS = ("channels", "decoded")
"""What the critic reads of a candidate's actions: the action channels' law, or the decoding's."""
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Number formats the planner's denoiser can run in (the sampler's own arithmetic stays float32)."""


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


def compiled_denoiser(learner: MFDiffuser, base: Denoise | None = None) -> Denoise:
    """The learner's denoiser (:meth:`~mfdiffuser.models.denoiser.MeanFieldDenoiser.denoise`), compiled.

    Shapes are static (one graph per particle count, compiled at its first call); the diffusion step
    is a tensor, so a new step does not recompile. A failure to compile raises :class:`CompileError`
    with a one-line reason instead of running eager unannounced. ``base`` compiles another noise
    predictor of the learner instead (:func:`reduced_precision_denoiser`).
    """
    compiled = torch.compile(base or learner.denoiser.denoise, dynamic=False)
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


def reduced_precision_denoiser(learner: MFDiffuser, precision: str) -> Denoise:
    """The learner's denoiser run in ``precision`` (a key of :data:`PRECISIONS`) on a copy of its weights.

    The copy is taken now: later changes to the learner's weights do not reach it. The noisy sample
    and the conditioning go in cast to that format and the noise estimate comes back as float32, so
    the sampler's update, the inpainting and the decoding keep float32 arithmetic; the conditioning
    itself is computed once per level in float32. bfloat16 halves the weights' and activations' memory
    traffic and, on a CPU with bfloat16 instructions (AVX512-BF16, AMX) or a GPU, runs the matrix
    products faster; without them it is slower than float32.
    """
    dtype = PRECISIONS[precision]
    net = copy.deepcopy(learner.denoiser).to(dtype).eval()

    def denoise(x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return net.denoise(x.to(dtype), k, cond.to(dtype)).to(x.dtype)

    return denoise


def planning_denoiser(
    learner: MFDiffuser, precision: str = "float32", compile: bool = False
) -> Denoise | None:
    """The noise predictor a plan uses.

    None: the learner's own float32 denoiser; otherwise one in another number format
    (:func:`reduced_precision_denoiser`), compiled or not (:func:`compiled_denoiser`).
    """
    base = None if precision == "float32" else reduced_precision_denoiser(learner, precision)
    return compiled_denoiser(learner, base) if compile else base


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
        precision: override of the denoiser's number format (:func:`reduced_precision_denoiser`).
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
        precision: str | None = None,
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
            "precision": precision,
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
        self.denoise = planning_denoiser(self.learner, self.config.precision, self.config.compile)
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
