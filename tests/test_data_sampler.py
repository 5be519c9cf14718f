import numpy as np
import pytest
import torch

from mfdiffuser.data import DatasetMeta, TrajBatch, WindowSampler, load_dataset
from mfdiffuser.data.dataset import EpisodeRecord, write_dataset
from mfdiffuser.data.sampler import discounted_to_go

T, K, N, P = 6, 5, 8, 2
LENGTHS = [6, 3, 6, 1, 4, 6, 2]


def handmade(path, lengths=LENGTHS, nan=False, chunk_bytes=1 << 20, mixed=False):
    """Episodes whose states spell out (episode, t, agent): s = [e, min(t, len), agent_id].

    ``mixed``: a mixed dataset, even episodes labelled random and odd ones expert.
    """
    records = []
    for e, n in enumerate(lengths):
        agents = np.array([0, 2, 3, 5, 7])
        tt = np.minimum(np.arange(T + 1), n)
        states = np.zeros((T + 1, K, 3), np.float32)
        states[..., 0] = e
        states[..., 1] = tt[:, None]
        states[..., 2] = agents[None, :]
        rewards = np.zeros((T, K), np.float32)
        rewards[:n] = (e + 1) * (np.arange(n)[:, None] + 1) + 0.25 * agents[None, :]
        actions = np.zeros((T, K), np.uint8)
        actions[:n] = (np.arange(n)[:, None] + agents[None, :]) % 3
        alive = np.zeros((T + 1, K), bool)
        alive[: n + 1] = True
        if e == 2:
            alive[3:, 1] = False  # agent 2 dies after step 2
        pop = np.zeros(T)
        pop[:n] = 0.5 * (np.arange(n) + 1) + e
        summ = np.stack([tt, np.full(T + 1, e)], axis=1).astype(np.float32)
        if nan and e == 1:
            rewards[0, 0] = np.nan
        records.append(EpisodeRecord(
            states=states, actions=actions, rewards=rewards, alive=alive, summaries=summ, pop_reward=pop,
            length=n, terminated=n < T, truncated=n == T,
            quality=("random", "expert")[e % 2] if mixed else "medium", env_seed=100 + e,
            policy_seed=200 + e, agent_index=agents.astype(np.int32),
        ))
    meta = DatasetMeta(
        env="gaussian-squeeze", env_args={"n_agents": N, "horizon": T}, n_agents=N,
        quality="mixed" if mixed else "medium",
        horizon=T, state_size=3, n_actions=3, summary_size=P, n_episodes=len(lengths), stored_agents=K,
        ref_returns={"random": 1.0, "expert": 3.0}, ref_episodes=1, seed=0, behaviour_policy={},
    )
    write_dataset(path, meta, (r.arrays() for r in records), chunk_bytes=chunk_bytes)
    return records


def check_batch(batch: TrajBatch, records, gamma=1.0):
    b_, m_, h1, _ = batch.states.shape
    h = h1 - 1
    assert batch.actions.shape == (b_, m_, h) and batch.actions.dtype == torch.int64
    assert batch.summaries.shape == (b_, h + 1, P) and batch.mask.dtype == torch.bool
    st = batch.states.numpy()
    for b in range(b_):
        e = int(st[b, 0, 0, 0])
        rec = records[e]
        t0 = int(batch.timestep[b])
        assert 0 <= t0 < rec.length
        agents = st[b, :, 0, 2].astype(int)
        assert len(set(agents)) == m_  # distinct agents
        pos = [list(rec.agent_index).index(a) for a in agents]
        for j in range(h + 1):
            assert np.all(st[b, :, j, 0] == e)
            assert np.all(st[b, :, j, 1] == min(t0 + j, rec.length))  # padded states repeat the last
            assert np.allclose(batch.summaries[b, j].numpy(), [min(t0 + j, rec.length), e])
        for j in range(h):
            t = t0 + j
            for mi, k in enumerate(pos):
                inside = t < rec.length and rec.alive[t, k]
                assert bool(batch.mask[b, mi, j]) == inside
                exp_r = rec.rewards[t, k] if inside else 0.0
                exp_a = rec.actions[t, k] if inside else 0
                assert batch.rewards[b, mi, j].item() == pytest.approx(exp_r)
                assert batch.actions[b, mi, j].item() == exp_a
        for mi, k in enumerate(pos):  # the step after the window: inside the episode, agent alive
            t = t0 + h
            assert bool(batch.next_mask[b, mi]) == (t < rec.length and bool(rec.alive[t, k]))
        for mi, k in enumerate(pos):
            disc = gamma ** np.arange(rec.length - t0)
            expected = float((disc * rec.rewards[t0 : rec.length, k]).sum())
            assert batch.rtg[b, mi].item() == pytest.approx(expected)
        pdisc = gamma ** np.arange(rec.length - t0)
        assert batch.pop_rtg[b].item() == pytest.approx(float((pdisc * rec.pop_reward[t0:rec.length]).sum()))
        assert batch.episode_return[b].item() == pytest.approx(float(rec.pop_reward.sum()))
        team = [rec.pop_reward[t0 + j] if t0 + j < rec.length else 0.0 for j in range(h)]
        assert batch.pop_rewards is not None and batch.pop_rewards[b].tolist() == pytest.approx(team)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_windows_match_hand_built_episodes(tmp_path, in_memory, gamma):
    records = handmade(tmp_path / "d.h5")
    ds = load_dataset(tmp_path / "d.h5", in_memory=in_memory)
    s = WindowSampler(ds, horizon=3, batch_size=64, m_range=(2, 4), gamma=gamma, seed=1)
    for _ in range(3):
        batch = s.sample()
        assert 2 <= batch.n_agents <= 4 and batch.horizon == 3 and batch.batch_size == 64
        check_batch(batch, records, gamma)
    check_batch(s.sample(m=K), records, gamma)  # all stored agents


def test_starts_are_uniform_over_steps(tmp_path):
    handmade(tmp_path / "d.h5")
    s = WindowSampler(load_dataset(tmp_path / "d.h5"), horizon=2, batch_size=4000, m_range=(1, 1), seed=0)
    eps = s.sample().states[:, 0, 0, 0].numpy().astype(int)
    freq = np.bincount(eps, minlength=len(LENGTHS)) / eps.size
    expected = np.array(LENGTHS) / sum(LENGTHS)  # each (episode, t) start equally likely
    assert np.abs(freq - expected).max() < 0.03


def test_m_range_capped_and_bad_m(tmp_path):
    handmade(tmp_path / "d.h5")
    ds = load_dataset(tmp_path / "d.h5")
    s = WindowSampler(ds, horizon=2, batch_size=4, m_range=(3, 100), seed=0)
    assert s.m_range == (3, K)
    assert {s.sample().n_agents for _ in range(40)} == {3, 4, 5}
    with pytest.raises(ValueError, match="m must be"):
        s.sample(m=K + 1)
    with pytest.raises(ValueError, match="m_range"):
        WindowSampler(ds, horizon=2, batch_size=4, m_range=(5, 2))
    with pytest.raises(ValueError, match="gamma"):
        WindowSampler(ds, horizon=2, batch_size=4, gamma=0.0)


def test_same_seed_same_batches(tmp_path):
    handmade(tmp_path / "d.h5")
    ds = load_dataset(tmp_path / "d.h5")
    a = WindowSampler(ds, horizon=3, batch_size=8, seed=5, m_range=(2, 4))
    b = WindowSampler(ds, horizon=3, batch_size=8, seed=5, m_range=(2, 4))
    for x, y in zip(a, b, strict=False):
        assert torch.equal(x.states, y.states) and torch.equal(x.actions, y.actions)
        break


def test_prefetch_yields_the_same_batches(tmp_path):
    import itertools

    handmade(tmp_path / "d.h5", chunk_bytes=1000)
    ds = load_dataset(tmp_path / "d.h5", in_memory=False)
    a = WindowSampler(ds, horizon=3, batch_size=8, seed=5, m_range=(2, 4), cache_bytes=5000)
    b = WindowSampler(ds, horizon=3, batch_size=8, seed=5, m_range=(2, 4), cache_bytes=5000)
    it = a.prefetch(depth=3)
    for x in itertools.islice(it, 6):
        y = b.sample()
        assert torch.equal(x.states, y.states) and torch.equal(x.rtg, y.rtg) and torch.equal(x.mask, y.mask)
    it.close()  # stops the thread


def test_bounded_pool_visits_everything(tmp_path):
    lengths = [3] * 40
    records = handmade(tmp_path / "d.h5", lengths=lengths, chunk_bytes=1000)  # 2 episodes per chunk
    ds = load_dataset(tmp_path / "d.h5", in_memory=False)
    s = WindowSampler(ds, horizon=2, batch_size=16, m_range=(2, 2), seed=0, cache_bytes=5000)
    assert s.block_episodes == 2 and s.pool_episodes == 6 and not s.resident
    seen = set()
    for _ in range(200):
        batch = s.sample()
        check_batch(batch, records)
        seen.update(batch.states[:, 0, 0, 0].numpy().astype(int).tolist())
    assert seen == set(range(len(lengths)))


@pytest.mark.parametrize("m", [3, 12, 30, 50])
def test_agent_subsets_distinct_and_uniform(tmp_path, m):
    handmade(tmp_path / "d.h5")
    s = WindowSampler(load_dataset(tmp_path / "d.h5"), horizon=1, batch_size=4, seed=0)
    s.k = 50  # exercise both subset algorithms (Floyd for 4 M <= K, random keys otherwise)
    rows = s._choose_agents(60000 // m, m)
    assert rows.shape == (60000 // m, m) and rows.min() >= 0 and rows.max() < 50
    assert all(len(set(r)) == m for r in rows[:500])
    counts = np.bincount(rows.ravel(), minlength=50) / rows.size
    assert np.abs(counts - 1 / 50).max() < 0.004  # every agent equally likely


def test_discounted_to_go_by_hand():
    r = np.array([[1.0, 2.0, 4.0]])
    assert np.allclose(discounted_to_go(r, 1.0), [[7.0, 6.0, 4.0, 0.0]])
    assert np.allclose(discounted_to_go(r, 0.5), [[1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 0.0]])


def test_log_uniform_m_and_agents_per_batch(tmp_path):
    handmade(tmp_path / "d.h5")
    ds = load_dataset(tmp_path / "d.h5")
    s = WindowSampler(ds, horizon=2, batch_size=6, m_range=(1, 4), seed=0, m_draw="log", agents_per_batch=8)
    ms = np.array([s.draw_m() for _ in range(20000)])
    # floor(exp(U(log 1, log 5))): P(M = m) = log((m + 1) / m) / log 5
    expected = np.log((np.arange(1, 5) + 1) / np.arange(1, 5)) / np.log(5)
    np.testing.assert_allclose(np.bincount(ms, minlength=5)[1:] / ms.size, expected, atol=0.01)
    # B = min(6, 8 // M): 6, 4, 2, 2 windows for M = 1..4, so B x M <= 8 once M > 1
    assert [s.rows(m) for m in (1, 2, 3, 4)] == [6, 4, 2, 2]
    for _ in range(20):
        batch = s.sample()
        assert batch.batch_size == s.rows(batch.n_agents)
    assert WindowSampler(ds, horizon=2, batch_size=6, seed=0).rows(4) == 6  # unbounded by default
    with pytest.raises(ValueError, match="m_draw"):
        WindowSampler(ds, horizon=2, batch_size=4, m_draw="square")
    with pytest.raises(ValueError, match="agents_per_batch"):
        WindowSampler(ds, horizon=2, batch_size=4, agents_per_batch=0)


def test_expert_flag_follows_episode_labels(tmp_path):
    handmade(tmp_path / "d.h5", mixed=True)
    s = WindowSampler(load_dataset(tmp_path / "d.h5"), horizon=2, batch_size=200, m_range=(2, 2), seed=0)
    batch = s.sample()
    episode = batch.states[:, 0, 0, 0].long()  # s[0] spells the episode
    assert torch.equal(batch.expert, episode % 2 == 1)
    assert batch.expert.any() and not batch.expert.all()
    handmade(tmp_path / "m.h5")
    plain = WindowSampler(load_dataset(tmp_path / "m.h5"), horizon=2, batch_size=50, seed=0).sample()
    assert not plain.expert.any()


def test_state_dict_restores_the_pool_and_the_generator(tmp_path):
    handmade(tmp_path / "d.h5", lengths=[3] * 40, chunk_bytes=1000)  # 20 blocks of 2 episodes
    ds = load_dataset(tmp_path / "d.h5", in_memory=False)
    a = WindowSampler(ds, horizon=2, batch_size=8, m_range=(2, 3), seed=0, cache_bytes=5000)
    assert a.pool_blocks == 3 and not a.resident
    for _ in range(7):  # 6 swaps: every pool position replaced twice
        a.sample()
    state = a.state_dict()
    b = WindowSampler(ds, horizon=2, batch_size=8, m_range=(2, 3), seed=1, cache_bytes=5000)
    assert b.state_dict()["blocks"] != state["blocks"]
    b.load_state_dict(state)
    assert b.state_dict() == state
    assert np.flatnonzero(b._is_resident).tolist() == sorted(state["blocks"])
    for _ in range(5):
        x, y = a.sample(), b.sample()
        assert torch.equal(x.states, y.states) and torch.equal(x.actions, y.actions)
    with pytest.raises(ValueError, match="does not fit this pool"):
        b.load_state_dict({**state, "blocks": [0, 1, 99]})
