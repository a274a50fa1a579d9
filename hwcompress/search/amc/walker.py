"""AMC's episode walk over channel groups: the state the agent observes and the clamp on each step.

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

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from hwcompress.model.analysis import LayerSpec
from hwcompress.search.amc.ddpg import normalise_features
from hwcompress.search.cost import CostModel
from hwcompress.slim.pruning import ChannelGroup

STATE_DIM = 11


@dataclass
class Episode:
    """One walk: the ratios proposed, the counts kept, and what the policy observed (``precision``:
    the group precisions a mixed-precision walk chose, :mod:`hwcompress.search.amc.mixed`)."""

    keep: dict[str, int] = field(default_factory=dict)
    proposed: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    precision: dict[str, str] = field(default_factory=dict)


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
        proposed = self.cost_model.round(group, ratio)
        kept = self.cost_model.clamp(t, proposed, decided, self.budget)
        if self.cost_model.metric == "latency_ms":
            kept = self.cost_model.free_channels(t, kept, decided, self.budget)
        return kept

    def cost(self, episode: Episode) -> float:
        """The episode's student priced by the cost model."""
        return self.cost_model.cost(episode.keep)

    def walk(self, propose) -> Episode:
        """Run one episode with ``propose(t, state) -> ratio``."""
        episode = Episode()
        previous = 1.0
        for t, group in enumerate(self.groups):
            state = self.state(t, episode.keep, previous)
            ratio = propose(t, state)
            previous = self.record(episode, group, ratio, self.step(t, ratio, episode.keep), state)
        return episode

    @staticmethod
    def record(episode: Episode, group: Any, proposed: float, kept: int, state: Any) -> float:
        """Note one channel step in ``episode``; returns the preserve ratio it kept."""
        episode.keep[group.name] = kept
        episode.proposed.append(float(proposed))
        episode.ratios.append(kept / group.channels)
        episode.states.append(state)
        return kept / group.channels
