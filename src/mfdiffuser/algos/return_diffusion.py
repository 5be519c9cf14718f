"""Pieces shared by the return-conditioned trajectory diffusion baselines (dd-independent, madiff).

:class:`ReturnDiffuser` learns ``p(x | R, s_t, c)`` over segments; :class:`PlannerPolicy` plans for
all N agents at once and follows the plan open loop between replans.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import (
    Dims,
    Standardizer,
    WindowConfig,
    check_env,
    context,
    sampled_values,
    scalars,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.errors import BudgetExceeded
from mfdiffuser.models.blocks import masked_mean


@dataclass
class DiffusionConfig(WindowConfig):
    """Options shared by the return-conditioned trajectory diffusion baselines."""

    horizon: int = 4
    """H, steps per planned segment (1 for stage games)."""
    n_layers: int = 3
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads."""
    diffusion_steps: int = 20
    """K, steps of the noise schedule."""
    sample_steps: int = 20
    """DDIM steps per plan (K with eta = 1 is DDPM ancestral sampling; fewer steps sample rare
    actions far too often, which a stage game like gaussian-squeeze punishes hard)."""
    eta: float = 1.0
    """DDIM stochasticity (1: DDPM-like ancestral noise, which keeps agents' plans diverse)."""
    guidance: float = 1.5
    """Classifier-free guidance weight w: eps_u + w (eps_c - eps_u)."""
    cond_dropout: float = 0.25
    """Probability of dropping the return condition in training (classifier-free guidance)."""
    target_quantile: float = 0.9
    """Plans are conditioned on this quantile of the data's standardised return rates."""
    replan_every: int = 1
    """Env steps between plans (at most H); the plan's actions are followed open loop in between."""
    chunk_size: int = 4096
    """Agents denoised per forward pass where agents are independent."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.sample_steps <= self.diffusion_steps:
            raise ValueError(
                f"need 1 <= sample_steps <= diffusion_steps, got {self.sample_steps}, {self.diffusion_steps}"
            )
        if not 1 <= self.replan_every <= self.horizon:
            raise ValueError(f"replan_every must lie in [1, horizon={self.horizon}], got {self.replan_every}")


@dataclass
class BudgetedDiffusionConfig(DiffusionConfig):
    """Diffusion options plus a budget per plan, estimated from N before acting (None: no limit)."""

    max_memory_gib: float | None = None
    """Memory budget of one plan; larger populations are skipped with BudgetExceeded."""
    max_plan_seconds: float | None = None
    """Time budget of one plan; larger populations are skipped with BudgetExceeded."""
    assumed_gflops: float = 40.0
    """Effective GFLOP/s used to estimate plan time."""


def plan_budget(
    learner: ReturnDiffuser, config: BudgetedDiffusionConfig, n_agents: int
) -> tuple[float, float]:
    """Estimated ``(GiB, seconds)`` of one plan for N agents; raises BudgetExceeded beyond the budget."""
    gib, seconds = learner.plan_cost(n_agents, config.assumed_gflops, config)
    max_gib = float("inf") if config.max_memory_gib is None else config.max_memory_gib
    max_s = float("inf") if config.max_plan_seconds is None else config.max_plan_seconds
    if gib > max_gib or seconds > max_s:
        raise BudgetExceeded(gib, seconds, max_gib, max_s)
    return gib, seconds


class ReturnDiffuser(nn.Module):
    """Decision-Diffuser-style learner: ``p(x | R, s_t, c)`` over segments of state and action channels.

    ``x [B, M, H, D]`` holds per step the standardised state and the action as A channels in
    {-1, 1}; the current states are inpainted at every denoising step and also given as explicit
    conditioning, with the context ``c = [phi(mu_t), t/T]`` and the return rate ``R`` (return-to-go
    per remaining step, standardised; per agent or of the population), which is dropped with
    probability ``cond_dropout`` for classifier-free guidance. Plans decode each step's action as
    the argmax of its action channels.

    Args:
        config: the diffusion options.
        dims: sizes of the benchmark.
        scope: ``time`` (agents denoised independently) or ``joint`` (full attention over agents).
        population_return: condition on the population's return (else on each agent's own).
    """

    target: torch.Tensor

    def __init__(self, config: DiffusionConfig, dims: Dims, scope: str, population_return: bool) -> None:
        super().__init__()
        from mfdiffuser.diffusion import NoiseSchedule
        from mfdiffuser.models.attention import AgentTimeTransformer

        self.config, self.dims, self.population_return = config, dims, population_return
        S, A = dims.state_size, dims.n_actions
        cond_size = 2 + S + dims.context_size
        self.net = AgentTimeTransformer(
            S + A, config.horizon, cond_size, config.hidden, config.n_layers, config.n_heads, scope
        )
        self.schedule = NoiseSchedule(config.diffusion_steps)
        self.state_stats = Standardizer((S,))
        self.returns = Standardizer()
        self.register_buffer("target", torch.zeros(()))

    def fit_statistics(self, dataset: Any) -> None:
        """Fit state and return standardisation and the planning target on sampled windows."""
        cfg = self.config
        self.state_stats.fit(sampled_values(dataset, cfg, lambda b: b.states[:, :, 0][b.mask[:, :, 0]]))
        rates = sampled_values(dataset, cfg, self.return_rate)
        self.returns.fit(rates)
        self.target.fill_(
            float(np.quantile(self.returns(torch.as_tensor(rates)).numpy(), cfg.target_quantile))
        )

    def return_rate(self, batch: TrajBatch) -> torch.Tensor:
        """``[B, M]`` return-to-go per remaining step from the window's start (time-comparable)."""
        remaining = (self.dims.episode_length - batch.timestep).clamp_min(1).to(batch.rtg.dtype)  # [B]
        if self.population_return:
            return (batch.pop_rtg / remaining).unsqueeze(1).expand_as(batch.rtg)
        return batch.rtg / remaining.unsqueeze(1)

    def encode(self, batch: TrajBatch) -> torch.Tensor:
        """``[B, M, H, D]`` clean segments: standardised states and {-1, 1} action channels."""
        states = self.state_stats(batch.states[:, :, :-1])
        actions = nn.functional.one_hot(batch.actions, self.dims.n_actions).to(states.dtype) * 2 - 1
        return torch.cat([states, actions], dim=-1)

    def condition(
        self, s0: torch.Tensor, ctx: torch.Tensor, ret: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """``[B, M, E]`` conditioning ``[R keep, keep, s_t, c]``; R and keep are ``[B, M]``."""
        ctx = ctx.unsqueeze(1).expand(*s0.shape[:2], ctx.shape[-1])
        return torch.cat([(ret * keep).unsqueeze(-1), keep.unsqueeze(-1), s0, ctx], dim=-1)

    def loss(self, batch: TrajBatch) -> LossOutput:
        S = self.dims.state_size
        x0 = self.encode(batch)
        b, m = x0.shape[:2]
        k = torch.randint(0, self.schedule.n_steps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        xk = self.schedule.add_noise(x0, eps, k)
        xk[:, :, 0, :S] = x0[:, :, 0, :S]  # the current state is known (inpainted when planning)
        keep = (torch.rand(b, 1, device=x0.device) >= self.config.cond_dropout).to(x0.dtype).expand(b, m)
        ctx = context(batch.summaries[:, 0], batch.timestep, self.dims.episode_length)
        cond = self.condition(x0[:, :, 0, :S], ctx, self.returns(self.return_rate(batch)), keep)
        err = (self.net(xk, k, cond) - eps).pow(2)
        weight = batch.mask.unsqueeze(-1).expand_as(err).clone()
        weight[:, :, 0, :S] = False
        loss = masked_mean(err, weight)
        return LossOutput(loss, scalars(eps_mse=loss))

    def _guided_eps(
        self, x: torch.Tensor, k: int, cond: torch.Tensor, uncond: torch.Tensor, cfg: DiffusionConfig
    ) -> torch.Tensor:
        """Classifier-free guided noise estimate, in chunks of agents where agents are independent."""
        chunk = x.shape[1] if self.net.scope == "joint" else cfg.chunk_size
        out = []
        for xs, cs, us in zip(x.split(chunk, 1), cond.split(chunk, 1), uncond.split(chunk, 1), strict=True):
            e_c, e_u = self.net(torch.cat([xs, xs]), k, torch.cat([cs, us])).chunk(2)
            out.append(e_u + cfg.guidance * (e_c - e_u))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def plan(
        self,
        obs: np.ndarray,
        info: dict[str, Any],
        generator: torch.Generator,
        config: DiffusionConfig | None = None,
    ) -> np.ndarray:
        """``[N, H]`` planned actions of every agent for ``obs [N, S]`` (one plan, all agents at once).

        ``config`` overrides the learner's sampling options (``sample_steps``, ``eta``, ``guidance``).
        """
        cfg = config or self.config
        device = self.target.device
        S, H = self.dims.state_size, self.config.horizon
        s0 = self.state_stats(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)).unsqueeze(0)
        summary = torch.as_tensor(np.asarray(info["summary"], dtype=np.float32), device=device)
        ctx = context(summary, torch.tensor(int(info["t"]), device=device), self.dims.episode_length)[None]
        n = s0.shape[1]
        ones = torch.ones(1, n, device=device)
        cond = self.condition(s0, ctx, self.target * ones, ones)
        uncond = self.condition(s0, ctx, 0 * ones, 0 * ones)
        x = torch.randn((1, n, H, self.net.dim), generator=generator, device=device)
        ks = self.schedule.timesteps(cfg.sample_steps)
        for k, k_prev in zip(ks, ks[1:] + [-1], strict=True):
            x[:, :, 0, :S] = s0
            eps = self._guided_eps(x, k, cond, uncond, cfg)
            x = self.schedule.ddim_step(eps, k, k_prev, x, eta=cfg.eta, generator=generator).prev_sample
        return x[0, :, :, S:].argmax(-1).cpu().numpy().astype(np.int64)

    def plan_cost(
        self, n_agents: int, gflops: float, config: DiffusionConfig | None = None
    ) -> tuple[float, float]:
        """Estimated ``(GiB, seconds)`` of one plan for N agents at ``gflops`` effective GFLOP/s.

        Time: ``sample_steps`` guided forwards (batch 2). Memory: one layer's attention scores if
        materialised plus the token activations of all blocks.
        """
        cfg = config or self.config
        net, steps_ = self.net, cfg.sample_steps
        chunk = n_agents if net.scope == "joint" else min(n_agents, cfg.chunk_size)
        seconds = steps_ * net.flops(n_agents, batch=2) / (gflops * 1e9)
        tokens = 2 * chunk * net.horizon
        gib = (net.attention_bytes(chunk, batch=2) + tokens * net.hidden * 4 * 8 * net.n_layers) / 2**30
        return gib, seconds


class PlannerPolicy:
    """A population policy that plans ``[N, H]`` actions for all agents and follows them open loop.

    Every ``config.replan_every`` env steps it calls ``planner.plan``; the generator (on the
    planner's device, where the noise is drawn) is seeded from the episode's generator, so an episode
    is reproducible from its seed.
    """

    def __init__(self, planner: ReturnDiffuser, config: DiffusionConfig) -> None:
        self.planner, self.config = planner, config
        self._plan: np.ndarray | None = None
        self._age = 0
        self._gen = torch.Generator(device=planner.target.device)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._gen = torch.Generator(device=self.planner.target.device).manual_seed(int(rng.integers(2**62)))
        self._plan, self._age = None, 0

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if self._plan is None or self._age >= self.config.replan_every or self._plan.shape[0] != len(obs):
            self._plan, self._age = self.planner.plan(obs, info, self._gen, self.config), 0
        actions = self._plan[:, self._age]
        self._age += 1
        return actions


PLANNING_OPTIONS = ("replan_every", "sample_steps", "eta", "guidance")
"""Diffusion options that may be changed at acting time (``mfd evaluate --policy-opt``)."""
PLAN_OPTIONS = (*PLANNING_OPTIONS, "chunk_size", "max_memory_gib", "max_plan_seconds", "assumed_gflops")
"""Options that shape only acting, never the trained weights: a run trained under other values of
them resumes (:func:`mfdiffuser.algos.run.train`)."""


def acting_config(config: DiffusionConfig, options: dict[str, Any]) -> DiffusionConfig:
    """``config`` with the acting-time overrides in ``options`` (validated like any config)."""
    unknown = sorted(set(options) - set(PLANNING_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown policy option(s) {', '.join(unknown)}; accepted: {', '.join(PLANNING_OPTIONS)}"
        )
    return dataclasses.replace(config, **options)


def planner_policy(
    learner: ReturnDiffuser, config: DiffusionConfig, env: PopulationEnv, **options: Any
) -> PlannerPolicy:
    """The planning policy of a diffusion learner for ``env``, with acting-time overrides (see above)."""
    check_env(learner.dims, env)
    return PlannerPolicy(learner, acting_config(config, options))
