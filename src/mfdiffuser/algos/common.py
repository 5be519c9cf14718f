"""Pieces shared by the per-agent baselines: mean-field context, transitions, weights, acting.

An agent's context is ``[phi(mu_t), t/T]``; :class:`AgentwisePolicy` acts for any N by scoring
``(obs[N, S], context)`` with a per-agent network in chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mfdiffuser.algos.base import LossOutput
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.errors import BudgetExceeded
from mfdiffuser.models.blocks import masked_mean
from mfdiffuser.models.policy import PolicyNet

if TYPE_CHECKING:
    from typing_extensions import Self

ACTING_MODES = ("sample", "greedy")


class Dims(NamedTuple):
    """Sizes a learner is built for: S state, A actions, P summary, T episode length."""

    state_size: int
    n_actions: int
    summary_size: int
    episode_length: int

    @property
    def context_size(self) -> int:
        """C = P + 1: the summary ``phi(mu_t)`` plus the time fraction ``t / T``."""
        return self.summary_size + 1


def dims_from_meta(meta: Any) -> Dims:
    """The :class:`Dims` of a dataset's metadata (``DatasetMeta``)."""
    return Dims(int(meta.state_size), int(meta.n_actions), int(meta.summary_size), int(meta.horizon))


INF = float("inf")

# option name -> (low, high, low included, high included); checked on every config that has the field.
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "horizon": (1, INF, True, False),
    "hidden": (1, INF, True, False),
    "chunk_size": (1, INF, True, False),
    "temperature": (0, INF, False, False),
    "beta": (0, INF, True, False),
    "w_max": (1, INF, False, False),
    "expectile": (0, 1, False, False),
    "gamma": (0, 1, True, True),
    "target_tau": (0, 1, False, True),
    "alpha": (0, INF, True, False),
    "n_layers": (1, INF, True, False),
    "n_heads": (1, INF, True, False),
    "diffusion_steps": (1, INF, True, False),
    "eta": (0, INF, True, False),
    "guidance": (0, INF, True, False),
    "cond_dropout": (0, 1, True, False),
    "target_quantile": (0, 1, False, False),
    "max_memory_gib": (0, INF, False, False),
    "max_plan_seconds": (0, INF, False, False),
    "assumed_gflops": (0, INF, False, False),
}
# option name -> accepted values.
CHOICES: dict[str, tuple[str, ...]] = {"acting": ACTING_MODES, "weight_by": ("segment", "episode")}


@dataclass
class WindowConfig:
    """Options every baseline has: the sampler's window (H, range of M) and the network width."""

    horizon: int = 1
    """H, steps per training window (1 suffices for per-step losses)."""
    m_range: tuple[int, int] = (8, 32)
    """Range of M, the agents drawn per population segment."""
    hidden: int = 128
    """Width of the networks."""

    def __post_init__(self) -> None:
        lo, hi = self.m_range
        if not 1 <= lo <= hi:
            raise ValueError(f"m_range must satisfy 1 <= lo <= hi, got {self.m_range}")
        for name, (low, high, low_in, high_in) in BOUNDS.items():
            v = getattr(self, name, None)
            if v is None:  # not an option of this config, or an optional one left unset
                continue
            ok = (v >= low if low_in else v > low) and (v <= high if high_in else v < high)
            if not ok:
                interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                raise ValueError(f"option {name} must lie in {interval}, got {v!r}")
        for name, accepted in CHOICES.items():
            if hasattr(self, name) and getattr(self, name) not in accepted:
                raise ValueError(
                    f"option {name} must be one of {', '.join(accepted)}, got {getattr(self, name)!r}"
                )


@dataclass
class AgentConfig(WindowConfig):
    """Options every per-agent baseline shares: how the population acts."""

    acting: str = "sample"
    """How agents act: sample (from softmax(scores / temperature)) or greedy (argmax)."""
    temperature: float = 1.0
    """Temperature of sampled acting (Boltzmann temperature for Q-values)."""
    chunk_size: int = 65536
    """Agents evaluated per forward pass when acting (bounds memory at large N)."""


@dataclass
class TDConfig(AgentConfig):
    """Options of the temporal-difference baselines (mf-iql, mf-cql)."""

    gamma: float = 0.99
    """Discount of the Bellman backup."""
    target_tau: float = 0.005
    """Polyak rate of the target Q network."""


@dataclass
class WeightedConfig(AgentConfig):
    """Options of the weighted behaviour-cloning baselines (rwbc, awbc)."""

    beta: float = 2.0
    """Inverse temperature on the standardised return or advantage (0: plain behaviour cloning)."""
    w_max: float = 20.0
    """Upper clip of the unnormalised weights."""


def context(summaries: torch.Tensor, t: torch.Tensor, episode_length: int) -> torch.Tensor:
    """``[..., P]`` summaries and ``[...]`` integer times -> ``[..., P + 1]`` context ``[phi, t / T]``."""
    frac = (t.to(summaries.dtype) / float(episode_length)).unsqueeze(-1)
    return torch.cat([summaries, frac], dim=-1)


class Steps(NamedTuple):
    """A batch seen as per-agent transitions, laid out ``[B, H, M, ...]`` (time before agents).

    The agent axis comes right before the features so that :class:`AgentEncoder` broadcasts the
    per-step context ``[B, H, C]`` over the M agents.
    """

    states: torch.Tensor
    """``[B, H, M, S]`` s_t."""
    next_states: torch.Tensor
    """``[B, H, M, S]`` s_{t+1}."""
    actions: torch.Tensor
    """``[B, H, M]`` a_t."""
    rewards: torch.Tensor
    """``[B, H, M]`` r_t."""
    context: torch.Tensor
    """``[B, H, C]`` context at t."""
    next_context: torch.Tensor
    """``[B, H, C]`` context at t + 1."""
    mask: torch.Tensor
    """``[B, H, M]`` bool: the transition is real (inside the episode, agent alive)."""
    done: torch.Tensor
    """``[B, H, M]`` float: 1 where s_{t+1} ends the agent's episode (no bootstrap)."""


def steps(batch: TrajBatch, episode_length: int) -> Steps:
    """View ``batch`` as transitions ``(s, a, r, s', c, c')``; terminal where the episode or agent ends.

    An agent's transition is terminal at the episode's last step (``t + 1 >= T``) and where the next
    step of the window is masked out (the agent died or the window ran past the episode's end).
    """
    H = batch.horizon
    states = batch.states.transpose(1, 2)  # [B, H+1, M, S]
    mask = batch.mask.transpose(1, 2)  # [B, H, M]
    t = batch.timestep.unsqueeze(1) + torch.arange(H + 1, device=batch.timestep.device)  # [B, H+1]
    ctx = context(batch.summaries, t, episode_length)  # [B, H+1, C]
    ends = (t[:, 1:] >= episode_length).unsqueeze(-1).expand_as(mask)  # [B, H, M]
    next_masked = torch.zeros_like(mask)
    next_masked[:, :-1] = ~mask[:, 1:]
    done = (ends | next_masked).to(states.dtype)
    return Steps(
        states=states[:, :-1],
        next_states=states[:, 1:],
        actions=batch.actions.transpose(1, 2),
        rewards=batch.rewards.transpose(1, 2),
        context=ctx[:, :-1],
        next_context=ctx[:, 1:],
        mask=mask,
        done=done,
    )


def action_nll(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-entry negative log-likelihood of ``actions [...]`` under ``logits [..., A]``."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def policy_loss(
    policy: nn.Module, st: Steps, weights: torch.Tensor | None = None, first_step_only: bool = False
) -> torch.Tensor:
    """(Weighted) cross-entropy of the data's actions under ``policy``, averaged over real transitions.

    Args:
        policy: maps ``(states [..., M, S], context [..., C])`` to logits ``[..., M, A]``.
        st: the batch as transitions.
        weights: per-transition weights broadcastable to ``[B, H, M]`` (``[B, M]`` with
            ``first_step_only``), or None for plain behaviour cloning.
        first_step_only: use only the window's first step (where returns-to-go are known).
    """
    states, ctx, actions, mask = st.states, st.context, st.actions, st.mask
    if first_step_only:
        states, ctx, actions, mask = states[:, 0], ctx[:, 0], actions[:, 0], mask[:, 0]
    nll = action_nll(policy(states, ctx), actions)
    if weights is not None:
        nll = nll * weights
    return masked_mean(nll, mask)


def scalars(**values: torch.Tensor) -> dict[str, float]:
    """Detached Python floats of scalar tensors, for ``LossOutput.metrics``."""
    return {k: float(v.detach()) for k, v in values.items()}


def exp_weights(
    x: torch.Tensor, beta: float, w_max: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weights ``min(exp(beta x), w_max)``, self-normalised to mean 1 over the (masked) entries.

    ``x`` (a standardised return or advantage) is detached. The clip is applied to the exponent, so
    no weight overflows. Returns the weights and metrics: the largest weight and the effective sample
    size as a fraction of the entries, ``(sum w)^2 / (n sum w^2)``.
    """
    x = x.detach()
    valid = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    logw = torch.where(valid, beta * x, torch.full_like(x, -torch.inf))
    logw = logw.clamp_max(float(np.log(w_max)))
    w = torch.where(valid, torch.exp(logw), torch.zeros_like(x))
    n = valid.sum().clamp_min(1)
    w = w * (n / w.sum().clamp_min(1e-12))
    ess = float(w.sum() ** 2 / (n * w.pow(2).sum()).clamp_min(1e-12))
    return w, {"weight_max": float(w.max()), "weight_ess": ess}


class Standardizer(nn.Module):
    """Mean and standard deviation of a dataset quantity, stored as buffers so that they are saved.

    Args:
        shape: shape of one value: ``()`` for a scalar, ``(S,)`` for per-feature statistics.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, values: np.ndarray | torch.Tensor) -> Standardizer:
        """Set the statistics from ``values [n, *shape]``; a constant feature gets std 1."""
        v = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1, *self.mean.shape)
        if v.shape[0] == 0 or not torch.isfinite(v).all():
            raise ValueError("cannot standardise an empty or non-finite set of values")
        std = v.std(dim=0) if v.shape[0] > 1 else torch.zeros_like(v[0])
        self.mean.copy_(v.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(states [N, S], context [C]) -> scores [N, A]``: logits or Q-values of every agent."""


class AgentwisePolicy:
    """A :class:`~mfdiffuser.envs.base.PopulationPolicy` from a per-agent score network, for any N.

    Every step, the context ``[phi(mu_t), t/T]`` is built from ``info`` and the network scores the
    A actions of every agent in chunks of ``chunk_size`` agents. ``sample`` draws from
    ``softmax(scores / temperature)`` by inverse CDF with the episode's generator (a Boltzmann policy
    when the scores are Q-values); ``greedy`` takes the argmax.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        episode_length: int,
        *,
        acting: str = "sample",
        temperature: float = 1.0,
        chunk_size: int = 65536,
        device: torch.device | str = "cpu",
    ) -> None:
        if acting not in ACTING_MODES:
            raise ValueError(f"acting must be one of {', '.join(ACTING_MODES)}, got {acting!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.score_fn = score_fn
        self.episode_length = int(episode_length)
        self.acting, self.temperature = acting, float(temperature)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self._rng = np.random.default_rng()

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._rng = rng

    @torch.no_grad()
    def scores(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """``[N, A]`` scores of every agent's actions for ``obs [N, S]`` and ``info``."""
        summary = torch.as_tensor(np.asarray(info["summary"], dtype=np.float32), device=self.device)
        t = torch.tensor(int(info["t"]), device=self.device)
        ctx = context(summary, t, self.episode_length)
        states = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        out = [self.score_fn(chunk, ctx) for chunk in torch.split(states, self.chunk_size)]
        return torch.cat(out).float().cpu().numpy()

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        scores = self.scores(obs, info)
        if self.acting == "greedy":
            return scores.argmax(axis=1).astype(np.int64)
        return sample_categorical(scores / self.temperature, self._rng)


def sample_categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of ``softmax(logits [N, A])`` by inverse CDF (one uniform per row)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(logits))[:, None] * cdf[:, -1:]
    return np.minimum((u > cdf).sum(axis=1), logits.shape[1] - 1).astype(np.int64)


def make_agentwise_policy(
    learner: PerAgentLearner, config: AgentConfig, env: PopulationEnv, **options: Any
) -> AgentwisePolicy:
    """The population policy of a per-agent learner (``learner.scores`` and ``learner.dims``) for ``env``.

    Args:
        learner: module with ``dims`` (:class:`Dims`) and ``scores(states, context) -> [..., A]``.
        config: its config; the acting options default to ``config.acting`` etc.
        env: any N of the benchmark the learner was trained on.
        **options: overrides among ``acting``, ``temperature``, ``chunk_size``.
    """
    allowed = {"acting", "temperature", "chunk_size"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown policy option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
        )
    check_env(learner.dims, env)
    kwargs: dict[str, Any] = {
        "acting": config.acting,
        "temperature": config.temperature,
        "chunk_size": config.chunk_size,
    }
    kwargs.update(options)
    device = next(learner.parameters()).device
    return AgentwisePolicy(learner.scores, learner.dims.episode_length, device=device, **kwargs)


def check_env(dims: Dims, env: PopulationEnv) -> None:
    """Raise ValueError when ``env`` does not have the sizes the learner was built for."""
    got = (env.state_size, env.n_actions, env.summary_size)
    want = (dims.state_size, dims.n_actions, dims.summary_size)
    if got != want:
        raise ValueError(f"env has (S, A, P) = {got} but the learner was trained with {want}")


def sampled_values(
    dataset: Any,
    config: WindowConfig,
    quantity: Callable[[TrajBatch], torch.Tensor],
    n_batches: int = 16,
    batch_size: int = 256,
    seed: int = 2**31 - 1,
) -> np.ndarray:
    """Values ``[n, ...]`` of ``quantity(batch)`` over windows drawn as training draws them (own seed).

    Used to standardise returns and advantages by the statistics of the very windows the weights
    are applied to (windows start at every step, so ``pop_rtg`` mixes early and late steps).
    """
    from mfdiffuser.data import WindowSampler

    sampler = WindowSampler(
        dataset, horizon=config.horizon, batch_size=batch_size, m_range=tuple(config.m_range), seed=seed
    )
    return np.concatenate(
        [quantity(sampler.sample()).detach().cpu().numpy().ravel() for _ in range(n_batches)]
    )


def taken(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``q [..., A]`` at the data's ``actions [...]`` -> ``[...]``."""
    return q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def td_target(st: Steps, next_value: torch.Tensor, gamma: float, reward_scale: torch.Tensor) -> torch.Tensor:
    """``r / scale + gamma (1 - done) V(s')`` per transition ``[B, H, M]`` (no gradient)."""
    return (st.rewards / reward_scale + gamma * (1.0 - st.done) * next_value).detach()


class PerAgentLearner(nn.Module):
    """Base of the per-agent baselines: sizes, config, a policy head and the return standardiser.

    Subclasses add their networks and ``loss``; ``scores`` (what the population acts on) defaults
    to the policy's logits. ``returns`` is fitted by :meth:`create` on the agents' returns-to-go of
    sampled windows (override :meth:`return_values` to standardise another quantity).
    """

    def __init__(self, config: AgentConfig, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.policy = PolicyNet(dims.state_size, dims.context_size, dims.n_actions, config.hidden)
        self.returns = Standardizer()

    @classmethod
    def create(cls, config: AgentConfig, meta: Any, dataset: Any = None) -> Self:
        """The learner for the sizes in ``meta``; with a dataset, its return statistics fitted."""
        learner = cls(config, dims_from_meta(meta))
        if dataset is not None:
            learner.returns.fit(sampled_values(dataset, config, learner.return_values))
        return learner

    def return_values(self, batch: TrajBatch) -> torch.Tensor:
        """``[n]`` the returns ``returns`` standardises: every real agent's return-to-go."""
        return batch.rtg[batch.mask[:, :, 0]]

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Action scores ``[..., M, A]`` the population acts on (policy logits by default)."""
        return self.policy(states, context)


# ------------------------------------------------------------------ return-conditioned trajectory diffusion
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
