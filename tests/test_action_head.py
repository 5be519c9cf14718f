import pytest
import torch
from torch.nn import functional as F

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.data.batch import TrajBatch
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


# ------------------------------------------------- training the head on the denoiser's predictions
RING, RING_H = 6, 3
RING_MOVES = torch.tensor([-1, 0, 1])  # action a moves the agent by RING_MOVES[a] cells, no noise


def _ring_batch(g, b=16, m=8):
    """Agents on a ring of one-hot cells taking uniform actions: the states lie on a lattice."""
    cells = [torch.randint(0, RING, (b, m), generator=g)]
    actions = torch.randint(0, 3, (b, m, RING_H), generator=g)
    for h in range(RING_H):
        cells.append((cells[-1] + RING_MOVES[actions[..., h]]) % RING)
    states = torch.nn.functional.one_hot(torch.stack(cells, 2), RING).float()  # [B, M, H+1, S]
    return TrajBatch(
        states=states, actions=actions, rewards=torch.zeros(b, m, RING_H),
        summaries=torch.zeros(b, RING_H + 1, P), rtg=torch.zeros(b, m), pop_rtg=torch.zeros(b),
        mask=torch.ones(b, m, RING_H, dtype=torch.bool),
        timestep=torch.randint(0, T - RING_H, (b,), generator=g),
        episode_return=torch.zeros(b),
    )


def _train_on_ring(head_inputs, steps=300):
    """Train a whole learner on ring batches; the denoiser learns 10x slower than the rest, so it is
    far from converged and its predicted states lie off the lattice (as plans of an undertrained
    model do)."""
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=RING_H, hidden=16, n_blocks=1, value_hidden=8, head_hidden=32, beta=0.0,
                     head_inputs=head_inputs, replan_every=1)
    learner = mfd.MFDiffuser(cfg, RING, 3, P, T)
    denoiser = list(learner.denoiser.parameters())
    rest = [p for p in learner.parameters() if all(p is not q for q in denoiser)]
    opt = torch.optim.Adam([{"params": denoiser, "lr": 3e-4}, {"params": rest}], lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = learner.loss(_ring_batch(g)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return learner.eval()


@torch.no_grad()
def _inverse_dynamics_ce(learner, denoiser, predicted=True):
    """Cross-entropy of ``learner``'s inverse dynamics on held-out transitions, read from the states
    ``denoiser`` predicts at the least noisy quarter of the diffusion steps (or from the data's)."""
    g = torch.Generator().manual_seed(99)
    total = 0.0
    for _ in range(10):
        batch = _ring_batch(g, 32, 16)
        x0 = learner.encode(batch)
        s0 = learner.cond_states(batch.states[:, :, 0])
        ctx = learner.context(batch.summaries[:, 0], batch.timestep)
        k = torch.randint(0, 5, (32,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        states = denoiser.denoising_loss(x0, s0, ctx, noise, k, batch.mask, predict=True).x0_hat
        states = states if predicted else x0
        step_ctx = learner.step_context(batch.summaries[:, 0], batch.timestep).unsqueeze(1)
        logits = learner.action_head(states[..., :RING], step_ctx.expand(*x0.shape[:-1], -1))[:, :, :-1]
        total += F.cross_entropy(logits.reshape(-1, 3), batch.actions[:, :, :-1].reshape(-1)).item() / 10
    return total


def test_head_trained_on_denoised_states_reads_off_lattice_transitions_better():
    data, denoised, both = (_train_on_ring(inputs) for inputs in ("data", "denoised", "both"))
    # the head's cross-entropy never reaches the denoiser: the same denoiser whatever the head reads
    for other in (denoised, both):
        pairs = zip(data.denoiser.parameters(), other.denoiser.parameters(), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs)
    ce = {"data": _inverse_dynamics_ce(data, data), "denoised": _inverse_dynamics_ce(denoised, data),
          "both": _inverse_dynamics_ce(both, data)}
    # on the denoiser's predictions the data-only head is overconfident (measured 0.39 / 0.24 / 0.24)
    assert ce["denoised"] < 0.8 * ce["data"]
    assert ce["both"] < 0.8 * ce["data"]
    # on the data's own (lattice) transitions, both still reads the action almost surely
    assert _inverse_dynamics_ce(both, data, predicted=False) < 0.05
