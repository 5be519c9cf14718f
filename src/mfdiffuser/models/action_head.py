"""The action head of a state planner: inverse dynamics ``p(a | s_t, s_{t+1}, c)`` and a last-step policy.

A diffusion model of states and one-hot action channels reproduces the action *histogram* of its data
poorly (continuous noise on one-hot channels blurs rare actions). Decoding each planned transition
with a classifier trained by cross-entropy is calibrated instead: the Decision Diffuser's inverse
dynamics (Ajay et al. 2023), here per agent with the mean-field context ``c = [phi(mu_t), t/T]``.
The last planned step has no next state, so it is decoded by a policy head ``p(a | s, c)``.
When observations end in an image view, the embedding of each agent's current view (the shared
:class:`~mfdiffuser.models.view.ViewEncoder`) joins the context of every planned step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mfdiffuser.models.blocks import MLP
from mfdiffuser.models.view import ViewEncoder


class ActionHead(nn.Module):
    """Action logits of every agent's planned transitions, ``[..., H, S] x [..., H, C] -> [..., H, A]``.

    Step ``h < H - 1`` is decoded from ``(s_h, s_{h+1}, c_h)`` by the inverse dynamics; the last step
    from ``(s_{H-1}, c_{H-1})`` by the policy head (so ``H = 1`` uses the policy head only).

    Args:
        state_size: S.
        context_size: C, features of the context of each step.
        n_actions: A.
        hidden: width of both MLPs.
        view_shape: ``[V, V, C]`` of the agents' current views, encoded into the context (None: no view).
    """

    def __init__(
        self,
        state_size: int,
        context_size: int,
        n_actions: int,
        hidden: int = 128,
        view_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.view = ViewEncoder(view_shape) if view_shape is not None else None
        context_size += self.view.out_dim if self.view is not None else 0
        self.inverse = MLP(2 * state_size + context_size, hidden, n_actions, n_layers=2)
        self.policy = MLP(state_size + context_size, hidden, n_actions, n_layers=2)

    def forward(
        self, states: torch.Tensor, context: torch.Tensor, views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[..., H, A]`` from planned states ``[..., H, S]`` and per-step contexts ``[..., H, C]``.

        ``states`` holds the H planned states s_t..s_{t+H-1} of a segment (not s_{t+H}); ``views``
        ``[..., V*V*C]`` the agents' current views (flattened row-major), required with a view encoder.
        """
        if self.view is not None:
            if views is None:
                raise ValueError("action head: built with a view encoder, so it needs the agents' views")
            emb = self.view(views).unsqueeze(-2)  # [..., 1, E]
            context = context.expand(*states.shape[:-1], context.shape[-1])
            context = torch.cat([context, emb.expand(*states.shape[:-1], emb.shape[-1])], dim=-1)
        last = self.policy(torch.cat([states[..., -1:, :], context[..., -1:, :]], dim=-1))
        if states.shape[-2] == 1:
            return last
        pairs = torch.cat([states[..., :-1, :], states[..., 1:, :], context[..., :-1, :]], dim=-1)
        return torch.cat([self.inverse(pairs), last], dim=-2)

    def loss(
        self,
        states: torch.Tensor,
        context: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor | None = None,
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked cross-entropy of the taken actions, a scalar.

        Args:
            states: ``[B, M, H, S]`` data states s_t..s_{t+H-1}.
            context: ``[B, M, H, C]`` (or broadcastable) contexts of each step.
            actions: ``[B, M, H]`` actions taken.
            mask: ``[B, M, H]`` valid steps.
            weights: ``[B, M]`` optional weights of each agent's *last* step (the policy head's), e.g.
                value weights; the inverse dynamics is a model of the data and stays unweighted.
            views: ``[B, M, V*V*C]`` the agents' views at the segment's first step (with a view encoder).
        """
        context = context.expand(*states.shape[:-1], context.shape[-1])
        logits = self(states, context, views)
        ce = F.cross_entropy(logits.flatten(0, -2), actions.flatten(), reduction="none").view_as(actions)
        m = mask.to(ce.dtype)
        if weights is not None:
            m = torch.cat([m[..., :-1], m[..., -1:] * weights.unsqueeze(-1)], dim=-1)
        return (ce * m).sum() / mask.sum().clamp_min(1)
