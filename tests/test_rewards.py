"""The guarded rewards: a more accurate student always scores higher, at any budget and unit."""

from __future__ import annotations

import math

import pytest

from hwcompress.search.rewards import accuracy_guaranteed_reward, budget_reward, reward


def test_budget_reward_is_minus_the_error():
    assert budget_reward(0.9) == pytest.approx(-0.1)
    assert budget_reward(1.0) == 0.0
    assert budget_reward(0.8) < budget_reward(0.9)
    with pytest.raises(ValueError):
        budget_reward(93.2)  # a percentage


@pytest.mark.parametrize("cost_ms", [0.05, 0.8, 1.0, 2.5, 40.0])
def test_accuracy_reward_prefers_accuracy_under_any_latency(cost_ms):
    """The unguarded -error*ln(ms) scored accuracy 0.50 above 0.95 at 0.8 ms (ln 0.8 < 0)."""
    assert reward("accuracy", 0.95, cost_ms, "latency_ms") > reward("accuracy", 0.50, cost_ms, "latency_ms")


def test_accuracy_reward_prefers_cheaper_students_at_equal_accuracy():
    assert accuracy_guaranteed_reward(0.9, 1e6, "macs") == pytest.approx(-0.1 * math.log(1e6))
    assert accuracy_guaranteed_reward(0.9, 1e6, "macs") > accuracy_guaranteed_reward(0.9, 1e7, "macs")
    assert accuracy_guaranteed_reward(0.9, 0.8, "latency_ms") > accuracy_guaranteed_reward(0.9, 1.6, "latency_ms")
    assert accuracy_guaranteed_reward(1.0, 0.8, "latency_ms") == 0.0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown reward mode"):
        reward("fastest", 0.9, 1.0, "macs")
