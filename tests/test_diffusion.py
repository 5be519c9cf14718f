import math

import numpy as np
import pytest
import torch

from mfdiffuser.diffusion import (
    LevelSchedule,
    NoiseSchedule,
    assign_blocks,
    branch,
    parent_index,
    representatives,
    state_order,
)


def test_cosine_schedule_matches_closed_form():
    sched = NoiseSchedule(20, "cosine")
    f = lambda i: math.cos((i / 20 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for k in (0, 5, 18):
        assert float(sched.abar(k)) == pytest.approx(f(k + 1) / f(0), rel=1e-9)
    # the last beta is capped at 0.999 (f(20) / f(19) would be 1 exactly)
    assert float(sched.abar(19)) == pytest.approx(f(19) / f(0) * 0.001, rel=1e-9)
    assert float(sched.abar(-1)) == 1.0
    assert torch.all(sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1])


def test_linear_schedule_first_steps_by_hand():
    sched = NoiseSchedule(3, "linear", beta_start=0.1, beta_end=0.3)
    assert sched.betas.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert sched.alphas_cumprod.tolist() == pytest.approx([0.9, 0.72, 0.504])


def test_add_noise_and_predict_x0_invert():
    sched = NoiseSchedule(10)
    x0, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    k = torch.tensor([0, 4, 9])
    xk = sched.add_noise(x0, eps, k)
    ab = float(sched.abar(4))
    assert torch.allclose(xk[1], math.sqrt(ab) * x0[1] + math.sqrt(1 - ab) * eps[1], atol=1e-6)
    assert torch.allclose(sched.predict_x0(xk, eps, k), x0, atol=1e-4)


def test_ddim_eta1_consecutive_equals_ddpm():
    sched = NoiseSchedule(10)
    xk, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for k in (9, 4, 1):
        a = sched.ddim_step(eps, k, k - 1, xk, eta=1.0, generator=torch.Generator().manual_seed(3))
        b = sched.ddpm_step(eps, k, xk, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=1e-5)
        assert torch.allclose(a.pred_x0, b.pred_x0, atol=1e-6)


def test_ddim_deterministic_with_exact_noise_recovers_x0():
    sched = NoiseSchedule(20)
    x0, eps = torch.randn(5, 2), torch.randn(5, 2)
    x = sched.add_noise(x0, eps, 19)
    ts = sched.timesteps(7)
    assert ts[0] == 19 and ts[-1] == 0 and len(ts) == 7
    for i, k in enumerate(ts):
        k_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = sched.ddim_step(eps, k, k_prev, x, eta=0.0).prev_sample  # the oracle noise is eps at every level
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddim_clip_bounds_prediction():
    sched = NoiseSchedule(10)
    x = torch.full((4,), 10.0)
    out = sched.ddim_step(torch.zeros(4), 5, 2, x, clip=(torch.tensor(-1.0), torch.tensor(1.0)))
    assert torch.all(out.pred_x0 == 1.0)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="n_steps"):
        NoiseSchedule(0)
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(5, "quadratic")
    with pytest.raises(ValueError, match="sampling steps"):
        NoiseSchedule(5).timesteps(6)


def test_level_schedule_cost_cap_and_validation():
    lv = LevelSchedule((16, 128, 1000), (8, 6, 6))
    assert lv.cost() == 16 * 8 + 128 * 6 + 1000 * 6
    assert lv.total_steps == 20 and lv.final_size == 1000
    assert lv.capped(100) == LevelSchedule((16, 100), (8, 12))
    assert lv.capped(10) == LevelSchedule((10,), (20,))
    assert lv.with_final(5000) == LevelSchedule((16, 128, 5000), (8, 6, 6))
    assert lv.with_final(64) == LevelSchedule((16, 64), (8, 12))
    with pytest.raises(ValueError, match="increasing"):
        LevelSchedule((16, 16), (1, 1))
    with pytest.raises(ValueError, match="as many"):
        LevelSchedule((16, 32), (1,))


def test_branching_counts_and_keeps_the_mean():
    sched = NoiseSchedule(20)
    x0 = torch.randn(2, 16, 3, 5)
    for m_to in (128, 100, 16):
        parents = parent_index(16, m_to)
        counts = torch.bincount(parents, minlength=16)
        assert len(parents) == m_to
        assert counts.min() == m_to // 16 and counts.max() == -(-m_to // 16)
        kids = branch(x0, parents, 7, sched, torch.Generator().manual_seed(0))
        assert kids.shape == (2, m_to, 3, 5)
        ab = float(sched.abar(7))
        if m_to > 16:
            # every family's mean is the re-noising centre sqrt(abar) x0 of its parent
            fam = torch.zeros_like(x0).index_add_(1, parents, kids) / counts.view(1, -1, 1, 1)
            assert torch.allclose(fam, math.sqrt(ab) * x0, atol=1e-5)
            # so the particles' mean is kept (families of equal size here)
            if m_to % 16 == 0:
                assert torch.allclose(kids.mean(1), math.sqrt(ab) * x0.mean(1), atol=1e-5)
    # siblings are decorrelated with unit marginal noise variance
    x0 = torch.zeros(1, 4, 1, 20000)
    kids = branch(x0, parent_index(4, 32), 19, sched, torch.Generator().manual_seed(1))
    noise = kids / math.sqrt(1 - float(sched.abar(19)))
    assert noise.var().item() == pytest.approx(1.0, abs=0.02)
    assert torch.corrcoef(noise[0, :2, 0])[0, 1].abs() < 0.3
    assert torch.equal(branch(x0, parent_index(4, 8), -1, sched), x0[:, parent_index(4, 8)])


def test_branching_keep_interpolates_between_renoising_and_copying():
    sched = NoiseSchedule(20)
    gen = torch.Generator().manual_seed(2)
    x0, x_k = torch.randn(1, 8, 2, 3, generator=gen), torch.randn(1, 8, 2, 3, generator=gen)
    parents = parent_index(8, 64)
    # rho = 1 copies each parent's current sample
    assert torch.allclose(branch(x0, parents, 9, sched, gen, x_k, keep=1.0), x_k[:, parents], atol=1e-5)
    # in between, each family's mean moves from sqrt(abar) x0 towards the parent's sample
    ab = float(sched.abar(9))
    kids = branch(x0, parents, 9, sched, gen, x_k, keep=0.4)
    fam = torch.zeros_like(x0).index_add_(1, parents, kids) / 8
    assert torch.allclose(fam, 0.6 * math.sqrt(ab) * x0 + 0.4 * x_k, atol=1e-5)
    with pytest.raises(ValueError, match="keep"):
        branch(x0, parents, 9, sched, gen, None, keep=0.5)
    with pytest.raises(ValueError, match="keep"):
        branch(x0, parents, 9, sched, gen, x_k, keep=1.5)


def test_grouping_blocks_nested_and_histogram_preserving():
    rng = np.random.default_rng(0)
    states = rng.integers(0, 3, size=(1000, 2)).astype(np.float32)
    order = state_order(states, rng)
    assert sorted(order.tolist()) == list(range(1000))
    # contiguous blocks hold equal states (3 x 3 = 9 distinct states)
    keys = states[order, 0] * 3 + states[order, 1]
    assert (np.diff(keys) != 0).sum() == 8
    fine, coarse = assign_blocks(order, 100), assign_blocks(order, 10)
    assert np.all(np.bincount(fine) == 10)
    assert np.array_equal(coarse, fine // 10)  # levels nest
    reps = representatives(order, 100)
    assert np.array_equal(fine[reps], np.arange(100))  # each representative belongs to its own block
    with pytest.raises(ValueError, match="M <= N"):
        representatives(order, 2000)
