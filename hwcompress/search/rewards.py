"""The rewards an agent can be given, guarded so that a better student always scores higher.

* ``budget`` (AMC's resource-constrained mode, R_err): ``-(1 - accuracy)``. The clamp keeps every
  student within the budget, so only the error counts.
* ``accuracy`` (AMC's accuracy-guaranteed mode): ``-(1 - accuracy) * ln(cost)``. The original passes
  absolute FLOPs, so ``ln(cost)`` is large and positive. A latency in milliseconds is often below 1,
  where the logarithm turns negative and the reward would favour *higher* error (measured before this
  module: at a 0.8 ms budget, accuracy 0.95 scored +0.011 and accuracy 0.50 +0.112). So the cost is
  taken in its base unit (latency in microseconds, MACs and parameters as counted) and never below
  ``e``, which keeps the logarithm at 1 or more.

N2N's reward, ``(A / A_teacher) * C * (2 - C)``, lives with its controllers
(:func:`hwcompress.search.n2n.policy.n2n_reward`).
"""

from __future__ import annotations

import math

from hwcompress.budget import LATENCY

MODES = ("budget", "accuracy")


def _accuracy(value: float) -> float:
    accuracy = float(value)
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        # Catches percentages (the original's accuracy is in %, scaled by 0.01 inside its reward).
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {value!r}")
    return accuracy


def budget_reward(accuracy: float) -> float:
    """``-(1 - accuracy)``: the paper's R_err (the original's ``acc * 0.01`` up to a constant that the
    moving-average baseline removes)."""
    return -(1.0 - _accuracy(accuracy))


def accuracy_guaranteed_reward(accuracy: float, cost: float, metric: str) -> float:
    """``-(1 - accuracy) * ln(cost)`` with ``cost`` in its base unit and ``ln`` kept at 1 or more (see
    the module docstring), so that at any budget a more accurate student scores higher."""
    value = float(cost)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"cost must be finite and non-negative, got {cost!r}")
    base = value * 1000.0 if metric == LATENCY else value  # milliseconds -> microseconds
    return -(1.0 - _accuracy(accuracy)) * math.log(max(base, math.e))


def reward(mode: str, accuracy: float, cost: float, metric: str) -> float:
    """The reward of ``mode`` (``budget`` or ``accuracy``) for a student."""
    if mode == "budget":
        return budget_reward(accuracy)
    if mode == "accuracy":
        return accuracy_guaranteed_reward(accuracy, cost, metric)
    raise ValueError(f"unknown reward mode {mode!r}; one of {', '.join(MODES)}")


def accuracy_to_beat(mode: str, best_reward: float, cost: float, metric: str) -> float:
    """The accuracy a student of ``cost`` needs for a reward above ``best_reward`` under ``mode`` (both
    rewards rise with the accuracy at a fixed cost): what racing a student's score compares it with."""
    if mode == "budget":
        return 1.0 + float(best_reward)
    if mode == "accuracy":
        base = float(cost) * 1000.0 if metric == LATENCY else float(cost)
        return 1.0 + float(best_reward) / math.log(max(base, math.e))
    raise ValueError(f"unknown reward mode {mode!r}; one of {', '.join(MODES)}")
