"""AMC's episode walk over channel groups, and the three policies that walk it: amc, uniform, random.

One episode visits the prunable channel groups in forward order. At each group the policy proposes a
preserve ratio; the ratio is rounded to the device's channel multiple and clamped by the cost model
(:meth:`~hwcompress.search.cost.CostModel.clamp`) so that, with every later group at its minimum, the
budget stays reachable. After the last group the policy's student is pruned physically and its
accuracy on the reward-validation split, without fine-tuning, gives the episode reward.

State per group (AMC's embedding, section 1.3 of research/algorithms.md, extended as the issue asks):
``[t, type (conv 0 / linear 1), in channels, out channels, stride, kernel, MACs of the group's layers,
latency share of the group, reduced, rest, a_{t-1}]``. The static columns are min-max normalised over
groups once; the dynamic ones are fractions already. ``reduced`` is the cost removed by the groups
decided so far (later groups at full size), ``rest`` the cost share of the groups after this one
(Distiller's exact definitions, rather than the original's lbound-assumed "reduced" and its index
quirk in "rest").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from hwcompress.analysis import LayerSpec
from hwcompress.pruning import ChannelGroup, round_channels
from hwcompress.search.cost import CostModel
from hwcompress.search.ddpg import DDPGAgent, DDPGSettings, normalise_features

STATE_DIM = 11


@dataclass
class Episode:
    """One walk: the ratios proposed, the counts kept, and what the policy observed."""

    keep: dict[str, int] = field(default_factory=dict)
    proposed: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)


def static_features(groups: Sequence[ChannelGroup], layers: Sequence[LayerSpec], shares: Mapping[str, float]) -> np.ndarray:
    """The static columns of the state, one row per group, before normalisation."""
    by_name = {layer.name: layer for layer in layers}
    rows = []
    for t, group in enumerate(groups):
        root = by_name.get(group.producers[0]) if group.producers else None
        is_linear = root is not None and root.op == "Linear"
        macs = sum(by_name[n].macs for n in [*group.producers, *group.consumers, *group.depthwise] if n in by_name)
        rows.append([
            t,
            1.0 if is_linear else 0.0,
            (root.cin or 0) if root else 0,
            group.channels,
            (root.stride[0] if root and root.stride else 0),
            (root.kernel[0] if root and root.kernel else 1),
            macs,
            shares.get(group.name, 0.0),
        ])
    return np.asarray(rows, dtype=np.float64)


class EpisodeWalker:
    """Builds states and applies the clamp for one model, device and budget."""

    def __init__(self, cost_model: CostModel, layers: Sequence[LayerSpec], budget: float) -> None:
        self.cost_model = cost_model
        self.groups = cost_model.groups
        self.budget = budget
        self.full_cost = cost_model.cost(cost_model.full_policy())
        shares = cost_model.group_costs()
        total = sum(max(v, 0.0) for v in shares.values()) or 1.0
        self.shares = {name: max(v, 0.0) / total for name, v in shares.items()}
        self.static = normalise_features(static_features(self.groups, layers, self.shares))
        rest = np.cumsum([self.shares[g.name] for g in self.groups][::-1])[::-1]
        self.rest_after = [float(rest[t + 1]) if t + 1 < len(self.groups) else 0.0 for t in range(len(self.groups))]

    def state(self, t: int, decided: Mapping[str, int], previous_ratio: float) -> np.ndarray:
        reduced = (self.full_cost - self.cost_model.cost(decided)) / self.full_cost if self.full_cost else 0.0
        return np.concatenate([self.static[t], [reduced, self.rest_after[t], previous_ratio]]).astype(np.float32)

    def step(self, t: int, ratio: float, decided: Mapping[str, int]) -> int:
        """Round ``ratio`` for group ``t`` and clamp it to the budget; returns the kept channel count."""
        group = self.groups[t]
        ratio = min(max(float(ratio), 0.0), 1.0)
        proposed = round_channels(group.channels, ratio, self.cost_model.multiple)
        kept = self.cost_model.clamp(t, proposed, decided, self.budget)
        if self.cost_model.metric == "latency_ms":
            kept = self.cost_model.free_channels(t, kept, decided, self.budget)
        return kept

    def walk(self, propose) -> Episode:
        """Run one episode with ``propose(t, state) -> ratio``."""
        episode = Episode()
        previous = 1.0
        for t, group in enumerate(self.groups):
            state = self.state(t, episode.keep, previous)
            ratio = propose(t, state)
            kept = self.step(t, ratio, episode.keep)
            episode.keep[group.name] = kept
            episode.proposed.append(float(ratio))
            previous = kept / group.channels
            episode.ratios.append(previous)
            episode.states.append(state)
        return episode


class AMCPolicy:
    """DDPG proposes each ratio (warm-up episodes: uniform random)."""

    name = "amc"

    def __init__(self, n_groups: int, seed: int = 0, **ddpg: Any) -> None:
        self.agent = DDPGAgent(STATE_DIM, n_groups, DDPGSettings(seed=seed, **ddpg))

    def run_episode(self, walker: EpisodeWalker, episode_index: int) -> Episode:
        return walker.walk(lambda t, state: self.agent.act(state, episode_index))

    def finish_episode(self, walker: EpisodeWalker, episode: Episode, reward: float, episode_index: int) -> dict:
        transitions = []
        n = len(episode.states)
        for t in range(n):
            next_state = episode.states[t + 1] if t + 1 < n else episode.states[t]
            # As in amc_search.py, the stored action is the agent's proposal (before the clamp); the
            # state's a_{t-1} column carries the ratio actually applied.
            transitions.append((episode.states[t], episode.proposed[t], next_state, t == n - 1))
        return self.agent.observe_episode(transitions, reward, episode_index)

    def state_dict(self) -> dict:
        return {"agent": self.agent.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])


class RandomPolicy:
    """Uniform random ratios under the same clamp: the sanity baseline every search must beat."""

    name = "random"

    def __init__(self, n_groups: int, seed: int = 0, **_: Any) -> None:
        self.rng = np.random.default_rng(seed)

    def run_episode(self, walker: EpisodeWalker, episode_index: int) -> Episode:
        return walker.walk(lambda t, state: float(self.rng.uniform(0.0, 1.0)))

    def finish_episode(self, walker, episode, reward, episode_index) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class UniformPolicy:
    """One ratio for every group, the largest that meets the budget (bisection on the cost model).

    Deterministic, so a single episode is enough; later episodes repeat it.
    """

    name = "uniform"

    def __init__(self, n_groups: int, seed: int = 0, **_: Any) -> None:
        self.ratio: float | None = None

    def _policy(self, walker: EpisodeWalker, ratio: float) -> dict[str, int]:
        m = walker.cost_model
        return {g.name: max(m.min_channels(g), round_channels(g.channels, ratio, m.multiple)) for g in walker.groups}

    def run_episode(self, walker: EpisodeWalker, episode_index: int) -> Episode:
        if self.ratio is None:
            low, high = walker.cost_model.lbound, 1.0
            if walker.cost_model.cost(self._policy(walker, high)) <= walker.budget:
                low = high
            for _ in range(40):
                mid = (low + high) / 2
                if walker.cost_model.cost(self._policy(walker, mid)) <= walker.budget:
                    low = mid
                else:
                    high = mid
            self.ratio = low
        keep = self._policy(walker, self.ratio)
        episode = Episode(keep=keep)
        for g in walker.groups:
            episode.proposed.append(self.ratio)
            episode.ratios.append(keep[g.name] / g.channels)
        return episode

    def finish_episode(self, walker, episode, reward, episode_index) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"ratio": self.ratio}

    def load_state_dict(self, state: dict) -> None:
        self.ratio = state["ratio"]


def reward_for(accuracy: float, cost: float, mode: str) -> float:
    """``budget``: -error (AMC's R_err); ``accuracy``: -error * log(cost) (accuracy-guaranteed)."""
    error = 1.0 - accuracy
    if mode == "budget":
        return -error
    if mode == "accuracy":
        return -error * math.log(max(cost, 1e-9))
    raise ValueError(f"unknown reward mode {mode!r}")
