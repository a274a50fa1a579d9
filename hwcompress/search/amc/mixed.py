"""The mixed-precision episode walk (``--quantize mixed``): HAQ's precision action beside AMC's channels.

HAQ (Wang et al., 2019, the same lab as AMC) walks the layers with one continuous action each, mapped
to a bit width (``round(b_min - 0.5 + a * (b_max - b_min + 1))``), and keeps the resource budget by
lowering bit widths where it would break. Here the precisions are the runtime's (int8 or fp32 on a CPU),
and each channel group gets two steps of the same DDPG agent, so its action space stays AMC's single
continuous action:

1. **precision**: action ``a`` in [0, 1] picks ``int8`` below 0.5 and ``fp32`` from 0.5 (HAQ's rounding
   over two levels); the group keeps it only if the budget stays reachable with this group at its
   fewest channels and every later group at its fewest channels, else it gets the other precision
   (the clamp on the precision, as HAQ lowers a bit width that breaks the budget);
2. **channels**: AMC's preserve ratio, clamped on the joint cost: with the precisions chosen so far
   and every later group at its minimum, the largest count that fits.

"Every later group at its fewest channels" is priced in the cheaper of all-int8 and all-float for
those groups: int8 is not always the cheaper one. Measured on this project's Xeon (AVX-512 VNNI), a
ResNet-20 at 32x32 with every group at its fewest channels (8) ran 0.49 ms in int8 and 0.43 ms
(predicted) in float, while at full width int8 took 0.46 ms against 0.84 ms: at a few channels the
integer kernels' fixed costs dominate.

The state is AMC's 11 features plus three: which step this is (1 precision, 0 channels), how much of
the all-float model's latency putting this group's layers in int8 saves (min-max normalised over the
groups; from the LUT: int8 gains differ by layer, which is what the choice can use), and the precision
this group got (1 int8, 0 fp32; 0.5 on the precision step itself). Groups with no int8-capable layer
get the channel step only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwcompress.model.analysis import LayerSpec
from hwcompress.search.amc.walker import STATE_DIM, Episode, EpisodeWalker
from hwcompress.search.cost import CostModel
from hwcompress.search.precision import ALL_FLOAT, FLOAT, LOW, PrecisionPlan

MIXED_STATE_DIM = STATE_DIM + 3
#: Precisions in action order: the lower half of [0, 1] is the cheaper one, as a lower ratio is.
CHOICES = (LOW, FLOAT)


def precision_of_action(action: float) -> str:
    """HAQ's rounding of a continuous action onto the precision levels."""
    return CHOICES[min(int(float(action) * len(CHOICES)), len(CHOICES) - 1)]


class MixedEpisodeWalker(EpisodeWalker):
    """An episode over the groups with a precision step before each channel step (module docstring)."""

    def __init__(self, cost_model: CostModel, layers: Sequence[LayerSpec], budget: float, plan: PrecisionPlan) -> None:
        super().__init__(cost_model, layers, budget)  # the base view: every layer in int8, the cheapest
        self.plan = plan
        choosable = set(plan.choosable)
        full = cost_model.full_policy()
        all_float = cost_model.at_precision(ALL_FLOAT).cost(full)
        gains = []
        for group in self.groups:
            saved = 0.0
            if group.name in choosable and all_float > 0:
                saved = (all_float - cost_model.at_precision({"*": FLOAT, group.name: LOW}).cost(full)) / all_float
            gains.append(max(saved, 0.0))
        top = max(gains) if gains and max(gains) > 0 else 1.0
        self.gains = [g / top for g in gains]
        self.choosable = choosable

    def mixed_state(self, t: int, decided: Mapping[str, int], previous_ratio: float, kind: float, chosen: float) -> np.ndarray:
        return np.concatenate([self.state(t, decided, previous_ratio), [kind, self.gains[t], chosen]]).astype(np.float32)

    def completion(self, t: int, decided: Mapping[str, int], chosen: Mapping[str, str]) -> tuple[dict[str, str], float]:
        """The precisions for the groups after ``t`` that make the cheapest student with every group from
        ``t`` on at its fewest channels (all int8 or all float), and that student's cost."""
        smallest = dict(decided)
        for later in self.groups[t:]:
            smallest[later.name] = self.cost_model.min_channels(later)
        names = [g.name for g in self.groups[t + 1:] if g.name in self.choosable]
        options = [{**chosen, **{name: precision for name in names}} for precision in CHOICES]
        priced = [(self.cost_model.at_precision(option).cost(smallest), option) for option in options]
        cost, option = min(priced, key=lambda item: item[0])
        return option, cost

    def fit_precision(self, t: int, precision: str, decided: Mapping[str, int], chosen: Mapping[str, str]) -> str:
        """``precision`` for group ``t`` if the budget stays reachable with it, else the other one (the
        cheaper of the two when neither keeps it reachable)."""
        name = self.groups[t].name
        costs = {p: self.completion(t, decided, {**chosen, name: p})[1] for p in CHOICES}
        if costs[precision] <= self.budget:
            return precision
        return min(costs, key=lambda p: costs[p])

    def channel_step(self, t: int, ratio: float, decided: Mapping[str, int], chosen: Mapping[str, str]) -> int:
        """AMC's rounding and clamp for group ``t``, on the cost with the precisions chosen so far (the
        later groups in their cheapest completion)."""
        group = self.groups[t]
        view = self.cost_model.at_precision(self.completion(t, decided, chosen)[0])
        proposed = view.round(group, min(max(float(ratio), 0.0), 1.0))
        kept = view.clamp(t, proposed, decided, self.budget)
        if view.metric == "latency_ms":
            kept = view.free_channels(t, kept, decided, self.budget)
        return kept

    def walk(self, propose: Callable[[int, np.ndarray], float]) -> Episode:
        episode = Episode()
        previous = 1.0
        step = 0
        for t, group in enumerate(self.groups):
            chosen_value = 1.0
            if group.name in self.choosable:
                state = self.mixed_state(t, episode.keep, previous, 1.0, 0.5)
                action = propose(step, state)
                step += 1
                precision = self.fit_precision(t, precision_of_action(action), episode.keep, episode.precision)
                episode.precision[group.name] = precision
                episode.proposed.append(float(action))
                episode.states.append(state)
                chosen_value = 1.0 if precision == LOW else 0.0
            state = self.mixed_state(t, episode.keep, previous, 0.0, chosen_value)
            ratio = propose(step, state)
            step += 1
            previous = self.record(episode, group, ratio, self.channel_step(t, ratio, episode.keep, episode.precision), state)
        return episode

    def cost(self, episode: Episode) -> float:
        return self.cost_model.at_precision(episode.precision).cost(episode.keep)


def make_walker(context: Any) -> EpisodeWalker:
    """The walker of a run: the mixed-precision one when the run chooses precisions (``--quantize mixed``)."""
    plan = getattr(context, "precision", None)
    if plan is not None and plan.choosable:
        return MixedEpisodeWalker(context.cost_model, context.layers, context.target, plan)
    return EpisodeWalker(context.cost_model, context.layers, context.target)


def episode_shape(context: Any) -> tuple[int, int]:
    """``(state size, steps per episode)`` of a run's walk, for sizing the DDPG agent."""
    plan = getattr(context, "precision", None)
    groups = len(context.groups)
    if plan is not None and plan.choosable:
        return MIXED_STATE_DIM, groups + len(set(plan.choosable) & {g.name for g in context.groups})
    return STATE_DIM, groups
