"""The AMC DDPG agent: shapes, warm-up, noise, replay, baseline, determinism, resume, learning."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from hwcompress.search.amc.ddpg import (
    Actor,
    Critic,
    DDPGAgent,
    DDPGSettings,
    Transition,
    normalise_features,
)

STATE_DIM = 5
N_LAYERS = 3


def small(**overrides) -> DDPGSettings:
    """Small networks and batches keep every test well under a second on a shared CPU."""
    base = dict(hidden=16, batch_size=4, rmsize_per_layer=20, warmup=3, seed=7)
    base.update(overrides)
    return DDPGSettings(**base)


def layer_table() -> np.ndarray:
    rng = np.random.default_rng(123)
    return normalise_features(rng.uniform(0, 10, size=(N_LAYERS, STATE_DIM)))


def run_episode(agent: DDPGAgent, episode: int, table: np.ndarray) -> tuple[list[float], dict]:
    """A synthetic AMC-like episode: one row per layer; the last feature is the previous action."""
    actions: list[float] = []
    transitions = []
    state = table[0].copy()
    state[-1] = 1.0
    for t in range(N_LAYERS):
        a = agent.act(state, episode)
        actions.append(a)
        terminal = t == N_LAYERS - 1
        nxt = table[min(t + 1, N_LAYERS - 1)].copy()
        nxt[-1] = a
        transitions.append(Transition(state, a, nxt, terminal))
        state = nxt
    reward = -float(np.mean(actions) - 0.4) ** 2
    return actions, agent.observe_episode(transitions, reward, episode)


def params(agent: DDPGAgent) -> list[torch.Tensor]:
    mods = (agent.actor, agent.actor_target, agent.critic, agent.critic_target)
    return [p.detach().clone() for m in mods for p in m.parameters()]


def assert_same_params(a: DDPGAgent, b: DDPGAgent) -> None:
    pa, pb = params(a), params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)


# -- networks -------------------------------------------------------------------------------------
def test_network_shapes_and_defaults():
    s = DDPGSettings()
    assert (s.hidden, s.lr_actor, s.lr_critic, s.tau, s.gamma, s.batch_size) == (300, 1e-4, 1e-3, 0.01, 1.0, 64)
    assert (s.rmsize_per_layer, s.warmup, s.init_delta, s.delta_decay, s.moving_alpha) == (100, 100, 0.5, 0.95, 0.5)
    agent = DDPGAgent(10, 15, s)
    a = agent.actor
    assert [tuple(m.weight.shape) for m in (a.fc1, a.fc2, a.fc3)] == [(300, 10), (300, 300), (1, 300)]
    c = agent.critic
    shapes = [tuple(m.weight.shape) for m in (c.fc11, c.fc12, c.fc2, c.fc3)]
    assert shapes == [(300, 10), (300, 1), (300, 300), (1, 300)]
    # The original's state-dict keys, so its actor.pkl / critic.pkl load.
    assert set(Actor(10).state_dict()) == {f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}
    assert set(Critic(10).state_dict()) == {f"fc{i}.{k}" for i in ("11", "12", "2", "3") for k in ("weight", "bias")}
    x = torch.rand(7, 10)
    out = agent.actor(x)
    assert out.shape == (7, 1) and bool(((out > 0) & (out < 1)).all())
    assert agent.critic(x, out).shape == (7, 1)
    # Targets start as exact copies.
    assert_same_params_pair(agent.actor, agent.actor_target)
    assert_same_params_pair(agent.critic, agent.critic_target)
    assert agent.memory.capacity == 100 * 15
    assert agent.actor_optim.param_groups[0]["lr"] == 1e-4 and agent.critic_optim.param_groups[0]["lr"] == 1e-3


def assert_same_params_pair(m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_global_rng_untouched_and_seed_matters():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small())
    table = layer_table()
    for ep in range(6):
        run_episode(agent, ep, table)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    other = DDPGAgent(STATE_DIM, N_LAYERS, small(seed=8))
    assert not torch.equal(DDPGAgent(STATE_DIM, N_LAYERS, small()).actor.fc1.weight, other.actor.fc1.weight)


# -- acting ---------------------------------------------------------------------------------------
def test_warmup_is_uniform_and_trains_nothing():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=40, rmsize_per_layer=100))
    before = params(agent)
    table = layer_table()
    actions = []
    for ep in range(41):  # episodes 0..warmup inclusive are warm-up (`episode <= warmup`)
        assert agent.is_warmup(ep)
        acts, info = run_episode(agent, ep, table)
        actions += acts
        assert info["updates"] == 0 and math.isnan(info["critic_loss"]) and info["baseline"] is None
    assert not agent.is_warmup(41)
    assert agent.n_updates == 0 and len(agent.memory) == 41 * N_LAYERS
    for x, y in zip(before, params(agent)):
        assert torch.equal(x, y)
    arr = np.array(actions)
    assert arr.min() >= 0 and arr.max() <= 1
    # Uniform, not centred on the actor: spread and mean of U(0, 1) over 123 draws.
    assert abs(arr.mean() - 0.5) < 0.1 and 0.2 < arr.std() < 0.38
    assert arr.min() < 0.1 and arr.max() > 0.9


def test_noise_sigma_schedule():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=100))
    assert agent.noise_sigma(100) == pytest.approx(0.5)
    assert agent.noise_sigma(101) == pytest.approx(0.5 * 0.95)
    assert agent.noise_sigma(300) == pytest.approx(0.5 * 0.95**200)
    nni = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=10, delta_decay=0.99, init_delta=0.3))
    assert nni.noise_sigma(60) == pytest.approx(0.3 * 0.99**50)


def test_noise_is_centred_on_actor_and_shrinks():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=3))
    state = layer_table()[1]
    mu = agent.greedy(state)
    # Late episode: sigma ~ 1e-5, so the action is the actor's.
    late = [agent.act(state, 3 + 200) for _ in range(20)]
    assert max(abs(a - mu) for a in late) < 1e-3
    # First post-warm-up episode: sigma 0.475, so a wide spread, always inside [0, 1].
    early = np.array([agent.act(state, 4) for _ in range(400)])
    assert early.min() >= 0 and early.max() <= 1 and early.std() > 0.15
    assert agent.greedy(state) == mu  # acting changes nothing


def test_actions_stay_in_unit_interval():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=2))
    table = layer_table()
    for ep in range(12):
        actions, _ = run_episode(agent, ep, table)
        assert all(0.0 <= a <= 1.0 for a in actions)


# -- learning machinery ---------------------------------------------------------------------------
def test_every_transition_gets_final_reward_and_one_update_each():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(warmup=1))
    table = layer_table()
    run_episode(agent, 0, table)
    run_episode(agent, 1, table)
    _, info = run_episode(agent, 2, table)
    assert info["updates"] == N_LAYERS and agent.n_updates == N_LAYERS
    assert math.isfinite(info["critic_loss"]) and math.isfinite(info["actor_loss"])
    rewards = agent.memory.contents()["rewards"][:, 0].reshape(3, N_LAYERS)
    assert torch.equal(rewards, rewards[:, :1].expand(-1, N_LAYERS))
    terminals = agent.memory.contents()["terminals"][:, 0].reshape(3, N_LAYERS)
    assert terminals[:, -1].all() and not terminals[:, :-1].any()


def test_replay_buffer_limit_keeps_newest():
    agent = DDPGAgent(STATE_DIM, N_LAYERS, small(rmsize_per_layer=2, warmup=100))
    assert agent.memory.capacity == 2 * N_LAYERS
    s = np.zeros(STATE_DIM)
    for ep in range(5):
        steps = [Transition(s, 0.5, s, t == N_LAYERS - 1) for t in range(N_LAYERS)]
        agent.observe_episode(steps, float(ep), ep)
        assert len(agent.memory) == min((ep + 1) * N_LAYERS, 2 * N_LAYERS)
    rewards = agent.memory.contents()["rewards"][:, 0].tolist()
    assert rewards == [3.0] * N_LAYERS + [4.0] * N_LAYERS  # oldest first: only the last two episodes remain


def test_baseline_first_batch_mean_then_moving_average():
    agent = DDPGAgent(STATE_DIM, 1, small(warmup=0, batch_size=8, rmsize_per_layer=50))
    s = np.linspace(0, 1, STATE_DIM)
    agent.observe_episode([Transition(s, 0.5, s, True)], 2.0, 0)  # warm-up: stored only
    info = agent.observe_episode([Transition(s, 0.5, s, True)], 2.0, 1)
    # The only sampleable transition has reward 2, so the first batch mean is exactly 2.
    assert info["baseline"] == 2.0
    expected = 2.0
    for ep in range(2, 8):
        agent.memory.append(s, 0.5, float(ep), s, True)
        step = agent.update()
        expected = expected + 0.5 * (step["batch_reward_mean"] - expected)
        assert step["baseline"] == pytest.approx(expected, abs=1e-12)
        assert agent.baseline == step["baseline"]


def test_newest_transition_is_never_sampled():
    agent = DDPGAgent(STATE_DIM, 1, small(warmup=0, batch_size=16, rmsize_per_layer=10))
    s = np.zeros(STATE_DIM)
    for r in (1.0, 1.0, 1.0):
        agent.memory.append(s, 0.5, r, s, True)
    agent.memory.append(s, 0.5, 99.0, s, True)
    batch = agent.memory.sample(16, torch.Generator().manual_seed(0))
    assert bool((batch[2] == 1.0).all())


# -- determinism and resume -----------------------------------------------------------------------
def test_same_seed_same_actions_and_weights():
    table = layer_table()
    runs = []
    for _ in range(2):
        agent = DDPGAgent(STATE_DIM, N_LAYERS, small())
        actions = [a for ep in range(7) for a in run_episode(agent, ep, table)[0]]
        runs.append((agent, actions))
    assert runs[0][1] == runs[1][1]
    assert_same_params(runs[0][0], runs[1][0])
    assert runs[0][0].baseline == runs[1][0].baseline


@pytest.mark.parametrize("through_bytes", [False, True])
def test_resume_reproduces_uninterrupted_run(through_bytes):
    table = layer_table()
    settings = small(warmup=3, batch_size=4)

    straight = DDPGAgent(STATE_DIM, N_LAYERS, settings)
    straight_actions = [run_episode(straight, ep, table)[0] for ep in range(8)]

    first = DDPGAgent(STATE_DIM, N_LAYERS, settings)
    resumed_actions = [run_episode(first, ep, table)[0] for ep in range(5)]
    state = first.state_dict()
    run_episode(first, 5, table)  # training on must not change the saved state (deep copy)
    if through_bytes:
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        state = torch.load(buf)  # weights_only=True by default: the state holds tensors and plain values only
    second = DDPGAgent.from_state_dict(state)
    assert second.episodes_observed == 5
    resumed_actions += [run_episode(second, ep, table)[0] for ep in range(5, 8)]

    assert resumed_actions == straight_actions
    assert_same_params(second, straight)
    assert second.baseline == straight.baseline and second.n_updates == straight.n_updates
    for k, v in straight.memory.contents().items():
        assert torch.equal(v, second.memory.contents()[k])
    for o1, o2 in ((straight.actor_optim, second.actor_optim), (straight.critic_optim, second.critic_optim)):
        for s1, s2 in zip(o1.state.values(), o2.state.values()):
            assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


def test_load_rejects_other_settings_or_dims():
    state = DDPGAgent(STATE_DIM, N_LAYERS, small()).state_dict()
    with pytest.raises(ValueError, match="lr_actor"):
        DDPGAgent(STATE_DIM, N_LAYERS, small(lr_actor=0.5)).load_state_dict(state)
    with pytest.raises(ValueError, match="n_layers"):
        DDPGAgent(STATE_DIM, N_LAYERS + 1, small()).load_state_dict(state)


# -- learning sanity ------------------------------------------------------------------------------
def test_bandit_greedy_moves_toward_optimum():
    """One-step bandit, reward -(a - 0.3)^2 in a fixed state: the greedy action approaches 0.3."""
    settings = DDPGSettings(hidden=32, lr_actor=1e-3, lr_critic=1e-2, batch_size=16, warmup=10,
                            rmsize_per_layer=200, seed=2)
    agent = DDPGAgent(3, 1, settings)
    state = np.array([0.5, 0.2, 1.0])
    start = agent.greedy(state)
    for ep in range(80):
        a = agent.act(state, ep)
        agent.observe_episode([Transition(state, a, state, True)], -((a - 0.3) ** 2), ep)
    end = agent.greedy(state)
    assert abs(end - 0.3) < 0.15
    assert abs(end - 0.3) < abs(start - 0.3)


# -- helpers --------------------------------------------------------------------------------------
def test_normalise_features():
    table = np.array([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0], [5.0, 5.0, 3.0]])
    out = normalise_features(table)
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(out[:, 1], [5.0, 5.0, 5.0])  # max == min: unchanged
    np.testing.assert_allclose(out[:, 2], [0.0, 1.0, 0.5])
    assert table[1, 0] == 10.0  # input not modified
    with pytest.raises(ValueError):
        normalise_features(np.zeros(3))
