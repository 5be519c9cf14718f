"""The mean-field denoiser of MF-Diffuser (SPEC section 2): permutation-equivariant, O(M), any M.

Per-agent temporal conv blocks over H are interleaved with mean-field interaction blocks that pool
over the M particles.

Input ``x_k [B, M, H, D]`` (D = S state features + A action channels per step), the diffusion step k,
the current states ``s_t [B, M, S]`` of the M agents and the population summary ``phi(mu_t) [B, P]``.
When observations end in an image view, the current observation ``[B, M, S + V*V*C]`` conditions the
denoiser through the shared :class:`~mfdiffuser.models.view.ObsEncoder`; only the S features are planned.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from mfdiffuser.models.blocks import MLP
from mfdiffuser.models.view import ObsEncoder


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of an integer step ``[B] -> [B, dim]`` (Vaswani et al. 2017)."""

    freqs: torch.Tensor

    def __init__(self, dim: int, max_period: float = 1000.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """Angles in float32; the features in the module's number format (that of ``freqs``)."""
        angles = k.to(torch.float32)[:, None] * self.freqs[None].to(torch.float32)
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if emb.shape[-1] < self.dim:
            emb = nn.functional.pad(emb, (0, self.dim - emb.shape[-1]))
        return emb.to(self.freqs.dtype)


class TemporalConv(nn.Module):
    """A 1-D convolution over H written as one matmul on shifted copies: ``[..., H, C] -> [..., H, C]``.

    Equivalent to ``Conv1d(C, C, kernel, padding=kernel // 2)`` but fast for the short horizons of
    planning (oneDNN convolutions are slow on length-1..8 sequences on CPU).
    """

    def __init__(self, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"temporal conv: kernel must be odd and >= 1, got {kernel}")
        self.kernel = kernel
        self.linear = nn.Linear(kernel * hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return self.linear(h)
        return self.linear(cast(torch.Tensor, ShiftedSteps.apply(h, self.kernel)))


class ShiftedSteps(torch.autograd.Function):
    """``[..., H, C] -> [..., H, kernel * C]``: block i of step t holds step ``t + i - kernel // 2``.

    Steps off either end are zeros: the input of a zero-padded convolution, as one matmul sees it.
    The same values, and input gradient, as slicing a padded copy and concatenating the slices, in
    one pass over memory each way instead of several (padding, slicing and their gradients are a
    large part of the denoiser's step on CPU at the short horizons of planning).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor, kernel: int) -> torch.Tensor:
        r, length, c = kernel // 2, h.shape[-2], h.shape[-1]
        cast(Any, ctx).kernel = kernel
        out = h.new_empty(*h.shape[:-1], kernel * c)
        for i in range(kernel):
            lo, hi = _inside(i, r, length)
            block = out[..., i * c : (i + 1) * c]
            block[..., lo:hi, :] = h[..., lo + i - r : hi + i - r, :]
            block[..., :lo, :] = 0.0
            block[..., hi:, :] = 0.0
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # The gradient of the padded copy is the sum of each slice's gradient placed in a zero
        # tensor, added in the order autograd adds them (last slice first): the same order here,
        # including the zeros added at the ends (they turn a -0.0 into 0.0), so results match bit
        # for bit.
        kernel = cast(Any, ctx).kernel
        r, length = kernel // 2, grad.shape[-2]
        c = grad.shape[-1] // kernel
        out = grad.new_empty(*grad.shape[:-1], c)
        for n, i in enumerate(reversed(range(kernel))):
            lo, hi = _inside(i, r, length, shift=-1)
            src = grad[..., lo + r - i : hi + r - i, i * c : (i + 1) * c]
            if n == 0:
                out[..., lo:hi, :] = src
                out[..., :lo, :] = 0.0
                out[..., hi:, :] = 0.0
            else:
                out[..., lo:hi, :] += src
                out[..., :lo, :] += 0.0
                out[..., hi:, :] += 0.0
        return out, None


def _inside(i: int, r: int, length: int, shift: int = 1) -> tuple[int, int]:
    """Steps ``[lo, hi)`` of a window of ``length`` whose source ``t + shift (i - r)`` lies inside it."""
    off = shift * (i - r)
    lo, hi = max(0, -off), min(length, length - off)
    return (lo, hi) if lo < hi else (0, 0)


class TemporalBlock(nn.Module):
    """Residual 1-D convolution over H for every agent, FiLM-modulated by the agent's conditioning."""

    def __init__(self, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.conv1 = TemporalConv(hidden, kernel)
        self.norm2 = nn.LayerNorm(hidden)
        self.conv2 = TemporalConv(hidden, kernel)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``h [B, M, H, C]``, ``cond [B, M, C]`` -> ``[B, M, H, C]``."""
        scale, shift = self.film(cond).unsqueeze(2).chunk(2, dim=-1)
        y = self.conv1(self.act(self.norm1(h)))
        y = self.norm2(y) * (1 + scale) + shift
        y = self.conv2(self.act(y))
        return h + y


class MeanFieldInteraction(nn.Module):
    """Each agent sees the others only through the mean over the M particles of an embedding, per step.

    ``h_i += W_out mish(W_self h_i + W_pool mean_j g(h_j))``: permutation-equivariant in the agent axis,
    O(M) and independent of M (duplicating every particle leaves every output unchanged). With
    ``gate`` the update is scaled by a learned scalar initialised at 0 (ReZero, Bachlechner et al.
    2021): the block starts as the identity and the interaction grows only where it lowers the loss.
    """

    gate: nn.Parameter | None

    def __init__(self, hidden: int, gate: bool = False) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(())) if gate else None
        self.norm = nn.LayerNorm(hidden)
        self.embed = MLP(hidden, hidden, hidden, n_layers=1, act=nn.SiLU)
        self.self_proj = nn.Linear(hidden, hidden)
        self.pool_proj = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, M, H, C]`` -> ``[B, M, H, C]``."""
        z = self.norm(h)
        pooled = self.embed(z).mean(dim=1, keepdim=True)  # [B, 1, H, C]
        update = self.out(self.act(self.self_proj(z) + self.pool_proj(pooled)))
        return h + (update if self.gate is None else self.gate * update)


class MeanFieldDenoiser(nn.Module):
    """``eps_theta(x_k, k, s_t, phi(mu_t))``: one network shared by all agents, any M.

    Args:
        state_size: S.
        n_actions: A (the action is encoded as A channels per step).
        summary_size: P.
        horizon: H, steps per segment.
        hidden: C, channel width.
        n_blocks: number of (temporal, interaction) block pairs.
        interaction: False drops the interaction blocks (independent agents; an ablation).
        kernel: temporal convolution width.
        gate: scale each interaction block by a learned scalar initialised at 0.
        view_shape: ``[V, V, C]`` of the image view that follows the S features of the current
            observation (conditioning only, not planned); None: observations are the S features.
    """

    def __init__(
        self,
        state_size: int,
        n_actions: int,
        summary_size: int,
        horizon: int,
        hidden: int = 96,
        n_blocks: int = 3,
        interaction: bool = True,
        kernel: int = 3,
        gate: bool = False,
        view_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.state_size, self.n_actions, self.horizon = state_size, n_actions, horizon
        self.dim = state_size + n_actions
        self.inp = nn.Linear(self.dim, hidden)
        self.pos = nn.Parameter(torch.zeros(horizon, hidden))
        self.k_embed = nn.Sequential(
            SinusoidalEmbedding(hidden), MLP(hidden, hidden, hidden, n_layers=1, act=nn.SiLU)
        )
        view_size = math.prod(view_shape) if view_shape is not None else 0
        self.obs = ObsEncoder(state_size + view_size, view_shape)  # the identity without a view
        self.cond = MLP(self.obs.out_size + summary_size, hidden, hidden, n_layers=2, act=nn.SiLU)
        self.temporal = nn.ModuleList(TemporalBlock(hidden, kernel) for _ in range(n_blocks))
        self.interact = (
            nn.ModuleList(MeanFieldInteraction(hidden, gate) for _ in range(n_blocks))
            if interaction
            else None
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, self.dim))
        nn.init.zeros_(cast(nn.Linear, self.out[-1]).weight)
        nn.init.zeros_(cast(nn.Linear, self.out[-1]).bias)

    def forward(
        self, x: torch.Tensor, k: torch.Tensor | int, states: torch.Tensor, summary: torch.Tensor
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: ``[B, M, H, D]`` noisy segments.
            k: ``[B]`` (or scalar) diffusion step.
            states: ``[B, M, S]`` current (normalised) states of the M agents, followed by their views
                (``[B, M, S + V*V*C]``) when the denoiser was built with a ``view_shape``.
            summary: ``[B, P]`` population summary phi(mu_t) over all N agents.

        Returns:
            ``[B, M, H, D]`` noise estimate.
        """
        return self.denoise(x, k, self.condition(states, summary))

    def condition(self, states: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """The agents' conditioning before the step embedding: ``[B, M, S], [B, P] -> [B, M, C]``.

        It does not depend on the noisy sample or the step, so a sampler computes it once for every
        step over the same particles (:meth:`denoise`).
        """
        phi = summary.unsqueeze(1).expand(states.shape[0], states.shape[1], summary.shape[-1])
        return self.cond(torch.cat([self.obs(states), phi], dim=-1))

    def denoise(self, x: torch.Tensor, k: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise of ``x [B, M, H, D]`` at step ``k`` from the conditioning of :meth:`condition`.

        Args:
            x: ``[B, M, H, D]`` noisy segments.
            k: ``[B]``, ``[1]`` (or scalar) diffusion step.
            cond: ``[B, M, C]`` the agents' conditioning.

        Returns:
            ``[B, M, H, D]`` noise estimate.
        """
        if x.shape[-1] != self.dim or x.dim() != 4 or x.shape[-2] != self.horizon:
            raise ValueError(f"denoiser: expected [B, M, {self.horizon}, {self.dim}], got {tuple(x.shape)}")
        k = torch.as_tensor(k, device=x.device).reshape(-1).expand(x.shape[0])
        cond = cond + self.k_embed(k).unsqueeze(1)  # [B, M, C]
        h = self.inp(x) + self.pos
        for j, block in enumerate(self.temporal):
            h = block(h, cond)
            if self.interact is not None:
                h = self.interact[j](h)
        return self.out(h)
