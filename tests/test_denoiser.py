import pytest
import torch

from mfdiffuser.models.denoiser import MeanFieldDenoiser, ShiftedSteps, TemporalConv

S, A, P, H = 3, 4, 5, 6


def _net(**kw):
    torch.manual_seed(0)
    net = MeanFieldDenoiser(S, A, P, H, hidden=32, n_blocks=2, **kw)
    # the output layer starts at zero; give it weights so that the tests see the whole network
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    return net.eval()


def _inputs(b, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, m, H, S + A, generator=g),
        torch.randint(0, 20, (b,), generator=g),
        torch.randn(b, m, S, generator=g),
        torch.randn(b, P, generator=g),
    )


def test_permuting_agents_permutes_the_output():
    net = _net()
    x, k, s, phi = _inputs(2, 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    out = net(x, k, s, phi)
    out_p = net(x[:, perm], k, s[:, perm], phi)
    assert torch.allclose(out_p, out[:, perm], atol=1e-5)


@pytest.mark.parametrize("m", [1, 7, 64, 1000])
def test_same_weights_run_at_any_m(m):
    net = _net()
    x, k, s, phi = _inputs(1, m)
    out = net(x, k, s, phi)
    assert out.shape == (1, m, H, S + A)
    assert torch.isfinite(out).all()


def test_duplicating_particles_leaves_outputs_unchanged():
    net = _net()
    x, k, s, phi = _inputs(2, 5)
    out = net(x, k, s, phi)
    out2 = net(x.repeat(1, 3, 1, 1), k, s.repeat(1, 3, 1), phi)
    assert torch.allclose(out2, out.repeat(1, 3, 1, 1), atol=1e-5)


def test_interaction_blocks_couple_agents_and_ablation_decouples():
    x, k, s, phi = _inputs(1, 4)
    x2 = x.clone()
    x2[:, 1:] += 1.0  # change every agent but the first
    net = _net()
    assert not torch.allclose(net(x, k, s, phi)[:, 0], net(x2, k, s, phi)[:, 0], atol=1e-4)
    solo = _net(interaction=False)
    assert solo.interact is None
    assert torch.allclose(solo(x, k, s, phi)[:, 0], solo(x2, k, s, phi)[:, 0], atol=1e-6)


def test_conditioning_inputs_matter():
    net = _net()
    x, k, s, phi = _inputs(1, 3)
    base = net(x, k, s, phi)
    assert not torch.allclose(base, net(x, k, s + 1.0, phi), atol=1e-4)
    assert not torch.allclose(base, net(x, k, s, phi + 1.0), atol=1e-4)
    assert not torch.allclose(base, net(x, k + 5, s, phi), atol=1e-4)


def test_rejects_wrong_shapes():
    net = _net()
    x, k, s, phi = _inputs(1, 3)
    with pytest.raises(ValueError, match="expected"):
        net(x[..., :-1], k, s, phi)


def test_temporal_conv_equals_conv1d():
    torch.manual_seed(0)
    tc = TemporalConv(8, 3)
    conv = torch.nn.Conv1d(8, 8, 3, padding=1)
    conv.weight.data = tc.linear.weight.data.view(8, 3, 8).permute(0, 2, 1).contiguous()
    conv.bias.data = tc.linear.bias.data.clone()
    h = torch.randn(5, 6, 8)
    assert torch.allclose(tc(h), conv(h.transpose(1, 2)).transpose(1, 2), atol=1e-5)


def _padded_slices(h, kernel):
    """The plain definition: slices of a zero-padded copy, concatenated."""
    r, length = kernel // 2, h.shape[-2]
    padded = torch.nn.functional.pad(h, (0, 0, r, r))
    return torch.cat([padded[..., i : i + length, :] for i in range(kernel)], dim=-1)


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("length", [1, 2, 4, 9])
def test_shifted_steps_equal_padded_slices_bit_for_bit(kernel, length):
    g = torch.Generator().manual_seed(kernel * 10 + length)
    # magnitudes 1e-3..1e3 so that adding the gradient's terms in another order changes the result
    h = (torch.randn(2, 3, length, 6, generator=g) * torch.logspace(-3, 3, 6)).requires_grad_()
    grad = torch.randn(2, 3, length, kernel * 6, generator=g) * torch.logspace(-4, 4, kernel * 6)
    grad[0, 0] = -0.0  # the zeros the padded gradient adds turn -0.0 into 0.0
    want = _padded_slices(h, kernel)
    got = ShiftedSteps.apply(h, kernel)
    assert torch.equal(got, want)
    (want_grad,) = torch.autograd.grad(want, h, grad)
    (got_grad,) = torch.autograd.grad(got, h, grad)
    assert torch.equal(got_grad, want_grad)
    assert torch.equal(got_grad.signbit(), want_grad.signbit())


@pytest.mark.parametrize(("kernel", "length"), [(3, 6), (3, 1), (5, 2), (1, 4)])
def test_temporal_conv_equals_the_padded_shifted_copies_exactly(kernel, length):
    torch.manual_seed(0)
    tc = TemporalConv(8, kernel)
    h = torch.randn(2, 5, length, 8)
    r = kernel // 2
    padded = torch.nn.functional.pad(h, (0, 0, r, r))
    shifted = torch.cat([padded[..., i : i + length, :] for i in range(kernel)], dim=-1)
    assert torch.equal(tc(h), tc.linear(shifted))  # bit for bit: the plans do not change


def test_denoise_from_the_cached_conditioning_equals_forward_exactly():
    net = _net()
    x, k, s, phi = _inputs(2, 7)
    cond = net.condition(s, phi)
    assert cond.shape == (2, 7, 32)
    assert torch.equal(net.denoise(x, k, cond), net(x, k, s, phi))
    with pytest.raises(ValueError, match="expected"):
        net.denoise(x[..., :-1], k, cond)


def test_gate_at_zero_equals_the_model_without_interaction():
    gated, solo = _net(gate=True), _net(interaction=False)
    missing, unexpected = gated.load_state_dict(solo.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("interact.") for name in missing)
    assert all(block.gate.item() == 0.0 for block in gated.interact)
    x, k, s, phi = _inputs(2, 7)
    assert torch.equal(gated(x, k, s, phi), solo(x, k, s, phi))
    # the gate is learned: it gets a gradient at 0, and once open the agents are coupled again
    gated.train()
    gated(x, k, s, phi).pow(2).sum().backward()
    assert all(block.gate.grad.abs() > 0 for block in gated.interact)
    with torch.no_grad():
        for block in gated.interact:
            block.gate.fill_(1.0)
    ungated = _net()
    ungated.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.endswith("gate")})
    assert torch.allclose(gated(x, k, s, phi), ungated(x, k, s, phi), atol=1e-6)
