import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.models.action_head import ActionHead

S, A, P, T = 2, 4, 1, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learner(horizon=2):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=horizon, hidden=16, n_blocks=1, head_hidden=32, replan_every=1)
    return mfd.MFDiffuser(cfg, S, A, P, T)


def _train_head(learner, draw, steps=300, b=32, m=8):
    """Fit the action head alone on batches ``draw(g) -> (states [B, M, H, S], actions [B, M, H])``."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(learner.action_head.parameters(), lr=3e-3)
    for _ in range(steps):
        states, actions = draw(g, b, m)
        ctx = learner.step_context(torch.zeros(b, P), torch.randint(0, T - 2, (b,), generator=g))
        mask = torch.ones_like(actions, dtype=torch.bool)
        loss = learner.action_head.loss(states, ctx.unsqueeze(1), actions, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return learner.eval()


def _decode(learner, states, seed=0):
    x0 = torch.cat([states, torch.zeros(*states.shape[:-1], A)], dim=-1)
    ctx = learner.step_context(torch.zeros(1, P), torch.tensor([3]))
    return learner.decode_actions(x0, torch.Generator().manual_seed(seed), "head", ctx)


def test_logits_shapes_and_last_step_policy():
    head = ActionHead(S, 3, A, hidden=8)
    states, ctx = torch.randn(2, 5, 4, S), torch.randn(2, 5, 4, 3)
    logits = head(states, ctx)
    assert logits.shape == (2, 5, 4, A)
    # the last step depends only on (s_{H-1}, c_{H-1}); step h < H-1 on s_{h+1} too
    moved = states.clone()
    moved[:, :, 2] += 1.0
    changed = (head(moved, ctx) - logits).abs().amax((0, 1, 3))
    assert changed[0] == 0 and changed[1] > 0 and changed[2] > 0 and changed[3] == 0
    assert torch.equal(head(states[:, :, 3:], ctx[:, :, 3:]), logits[:, :, 3:])  # H = 1: the policy only


def test_weighted_cross_entropy_by_hand():
    head = ActionHead(S, 1, 2, hidden=4)
    for p in head.parameters():
        torch.nn.init.zeros_(p)  # logits 0: cross-entropy log 2 everywhere
    states, ctx = torch.zeros(1, 2, 2, S), torch.zeros(1, 2, 2, 1)
    actions = torch.zeros(1, 2, 2, dtype=torch.long)
    mask = torch.tensor([[[True, True], [True, False]]])
    ln2 = torch.log(torch.tensor(2.0))
    assert head.loss(states, ctx, actions, mask).item() == pytest.approx(ln2.item())
    # weights scale only the last (policy) step: (ln2 [inverse, agent 0] + 3 ln2 + ln2 [inverse, agent 1]) / 3
    w = torch.tensor([[3.0, 5.0]])
    assert head.loss(states, ctx, actions, mask, w).item() == pytest.approx(5 * ln2.item() / 3, rel=1e-6)


CELL_PROBS = torch.tensor([[0.7, 0.2, 0.06, 0.04], [0.04, 0.06, 0.3, 0.6]])


def _cell_data(g, b, m, h=2):
    """The action depends only on the agent's cell (sign of s[0]); next states carry no information."""
    states = torch.randn(b, m, h, S, generator=g)
    states[..., 0] += torch.where(states[..., 0] > 0, 1.0, -1.0)  # cells s[0] > 1 and s[0] < -1
    cell = (states[..., 0] > 0).long()
    actions = torch.multinomial(CELL_PROBS[cell].reshape(-1, A), 1, generator=g).reshape(cell.shape)
    return states, actions


def test_head_decoding_reproduces_each_cells_known_histogram():
    learner = _train_head(_learner(), _cell_data, steps=800, b=64)
    states = _cell_data(torch.Generator().manual_seed(7), 1, 8000)[0]
    actions = _decode(learner, states)
    cell = states[..., 0] > 0
    for h in range(2):  # h = 0: inverse dynamics, h = 1: the last-step policy
        for c in (0, 1):
            picked = actions[..., h][cell[..., h] == bool(c)]
            hist = torch.bincount(picked, minlength=A).float() / picked.numel()
            tv = 0.5 * (hist - CELL_PROBS[c]).abs().sum().item()
            assert tv < 0.04, (h, c, hist)
            assert (hist / CELL_PROBS[c]).sub(1).abs().max() < 0.25  # rare actions too


def test_inverse_dynamics_reads_the_action_from_the_transition():
    step = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # a moves the agent by step[a]

    def draw(g, b, m):
        s0 = torch.randn(b, m, S, generator=g)
        a = torch.randint(0, A, (b, m, 2), generator=g)
        s1 = s0 + step[a[..., 0]]
        return torch.stack([s0, s1], dim=2), a

    learner = _train_head(_learner(), draw, steps=400)
    states, actions = draw(torch.Generator().manual_seed(3), 1, 2000)
    decoded = _decode(learner, states)
    assert (decoded[..., 0] == actions[..., 0]).float().mean() > 0.97
    # the last step has no next state: its policy can only match the (uniform) marginal
    hist = torch.bincount(decoded[..., 1].flatten(), minlength=A).float() / 2000
    assert (hist - 0.25).abs().max() < 0.05


def test_head_decoding_needs_the_steps_context():
    learner = _learner().eval()
    with pytest.raises(ValueError, match="context"):
        learner.decode_actions(torch.zeros(1, 3, 2, S + A), None, "head")
