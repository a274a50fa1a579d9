"""N2N controllers, rewards and REINFORCE learner (hwcompress.search.n2n.policy): fast, CPU, seeded."""

from __future__ import annotations

import io

import pytest
import torch

from hwcompress.search.n2n.policy import (
    INVALID_REWARD,
    KEEP,
    ORIGINAL_RATIO_PRIOR,
    RATIOS,
    REMOVE,
    Reinforce,
    RemovalPolicy,
    ShrinkagePolicy,
    annealed_epsilon,
    constrained_reward,
    n2n_reward,
    normalise,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_features(n: int = 10) -> torch.Tensor:
    # [position, parity, constant]: the constant column checks normalise's zero-span guard.
    return normalise(torch.tensor([[i, i % 2, 3.0] for i in range(n)]))


def group_features(n: int = 6, dim: int = 4) -> torch.Tensor:
    return normalise(torch.rand(n, dim, generator=gen(0)))


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ------------------------------------------------------------------------------------------------
# normalise


def test_normalise_minmax_and_standard():
    raw = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [2.0, 20.0, 5.0]])
    x = normalise(raw)
    assert x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.allclose(x[:, 1], x[:, 0])
    assert torch.equal(x[:, 2], torch.zeros(3))  # constant column
    s = normalise(raw, "standard")
    assert torch.allclose(s[:, :2].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(s[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-6)
    assert torch.equal(s[:, 2], torch.zeros(3))
    with pytest.raises(ValueError):
        normalise(torch.zeros(3))
    with pytest.raises(ValueError):
        normalise(raw, "bogus")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# RemovalPolicy


def test_removal_shapes_and_log_prob_consistency():
    x = unit_features(9)
    pol = RemovalPolicy(3, generator=gen(1))
    assert pol(x).shape == (9, 2)
    forced = torch.zeros(9, dtype=torch.bool)
    forced[[0, 4]] = True
    for mask in (None, forced):
        actions, lp = pol.sample(x, gen(2), forced_keep=mask)
        assert actions.shape == (9,) and actions.dtype == torch.long
        assert set(actions.tolist()) <= {REMOVE, KEEP}
        assert lp.shape == () and lp.requires_grad
        assert torch.allclose(lp, pol.log_prob(x, actions, forced_keep=mask))
        # the log-prob is the sum over free units of the chosen action's log-probability
        table = pol(x).detach()
        free = [i for i in range(9) if mask is None or not bool(mask[i])]
        assert lp.item() == pytest.approx(sum(table[i, actions[i]].item() for i in free), abs=1e-5)


def test_removal_forced_keeps_honoured():
    x = unit_features(8)
    pol = RemovalPolicy(3, keep_bias=-4.0, generator=gen(1))  # prefers removing everything
    forced = [True, False, False, True, False, False, False, True]
    g = gen(3)
    for _ in range(20):
        actions, _ = pol.sample(x, g, forced_keep=forced)
        assert all(actions[i] == KEEP for i in (0, 3, 7))
    # all forced: no free decision, a zero log-prob that still backpropagates (zero gradient)
    actions, lp = pol.sample(x, g, forced_keep=[True] * 8)
    assert actions.tolist() == [KEEP] * 8 and lp.item() == 0.0
    lp.backward()
    with pytest.raises(ValueError):
        pol.log_prob(x, [REMOVE] + [KEEP] * 7, forced_keep=forced)
    with pytest.raises(ValueError):
        pol.log_prob(x, [2] * 8)
    with pytest.raises(ValueError):
        pol.sample(torch.zeros(8, 5), g)  # wrong feature dimension


def test_removal_keep_bias_sets_initial_keep_rate():
    x = unit_features(12)
    neutral = RemovalPolicy(3, generator=gen(1))(x).exp()[:, KEEP].mean().item()
    biased = RemovalPolicy(3, keep_bias=3.0, generator=gen(1))(x).exp()[:, KEEP].mean().item()
    assert 0.3 < neutral < 0.7
    assert biased > 0.9


def test_entropy_of_removal_policy():
    x = unit_features(6)
    pol = RemovalPolicy(3, generator=gen(1))
    p = pol(x).exp().detach()
    expected = -(p * p.log()).sum(1)
    assert pol.entropy(x).item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert pol.entropy(x, [True] + [False] * 5).item() == pytest.approx(expected[1:].sum().item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# ShrinkagePolicy


def test_shrinkage_shapes_ratio_set_and_log_prob_consistency():
    x = group_features(7)
    pol = ShrinkagePolicy(4, generator=gen(1))
    assert pol.ratios == RATIOS and pol.num_choices == 7
    g = gen(2)
    for _ in range(10):
        choices, ratios, lp = pol.sample(x, g)
        assert choices.shape == (7,) and choices.dtype == torch.long
        assert all(r in RATIOS for r in ratios)
        assert ratios == [RATIOS[c] for c in choices.tolist()]
        assert lp.shape == () and lp.requires_grad
        assert torch.allclose(lp, pol.log_prob(x, choices))
    assert pol(x, choices).shape == (7, 7)


def test_shrinkage_custom_ratio_set_and_fixed_groups():
    x = group_features(6)
    pol = ShrinkagePolicy(4, ratios=(0.5, 0.75, 1.0), generator=gen(1))
    fixed = torch.tensor([True, False, False, True, False, True])
    g = gen(2)
    for _ in range(10):
        choices, ratios, lp = pol.sample(x, g, fixed=fixed)
        assert set(ratios) <= {0.5, 0.75, 1.0}
        assert [ratios[i] for i in (0, 3, 5)] == [1.0, 1.0, 1.0]
        assert torch.allclose(lp, pol.log_prob(x, choices, fixed=fixed))
        # fixed groups contribute nothing: lp equals the free groups' sum along the same trajectory
        table = pol(x, choices).detach()
        free_sum = sum(table[i, choices[i]].item() for i in (1, 2, 4))
        assert lp.item() == pytest.approx(free_sum, abs=1e-5)
    with pytest.raises(ValueError):
        pol.log_prob(x, [0] * 6, fixed=fixed)  # a fixed group not at 1.0
    no_one = ShrinkagePolicy(4, ratios=(0.25, 0.5), generator=gen(1))
    with pytest.raises(ValueError):
        no_one.sample(x, g, fixed=fixed)
    with pytest.raises(ValueError):
        ShrinkagePolicy(4, ratios=(0.0, 1.0))


def test_shrinkage_is_autoregressive():
    x = group_features(4)
    pol = ShrinkagePolicy(4, generator=gen(1))
    a = pol(x, [0, 0, 0, 0]).detach()
    b = pol(x, [6, 0, 0, 0]).detach()
    assert torch.equal(a[0], b[0])  # step 0 precedes any choice
    assert not torch.allclose(a[1], b[1])  # step 1 sees step 0's choice


def test_shrinkage_cells_registered_and_trained():
    x = group_features(5)
    pol = ShrinkagePolicy(4, generator=gen(1))
    names = {n for n, _ in pol.named_parameters()}
    assert {"cells.0.weight_ih", "cells.0.weight_hh", "cells.1.weight_ih", "cells.1.weight_hh"} <= names
    assert isinstance(pol.cells, torch.nn.ModuleList) and len(pol.cells) == 2
    _, _, lp = pol.sample(x, gen(2))
    lp.backward()
    for name, p in pol.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    pol.zero_grad()
    before = [p.detach().clone() for p in pol.cells.parameters()]
    learner = Reinforce(pol, gen(3), lr=0.01, initial_baseline=0.0)
    rollouts = [pol.sample(x, learner.generator) for _ in range(3)]
    learner.update([r[2] for r in rollouts], [0.1, 0.5, 0.9])
    assert all(not torch.equal(b, p) for b, p in zip(before, pol.cells.parameters()))


def test_shrinkage_ratio_prior():
    x = group_features(5)
    pol = ShrinkagePolicy(4, ratio_prior=ORIGINAL_RATIO_PRIOR, generator=gen(1))
    probs = pol(x, [0] * 5).exp().detach()
    expected = torch.tensor(ORIGINAL_RATIO_PRIOR).expand(5, -1)
    assert torch.allclose(probs, expected.to(probs.dtype), atol=1e-6)
    # the original list (0.5 five times) also works as a ratio set
    original = ShrinkagePolicy(4, ratios=(0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), generator=gen(1))
    _, ratios, _ = original.sample(x, gen(2), fixed=[True, False, False, False, False])
    assert ratios[0] == 1.0


# ------------------------------------------------------------------------------------------------
# Rewards


def test_n2n_reward_values():
    assert n2n_reward(0.9, 0.9, 50, 100) == pytest.approx(0.75)  # A = A_t, C = 0.5
    assert n2n_reward(0.45, 0.9, 50, 100) == pytest.approx(0.375)
    assert n2n_reward(0.9, 0.9, 100, 100) == 0.0  # no compression
    assert n2n_reward(0.8, 0.8, 0, 100) == pytest.approx(1.0)
    assert n2n_reward(0.9, 0.9, 10, 100) == pytest.approx(0.99)  # C = 0.9: 0.9 * 1.1
    assert INVALID_REWARD == -1
    with pytest.raises(ValueError):
        n2n_reward(0.5, 0.0, 1, 2)
    with pytest.raises(ValueError):
        n2n_reward(0.5, 0.5, 1, 0)


def test_annealed_epsilon_schedule():
    assert annealed_epsilon(0) == 1.0
    assert annealed_epsilon(7.5) == pytest.approx(0.0625)  # (1 - 0.5) ** 4
    assert annealed_epsilon(15) == 0.0
    assert annealed_epsilon(20) == 0.0  # the original's unclamped base gave 0.0123 here
    assert annealed_epsilon(30) == 0.0  # ... and 1.0 here
    assert annealed_epsilon(-3) == 1.0
    assert annealed_epsilon(5, horizon=10) == pytest.approx(0.0625)


def test_constrained_reward():
    r = 0.6
    assert constrained_reward(r, False, 20) == r
    assert constrained_reward(r, True, 0) == pytest.approx(r)
    assert constrained_reward(r, True, 7.5) == pytest.approx((0.0625 - 1) + 0.0625 * r)
    for epoch in (15, 16, 20, 50, 99):
        assert constrained_reward(r, True, epoch) == -1.0


# ------------------------------------------------------------------------------------------------
# Reinforce


def test_update_uses_per_rollout_advantage_and_moving_baseline():
    x = unit_features(6)
    pol = RemovalPolicy(3, generator=gen(1))
    learner = Reinforce(pol, gen(2), lr=0.01, baseline_decay=0.9)
    rollouts = [pol.sample(x, learner.generator) for _ in range(4)]
    lps = [lp for _, lp in rollouts]
    rewards = [0.1, 0.2, 0.6, -1.0]
    expected_loss = -sum((r - (-0.025)) * lp.item() for r, lp in zip(rewards, lps)) / 4
    info = learner.update(lps, rewards)
    assert info["baseline"] == pytest.approx(-0.025)  # first epoch: its own mean
    assert info["advantages"] == pytest.approx([0.125, 0.225, 0.625, -0.975])
    assert info["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert info["next_baseline"] == pytest.approx(-0.025)
    rollouts = [pol.sample(x, learner.generator) for _ in range(2)]
    info = learner.update([lp for _, lp in rollouts], [0.5, 0.7])
    assert info["baseline"] == pytest.approx(-0.025)
    assert info["next_baseline"] == pytest.approx(0.9 * -0.025 + 0.1 * 0.6)
    assert info["update"] == 2 and learner.updates == 2
    with pytest.raises(ValueError):
        learner.update([lps[0]], [0.1, 0.2])
    with pytest.raises(ValueError):
        learner.update([], [])


def test_entropy_bonus_needs_entropies():
    x = unit_features(6)
    pol = RemovalPolicy(3, generator=gen(1))
    learner = Reinforce(pol, gen(2), entropy_coef=0.01)
    actions, lp = pol.sample(x, learner.generator)
    with pytest.raises(ValueError):
        learner.update([lp], [0.3])
    info = learner.update([lp], [0.3], entropies=[pol.entropy(x)])
    assert info["entropy"] > 0


def run_removal(pol: RemovalPolicy, learner: Reinforce, x: torch.Tensor, epochs: int) -> list[list[int]]:
    seen = []
    for _ in range(epochs):
        rollouts = [pol.sample(x, learner.generator, forced_keep=[True] + [False] * (len(x) - 1)) for _ in range(3)]
        seen += [a.tolist() for a, _ in rollouts]
        learner.update([lp for _, lp in rollouts], [float((a == REMOVE).float().mean()) for a, _ in rollouts])
    return seen


def run_shrinkage(pol: ShrinkagePolicy, learner: Reinforce, x: torch.Tensor, epochs: int) -> list[list[int]]:
    seen = []
    for _ in range(epochs):
        rollouts = [pol.sample(x, learner.generator) for _ in range(3)]
        seen += [c.tolist() for c, _, _ in rollouts]
        learner.update([lp for *_, lp in rollouts], [1.0 - sum(r) / len(r) for _, r, _ in rollouts])
    return seen


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    x = unit_features(6)
    pol = RemovalPolicy(3, generator=gen(1))
    run_removal(pol, Reinforce(pol, gen(2)), x, 2)
    spol = ShrinkagePolicy(4)
    run_shrinkage(spol, Reinforce(spol, gen(2)), group_features(4), 2)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("kind", ["removal", "shrinkage"])
def test_determinism_same_seed(kind):
    outs = []
    for _ in range(2):
        if kind == "removal":
            pol = RemovalPolicy(3, generator=gen(5))
            seen = run_removal(pol, Reinforce(pol, gen(6), lr=0.01), unit_features(7), 3)
        else:
            pol = ShrinkagePolicy(4, generator=gen(5))
            seen = run_shrinkage(pol, Reinforce(pol, gen(6), lr=0.01), group_features(5), 3)
        outs.append((seen, weights(pol)))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
    other = RemovalPolicy(3, generator=gen(7))
    assert not torch.equal(weights(other)[0], weights(RemovalPolicy(3, generator=gen(5)))[0])


@pytest.mark.parametrize("kind", ["removal", "shrinkage"])
def test_resume_reproduces_uninterrupted_run(kind):
    def make(seed):
        if kind == "removal":
            return RemovalPolicy(3, generator=gen(seed)), unit_features(7), run_removal
        return ShrinkagePolicy(4, generator=gen(seed)), group_features(5), run_shrinkage

    pol, x, run = make(5)
    learner = Reinforce(pol, gen(6), lr=0.02, baseline_decay=0.8)
    run(pol, learner, x, 3)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    snapshot = learner.state_dict()
    continued = run(pol, learner, x, 3)
    # state_dict is a snapshot: later training does not alter it
    assert not torch.equal(snapshot["policy"]["head.weight"], pol.head.weight.detach())

    fresh, _, _ = make(99)  # different initial weights, different generator seed, other settings
    resumed = Reinforce(fresh, gen(1234), lr=0.5, baseline_decay=0.1)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.updates == 3 and resumed.baseline_decay == 0.8
    replayed = run(fresh, resumed, x, 3)
    assert replayed == continued
    assert all(torch.equal(a, b) for a, b in zip(weights(pol), weights(fresh)))
    assert resumed.baseline == learner.baseline
    assert torch.equal(resumed.generator.get_state(), learner.generator.get_state())


# ------------------------------------------------------------------------------------------------
# Learning sanity


def test_removal_policy_learns_parity_pattern():
    """Reward: fraction of even units removed minus fraction of odd units removed."""
    t = 10
    x = unit_features(t)
    pol = RemovalPolicy(3, generator=gen(1))
    learner = Reinforce(pol, gen(2), lr=0.01)
    forced = [True] + [False] * (t - 1)
    for _ in range(40):
        rollouts = [pol.sample(x, learner.generator, forced_keep=forced) for _ in range(5)]
        rewards = [
            (sum(int(a[i] == REMOVE) for i in range(0, t, 2)) - sum(int(a[i] == REMOVE) for i in range(1, t, 2))) / t
            for a, _ in rollouts
        ]
        learner.update([lp for _, lp in rollouts], rewards)
    p_remove = pol(x).exp()[:, REMOVE].detach()
    even, odd = p_remove[2::2].mean().item(), p_remove[1::2].mean().item()
    assert even > 0.8 and odd < 0.2, (even, odd)
    actions, _ = pol.sample(x, learner.generator, forced_keep=forced)
    assert actions[0] == KEEP


def test_shrinkage_policy_learns_preferred_ratio():
    """Reward: fraction of groups shrunk to 0.5."""
    x = group_features(6)
    pol = ShrinkagePolicy(4, generator=gen(1))
    learner = Reinforce(pol, gen(2), lr=0.01)
    start = pol(x, [1] * 6).exp()[:, 1].mean().item()
    for _ in range(40):
        rollouts = [pol.sample(x, learner.generator) for _ in range(5)]
        learner.update([lp for *_, lp in rollouts], [sum(r == 0.5 for r in ratios) / 6 for _, ratios, _ in rollouts])
    p_half = pol(x, [1] * 6).exp()[:, 1].detach()
    assert start < 0.3
    assert p_half.min().item() > 0.8, p_half
    _, ratios, _ = pol.sample(x, learner.generator)
    assert ratios.count(0.5) >= 5
