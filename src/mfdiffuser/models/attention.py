"""A transformer noise model over agent x time tokens, with a per-agent or a joint attention scope.

``scope="time"`` attends over the H steps of each agent separately (Decision Diffuser applied agent by
agent, Ajay et al. 2023); ``scope="joint"`` attends over all M x H tokens of the population at every
block (MADiff's centralized planner, Zhu et al. 2024), so its cost grows as (M H)^2. Both share every
weight shape, so the two baselines differ only in who attends to whom.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mfdiffuser.models.blocks import MLP
from mfdiffuser.models.denoiser import SinusoidalEmbedding

SCOPES = ("time", "joint")


class AttentionBlock(nn.Module):
    """Pre-norm transformer block ``[B, L, C] -> [B, L, C]``: self-attention over L tokens, then an MLP.

    Attention runs through ``scaled_dot_product_attention``, which picks a fused kernel that does not
    materialise the ``L x L`` scores where one is available.
    """

    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(b, length, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        )
        att = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, heads, L, C / heads]
        x = x + self.proj(att.transpose(1, 2).reshape(b, length, c))
        return x + self.mlp(self.norm2(x))


class AgentTimeTransformer(nn.Module):
    """``eps_theta(x_k [B, M, H, D], k, cond [B, M, E]) -> [B, M, H, D]``.

    Each token is one agent at one step; it gets a learned step-position embedding, the agent's
    conditioning embedding and the diffusion-step embedding. No agent-identity embedding: agents are
    homogeneous, so the joint model is permutation-equivariant in the agent axis.

    Args:
        dim: D, channels per token.
        horizon: H, steps per agent.
        cond_size: E, per-agent conditioning features.
        hidden: C, model width.
        n_layers: transformer blocks.
        n_heads: attention heads.
        scope: ``time`` (per agent) or ``joint`` (all agents and steps).
    """

    def __init__(
        self,
        dim: int,
        horizon: int,
        cond_size: int,
        hidden: int = 128,
        n_layers: int = 3,
        n_heads: int = 4,
        scope: str = "time",
    ) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"attention scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if hidden % n_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.dim, self.horizon, self.scope = dim, horizon, scope
        self.hidden, self.n_layers, self.n_heads = hidden, n_layers, n_heads
        self.inp = nn.Linear(dim, hidden)
        self.pos = nn.Parameter(torch.zeros(horizon, hidden))
        self.k_embed = nn.Sequential(SinusoidalEmbedding(hidden), MLP(hidden, hidden, hidden, n_layers=1))
        self.cond = MLP(cond_size, hidden, hidden, n_layers=2)
        self.blocks = nn.ModuleList(AttentionBlock(hidden, n_heads) for _ in range(n_layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(cast(nn.Linear, self.out[-1]).weight)
        nn.init.zeros_(cast(nn.Linear, self.out[-1]).bias)

    def forward(self, x: torch.Tensor, k: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        b, m, h_len, d = x.shape
        if d != self.dim or h_len != self.horizon:
            raise ValueError(f"expected x of shape [B, M, {self.horizon}, {self.dim}], got {tuple(x.shape)}")
        k = torch.as_tensor(k, device=x.device).reshape(-1).expand(b)
        h = self.inp(x) + self.pos + (self.cond(cond) + self.k_embed(k).unsqueeze(1)).unsqueeze(2)
        tokens = h.reshape(b, m * h_len, -1) if self.scope == "joint" else h.reshape(b * m, h_len, -1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.out(tokens).reshape(b, m, h_len, d)

    def flops(self, n_agents: int, batch: int = 1) -> float:
        """Multiply-adds x 2 of one forward on ``batch`` segments of ``n_agents`` agents (for budgets)."""
        c = self.hidden
        seq = n_agents * self.horizon if self.scope == "joint" else self.horizon
        n_seq = batch if self.scope == "joint" else batch * n_agents
        per_layer = 2 * (12 * seq * c * c + 2 * seq * seq * c)  # projections + FFN, then QK^T and AV
        return float(n_seq * self.n_layers * per_layer)

    def attention_bytes(self, n_agents: int, batch: int = 1) -> float:
        """Bytes of one layer's attention scores if materialised, ``batch x heads x L^2`` float32."""
        seq = n_agents * self.horizon if self.scope == "joint" else self.horizon
        n_seq = batch if self.scope == "joint" else batch * n_agents
        return float(n_seq * self.n_heads * seq * seq * 4)
