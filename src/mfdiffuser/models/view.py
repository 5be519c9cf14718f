"""The observation encoder every per-agent network shares: feature vectors pass, image views are convolved.

An env may close each observation with an image view of the agent's surroundings (MAgent2's 13 x 13
x C view in ``battle``'s ``view`` mode; :meth:`~mfdiffuser.envs.base.PopulationEnv.observation_view`).
:class:`ObsEncoder` splits ``[..., S]`` into the feature part and the flattened view, encodes the view
with a small convolutional network (:class:`ViewEncoder`, in the spirit of the DQN-style encoders of
MAgent's own baselines) and returns ``[features, view embedding]``; without a view it is the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ViewEncoder(nn.Module):
    """``[..., V * V * C]`` row-major views (``[V, V, C]``) -> ``[..., out_dim]`` embeddings.

    Two 3 x 3 convolutions (the second with stride 2) and a linear layer: the first sees an agent's
    neighbours (attack reach), the second the ring of cells a move can reach.
    """

    def __init__(self, view_shape: tuple[int, int, int], out_dim: int = 64, channels: int = 16) -> None:
        super().__init__()
        v, w, c = view_shape
        self.view_shape = (v, w, c)
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.Mish(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.Mish(),
            nn.Flatten(),
        )
        flat = 2 * channels * math.ceil(v / 2) * math.ceil(w / 2)
        self.out = nn.Linear(flat, out_dim)
        self.out_dim = out_dim

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        lead = views.shape[:-1]
        x = views.reshape(-1, *self.view_shape).permute(0, 3, 1, 2)  # [n, C, V, V]
        return self.out(self.conv(x)).reshape(*lead, self.out_dim)


class ObsEncoder(nn.Module):
    """``[..., S]`` observations -> ``[..., out_size]`` inputs of a per-agent network.

    With ``view_shape`` None the observation passes unchanged (``out_size = S``); otherwise its last
    ``V * V * C`` features are a view, replaced by their :class:`ViewEncoder` embedding.
    """

    def __init__(self, state_size: int, view_shape: tuple[int, int, int] | None = None, out_dim: int = 64):
        super().__init__()
        self.view: ViewEncoder | None = None
        self.feature_size = state_size
        if view_shape is not None:
            view_size = math.prod(view_shape)
            if view_size >= state_size:
                raise ValueError(f"a {view_shape} view needs more than {state_size} observation features")
            self.view = ViewEncoder(view_shape, out_dim)
            self.feature_size = state_size - view_size
        self.out_size = self.feature_size + (out_dim if self.view is not None else 0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.view is None:
            return states
        features, views = states[..., : self.feature_size], states[..., self.feature_size :]
        return torch.cat([features, self.view(views)], dim=-1)
