"""The shared observation encoder: feature vectors pass unchanged, views go through a convolution."""

import types

import numpy as np
import pytest
import torch

from mfdiffuser.algos import bc
from mfdiffuser.algos.common import dims_from_meta
from mfdiffuser.models.policy import PolicyNet
from mfdiffuser.models.view import ObsEncoder, ViewEncoder


def test_without_a_view_the_encoder_is_the_identity():
    enc = ObsEncoder(7)
    x = torch.randn(3, 4, 7)
    assert enc.out_size == 7 and enc(x) is x and not list(enc.parameters())


def test_features_pass_and_views_are_embedded():
    enc = ObsEncoder(5 + 3 * 3 * 2, (3, 3, 2), out_dim=6)
    x = torch.randn(2, 4, 5 + 18, requires_grad=True)
    y = enc(x)
    assert y.shape == (2, 4, 5 + 6) and enc.out_size == 11
    assert torch.equal(y[..., :5], x[..., :5])
    y[..., 5:].sum().backward()
    assert x.grad is not None and x.grad[..., 5:].abs().sum() > 0 and x.grad[..., :5].abs().sum() == 0


def test_view_layout_is_row_major_cells_then_channels():
    """A 1 in cell (row 0, column 2) of channel 1 reaches the convolution at [channel 1, row 0, column 2]."""
    enc = ViewEncoder((3, 3, 2), out_dim=4)
    flat = torch.zeros(1, 18)
    flat[0, (0 * 3 + 2) * 2 + 1] = 1.0
    image = torch.zeros(1, 2, 3, 3)
    image[0, 1, 0, 2] = 1.0
    assert torch.allclose(enc(flat), enc.out(enc.conv(image)))


def test_a_view_too_large_for_the_observation_is_refused():
    with pytest.raises(ValueError, match="view"):
        ObsEncoder(10, (3, 3, 2))


def test_policy_learns_an_action_that_only_the_view_shows():
    """Two features of noise, a 3 x 3 x 2 view: the action is the channel lit at the centre."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = PolicyNet(2 + 18, 1, 2, hidden=32, view_shape=(3, 3, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def batch(n=256):
        label = torch.randint(0, 2, (n,), generator=g)
        view = torch.zeros(n, 3, 3, 2)
        view[torch.arange(n), 1, 1, label] = 1.0
        view += 0.1 * torch.rand(n, 3, 3, 2, generator=g)
        x = torch.cat([torch.randn(n, 2, generator=g), view.reshape(n, -1)], dim=1)
        return x[:, None, :], label  # [n, M=1, S]

    for _ in range(150):
        x, label = batch()
        loss = torch.nn.functional.cross_entropy(net(x, torch.zeros(len(x), 1))[:, 0], label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, label = batch(1000)
    accuracy = (net(x, torch.zeros(len(x), 1))[:, 0].argmax(1) == label).float().mean()
    assert accuracy > 0.95


def test_battle_view_datasets_build_learners_with_the_encoder():
    pytest.importorskip("magent2")
    meta = types.SimpleNamespace(
        env="battle", env_args={"obs_mode": "view"}, state_size=34 + 845, n_actions=21, summary_size=35
    )
    meta.horizon = 8
    dims = dims_from_meta(meta)
    assert dims.view_shape == (13, 13, 5)
    learner = bc.build(bc.Config(hidden=16), meta)
    assert isinstance(learner.policy.encoder.obs.view, ViewEncoder)
    compact = types.SimpleNamespace(**{**meta.__dict__, "env_args": {}, "state_size": 34})
    assert dims_from_meta(compact).view_shape is None
    assert bc.build(bc.Config(hidden=16), compact).policy.encoder.obs.view is None
    logits = learner.policy(torch.from_numpy(np.zeros((2, 3, 879), np.float32)), torch.zeros(2, 36))
    assert logits.shape == (2, 3, 21)
