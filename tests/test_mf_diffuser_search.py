"""Critic-guided coarse-to-fine search of the MF-Diffuser planner."""

import numpy as np
import pytest
import torch

from mfdiffuser.algos import mf_diffuser as mfd
from mfdiffuser.diffusion import LevelSchedule

S, A, P, T = 3, 4, 5, 10


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _learner(**kw):
    torch.manual_seed(0)
    cfg = mfd.Config(horizon=3, hidden=16, n_blocks=1, value_hidden=16, replan_every=1, **kw)
    learner = mfd.MFDiffuser(cfg, S, A, P, T)
    torch.nn.init.normal_(learner.denoiser.out[-1].weight, std=0.02)
    return learner.eval()


def _inputs(seed, n=40):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, S)).astype(np.float32), g.random(P).astype(np.float32)


# Plans of the planner before candidate search existed (one candidate), for fixed seeds: particle
# actions (M_L x H, row-major) and the sum and sum of squares of the planned states. Untrained
# weights make the far-from-data state channels large, hence the relative tolerance on those.
PINNED = [
    ((4, 8, 24), (2, 2, 2), 0, "categorical", 1.0, 0.0,
     "110120120033032033010332310200100311231130131023012011332133113030012020",
     17062.896484375, 22717124.0),
    ((4, 8, 24), (2, 2, 2), 1, "argmax", 0.5, 0.3,
     "331333133232132233010112012030130013133130111110101100313113313002002012",
     -3016.78759765625, 11131342.0),
    ((16,), (6,), 2, "categorical", 1.0, 0.0,
     "320322012121001032332113131130102003111212233231",
     6108.1650390625, 13821284.0),
]


@pytest.mark.parametrize(("sizes", "steps", "seed", "decode", "eta", "keep", "actions", "s1", "s2"), PINNED)
def test_one_candidate_reproduces_the_pinned_plans(sizes, steps, seed, decode, eta, keep, actions, s1, s2):
    learner = _learner()
    states, summary = _inputs(seed)
    plan = mfd.sample_plan(
        learner, states, summary, 2, LevelSchedule(sizes, steps), np.random.default_rng(seed),
        torch.Generator().manual_seed(seed), eta, decode, keep,
    )
    assert "".join(map(str, plan.particle_actions.ravel().tolist())) == actions
    assert float(plan.particle_states.sum()) == pytest.approx(s1, rel=1e-4)
    assert float((plan.particle_states**2).sum()) == pytest.approx(s2, rel=1e-4)
