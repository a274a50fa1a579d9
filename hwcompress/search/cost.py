"""The cost model the search consults: latency, MACs or parameters of a pruning policy, without pruning.

A policy is ``{group name: kept channels}``. Each conv/linear layer's input and output channel counts
follow from the groups it belongs to (producers shrink their outputs, consumers their inputs,
depthwise convs both), and each BatchNorm follows the layer before it. From the resulting
:class:`~hwcompress.model.analysis.LayerSpec` list:

- **latency** is the sum of per-layer latencies looked up in the device's LUT (recorded on the device,
  or measured on demand on a local device and cached), plus the LUT's calibration term;
- **MACs** and **parameters** are exact (the formulas of the layers' own shapes, checked in the tests
  against a physically pruned model).

The clamp (:meth:`CostModel.clamp`) is AMC's action wall generalised to any monotone cost: with the
groups decided so far at their counts and every later group at its minimum, the largest count for the
current group whose total cost fits the budget, found by bisection over the allowed counts (latency
is not bilinear in channels, so AMC's closed form does not apply).

Precision (``--quantize``): a model may also price each layer in a precision (int8 beside fp32). A
policy's precision part maps groups to precisions (``precision_of`` turns it into one per layer, see
:class:`hwcompress.search.precision.PrecisionPlan`); :meth:`CostModel.at_precision` is a view of the
same model that prices every policy at one such map, so the clamp, the repair and the agents work on
the joint cost unchanged. The base view prices at ``{}`` (every layer at the plan's default).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from hwcompress.lut.keys import at_precision
from hwcompress.model.analysis import LayerSpec
from hwcompress.slim.pruning import ChannelGroup, round_channels

METRICS = ("latency_ms", "macs", "params")
#: Layers a runtime runs on its channel-blocked path (ONNX Runtime's NCHWc), priced at one block at least.
BLOCKED_OPS = ("Conv1d", "Conv2d", "Conv3d")


@dataclass
class _LayerPlan:
    """Which group sets a layer's input and output channels."""

    spec: LayerSpec
    in_group: str | None
    out_group: str | None


class CostModel:
    """Cost of a pruning policy for one model on one device.

    Args:
        layers: the unpruned model's layer rows (:func:`hwcompress.model.analysis.analyze`).
        groups: its channel groups (:func:`hwcompress.slim.pruning.find_channel_groups`).
        metric: ``latency_ms`` | ``macs`` | ``params``.
        latency_of: for ``latency_ms``, a function from the (possibly shrunk) layer rows of a whole
            model to its predicted milliseconds (the LUT's calibrated prediction).
        multiple: channel counts are rounded to this multiple (the device's ``channel_multiple``).
        quantum: at and above this count, whole blocks of it (the LUT's detected ``channel_quantum``;
            :func:`hwcompress.slim.pruning.round_channels`): the LUT prices a count between blocks as
            the next block, so a policy between blocks would lose channels and save nothing.
        lbound: the smallest preserve ratio a group may get (AMC's 0.2).
        precision_of: for a model priced in several precisions, ``{group: precision} -> {layer: precision}``
            (:meth:`hwcompress.search.precision.PrecisionPlan.layer_precisions`); None prices every layer
            at the LUT's own precision.
        teacher_precision: the group precision map the teacher runs at (``{"*": "fp32"}`` when the
            students are quantized); :meth:`teacher_cost` prices the teacher with it.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        groups: Sequence[ChannelGroup],
        metric: str = "latency_ms",
        latency_of: Callable[[list[LayerSpec]], float] | None = None,
        multiple: int = 8,
        lbound: float = 0.2,
        quantum: int = 1,
        precision_of: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None,
        teacher_precision: Mapping[str, str] | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        if metric == "latency_ms" and latency_of is None:
            raise ValueError("a latency cost model needs latency_of")
        self.metric = metric
        self.groups = list(groups)
        self.by_name = {g.name: g for g in self.groups}
        self.latency_of = latency_of
        self.multiple = multiple
        self.quantum = quantum if quantum > multiple and quantum % multiple == 0 else 1
        self.lbound = lbound
        self._plans = self._plan_layers(layers)
        self._cache: dict[tuple, float] = {}
        self._rows: dict[tuple, LayerSpec] = {}
        self.precision_of = precision_of
        #: The group precisions this view prices at (see :meth:`at_precision`).
        self.precision: dict[str, str] = {}
        self.teacher_precision: dict[str, str] = dict(teacher_precision or {})

    def _plan_layers(self, layers: Sequence[LayerSpec]) -> list[_LayerPlan]:
        out_of: dict[str, str] = {}
        in_of: dict[str, str] = {}
        for group in self.groups:
            for name in group.producers:
                out_of[name] = group.name
            for name in group.consumers:
                in_of[name] = group.name
            for name in group.depthwise:
                out_of[name] = in_of[name] = group.name
        plans: list[_LayerPlan] = []
        previous: _LayerPlan | None = None
        for spec in layers:
            if spec.op.startswith("BatchNorm") and previous is not None and previous.spec.cout == spec.cin:
                # A norm layer carries the channels of the layer that feeds it.
                plan = _LayerPlan(spec, previous.out_group, previous.out_group)
            else:
                plan = _LayerPlan(spec, in_of.get(spec.name), out_of.get(spec.name))
            plans.append(plan)
            if spec.op in ("Conv1d", "Conv2d", "Conv3d", "Linear"):
                previous = plan
        return plans

    # -- policies ------------------------------------------------------------------------------

    def full_policy(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    def complete(self, keep: Mapping[str, int]) -> dict[str, int]:
        """``keep`` with every group named: those it leaves out keep all their channels."""
        return {g.name: keep.get(g.name, g.channels) for g in self.groups}

    def round(self, group: ChannelGroup, ratio: float) -> int:
        """AMC's rounding of a preserve ratio for ``group``, in this model's multiple and quantum."""
        return round_channels(group.channels, ratio, self.multiple, self.quantum)

    def min_channels(self, group: ChannelGroup) -> int:
        return max(group.min_channels, self.round(group, self.lbound))

    def min_policy(self) -> dict[str, int]:
        return {g.name: self.min_channels(g) for g in self.groups}

    def allowed_counts(self, group: ChannelGroup) -> list[int]:
        """Counts the search may give ``group``: multiples between its minimum and its size (whole quanta
        from one quantum up), and the size."""
        low = self.min_channels(group)
        counts = {group.channels, low}
        counts.update(c for c in range(math.ceil(low / self.multiple) * self.multiple, group.channels + 1, self.multiple)
                      if self.quantum == 1 or c < self.quantum or c % self.quantum == 0)
        return sorted(c for c in counts if low <= c <= group.channels)

    # -- costs ---------------------------------------------------------------------------------

    def at_precision(self, precision: Mapping[str, str]) -> "CostModel":
        """A view that prices every policy with the group precisions ``precision`` (the memo is shared;
        its keys include the precision)."""
        view = copy.copy(self)
        view.precision = dict(precision)
        return view

    def teacher_cost(self) -> float:
        """The teacher's cost: every channel, at the teacher's precision."""
        return self.at_precision(self.teacher_precision).cost(self.full_policy())

    def layers_for(self, keep: Mapping[str, int], priced: bool = False) -> list[LayerSpec]:
        """The layer rows of the model pruned to ``keep`` (groups not named keep every channel), each
        priced at its precision when the model has several.

        ``priced``: the rows the latency is looked up with. A convolution pruned below one block of
        the runtime (``quantum``) is looked up at one block and charged the kept share of the block's
        channels (``time_scale`` = kept cin x cout / block cin x cout). Its own unit, timed alone, is
        no guide: ONNX Runtime 1.32 timed an 8-to-8 3x3 convolution at 8x8 at 0.018 ms and a 16-to-16
        one at 0.010 ms, while in the network the embedded ResNet-56 with every group at 8 channels
        ran at 0.361x the teacher and at 16 channels at 0.547x (``hwcompress compare``, 5 rounds). Raw
        units priced the 8-channel network at 1.31x the 16-channel one and bent the anchored line
        (a student predicted at 0.52 ms measured 1.25); charged by the kept share, the line anchored on
        the teacher and the smallest student predicts the 8- and 16-channel networks at 0.336x and
        0.601x (measured 0.361x and 0.547x), within 10%, where raw units said 0.475x and 0.271x.
        """
        at_block = priced and self.quantum > 1
        layer_precision = self.precision_of(self.precision) if self.precision_of is not None else None
        rows = []
        for index, plan in enumerate(self._plans):
            spec = plan.spec
            cin = keep.get(plan.in_group, spec.cin) if plan.in_group else spec.cin
            cout = keep.get(plan.out_group, spec.cout) if plan.out_group else spec.cout
            precision = layer_precision.get(spec.name) if layer_precision is not None else None
            key = (index, cin, cout, at_block, precision)
            row = self._rows.get(key)
            if row is None:  # rows are shared between calls (the LUT memoises by row): never mutate one
                row = self._shrunk_row(spec, cin, cout, at_block)
                if layer_precision is not None:
                    row = at_precision(row, precision)
                self._rows[key] = row
            rows.append(row)
        return rows

    def _shrunk_row(self, spec: LayerSpec, cin: int | None, cout: int | None, at_block: bool) -> LayerSpec:
        scale = 1.0
        if at_block and spec.op in BLOCKED_OPS and (spec.groups or 1) == 1 and cin and cout:
            block_in, block_out = max(cin, min(self.quantum, spec.cin)), max(cout, min(self.quantum, spec.cout))
            scale = (cin * cout) / (block_in * block_out)
            cin, cout = block_in, block_out
        elif at_block and spec.op.startswith("BatchNorm") and cin:  # follows its convolution (fused there)
            cin = cout = max(cin, min(self.quantum, spec.cin))
        row = spec
        if cin != spec.cin or cout != spec.cout:
            groups = spec.groups
            if groups and groups > 1 and groups == spec.cin == spec.cout:  # depthwise follows its channels
                groups = cout
            row = _shrunk(spec, cin, cout, groups)
        return row if scale == 1.0 else replace(row, time_scale=scale)

    def cost(self, keep: Mapping[str, int]) -> float:
        """The metric for policy ``keep`` (memoised: the clamp asks for the same policies often)."""
        key = (*(keep.get(g.name, g.channels) for g in self.groups), *sorted(self.precision.items()))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        rows = self.layers_for(keep, priced=self.metric == "latency_ms")
        if self.metric == "macs":
            value = float(sum(r.macs for r in rows))
        elif self.metric == "params":
            value = float(sum(r.params for r in rows))
        else:
            value = float(self.latency_of(rows))
        if len(self._cache) < 200_000:
            self._cache[key] = value
        return value

    def group_costs(self) -> dict[str, float]:
        """Cost share of each group: full-model cost minus the cost with that group at its minimum."""
        full = self.cost(self.full_policy())
        return {g.name: full - self.cost({g.name: self.min_channels(g)}) for g in self.groups}

    def clamp(self, index: int, proposed: int, decided: Mapping[str, int], budget: float) -> int:
        """AMC's action wall for group ``index``: the largest allowed count <= ``proposed`` that keeps the
        budget reachable with every later group at its minimum. Returns the minimum if none does."""
        group = self.groups[index]
        policy = dict(decided)
        for later in self.groups[index + 1:]:
            policy[later.name] = self.min_channels(later)
        counts = [c for c in self.allowed_counts(group) if c <= max(proposed, self.min_channels(group))]
        low, high = 0, len(counts) - 1
        if self.cost({**policy, group.name: counts[0]}) > budget:
            return counts[0]
        while low < high:  # largest count whose cost fits; cost grows with channels
            mid = (low + high + 1) // 2
            if self.cost({**policy, group.name: counts[mid]}) <= budget:
                low = mid
            else:
                high = mid - 1
        return counts[low]


    def free_channels(self, index: int, count: int, decided: Mapping[str, int], budget: float) -> int:
        """Raise group ``index`` from ``count`` to larger allowed counts that cost nothing more.

        Runtimes work in channel blocks (ONNX Runtime's CPU kernels in blocks of 16 on AVX-512, so 56
        channels cost what 64 do): where the cost model says a larger count is no slower, keeping
        those channels is free accuracy. Only steps that keep the cost within ``budget`` are taken.
        """
        group = self.groups[index]
        policy = dict(decided)
        for later in self.groups[index + 1:]:
            policy[later.name] = self.min_channels(later)
        current = self.cost({**policy, group.name: count})
        for larger in (c for c in self.allowed_counts(group) if c > count):
            cost = self.cost({**policy, group.name: larger})
            if cost > current * (1 + 1e-9) or cost > budget:
                break
            count = larger
        return count

    def scaled_policy(self, keep: Mapping[str, int], target: float) -> dict[str, int]:
        """Shrink every group of ``keep`` by one common factor, the largest whose cost fits ``target``.

        Keeps the proportions between groups (a sequential re-walk of the clamp would instead give the
        early groups what they ask and starve the late ones). With ``keep`` the full policy this is the
        uniformly pruned model that fits ``target``.
        """

        def scaled(factor: float) -> dict[str, int]:
            return {g.name: max(self.min_channels(g), self.round(g, keep[g.name] / g.channels * factor))
                    for g in self.groups}

        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            if self.cost(scaled(middle)) <= target:
                low = middle
            else:
                high = middle
        return scaled(low)

    def trimmed_policy(self, keep: Mapping[str, int], target: float,
                       score: Callable[[dict[str, int]], float] | None = None, candidates: int = 8,
                       incremental: bool = True) -> dict[str, int]:
        """Take channels from ``keep`` a step at a time until its cost fits ``target``.

        A step gives up, in one group, the next smaller allowed count that lowers the cost (a count
        inside the same runtime block saves nothing and is skipped). Without ``score``, the step that
        saves the most cost per share of its group's channels is taken. With ``score`` (accuracy of a
        policy, higher is better), of the ``candidates`` steps that save the most per share, the one that
        loses the least score per unit of cost saved is taken, NetAdapt's rule: the cost alone favours
        the wide residual groups that every block shares, which accuracy needs most.

        ``incremental`` (the default): a step's score loss is measured once and reused while its group
        keeps its count (the other groups' steps barely move it), and a winner whose loss was measured on
        an earlier policy is scored again before it is taken (lazy greedy), so each step scores the new
        step of the group just trimmed and at most a few stale winners, not every candidate again: a
        repair of the embedded ResNet-56 scored 22 students instead of 81, resnet18 at 64 px 33
        instead of 141, within 1.7 points of the accuracy (``bench/episode_cost.py``).
        ``incremental=False`` scores all ``candidates`` at every step.

        A policy just over its budget thus loses a few channels where they hurt least, instead of every
        group shrinking together (:meth:`scaled_policy`), which with counts rounded to the channel
        multiple moves in coarse jumps. Stops at every group's minimum if the target cannot be reached.
        """
        policy = self.complete(keep)
        current = self.cost(policy)
        current_score = score(policy) if score is not None and current > target else None
        losses: dict[tuple[str, int, int], float] = {}
        while current > target:
            steps: list[tuple[float, dict[str, int], float, tuple[str, int, int]]] = []
            for group in self.groups:
                have = policy[group.name]
                for count in reversed([c for c in self.allowed_counts(group) if c < have]):
                    trial_policy = {**policy, group.name: count}
                    trial = self.cost(trial_policy)
                    if trial < current:
                        steps.append(((current - trial) / ((have - count) / have), trial_policy, trial,
                                      (group.name, have, count)))
                        break
            if not steps:
                break
            steps.sort(key=lambda step: -step[0])
            if score is None:
                _, policy, current, _ = steps[0]
                continue
            policy, current = _lazy_greedy(steps[:max(1, candidates)], losses, incremental,
                                           measure=lambda p, s=current_score: s - score(p),
                                           rank=lambda loss, trial, c=current: loss / (c - trial))
            current_score = score(policy)  # exact again (memoised: just scored)
        return policy

    def grown_policy(self, keep: Mapping[str, int], target: float,
                     score: Callable[[dict[str, int]], float] | None = None, candidates: int = 8,
                     incremental: bool = True) -> dict[str, int]:
        """Give channels back to ``keep`` a step at a time while its cost stays within ``target``: the
        mirror of :meth:`trimmed_policy`, for a student that measured well under its budget.

        A step raises one group to its next larger allowed count; steps that cost nothing (inside a
        runtime block) are taken first. Otherwise, of the ``candidates`` steps that add the least cost
        per share of their group's channels, the one that gains the most ``score`` per unit of cost
        added is taken (without ``score``: the cheapest); ``incremental`` reuses a step's measured gain
        while its group keeps its count, as :meth:`trimmed_policy` does.
        """
        policy = self.complete(keep)
        current = self.cost(policy)
        current_score = score(policy) if score is not None else None
        gains: dict[tuple[str, int, int], float] = {}
        while True:
            steps: list[tuple[float, dict[str, int], float, tuple[str, int, int]]] = []
            for group in self.groups:
                have = policy[group.name]
                larger = [c for c in self.allowed_counts(group) if c > have]
                if not larger:
                    continue
                trial_policy = {**policy, group.name: larger[0]}
                trial = self.cost(trial_policy)
                if trial <= target:
                    steps.append((max(trial - current, 0.0) / ((larger[0] - have) / have), trial_policy, trial,
                                  (group.name, have, larger[0])))
            if not steps:
                return policy
            steps.sort(key=lambda step: step[0])
            if steps[0][0] == 0.0 or score is None:
                _, policy, current, _ = steps[0]
                current_score = None  # scored when a step needs it
                continue
            if current_score is None:
                current_score = score(policy)
            policy, current = _lazy_greedy(steps[:max(1, candidates)], gains, incremental,
                                           measure=lambda p, s=current_score: score(p) - s,
                                           rank=lambda gain, trial, c=current: -gain / max(trial - c, 1e-12))
            current_score = score(policy)

    def set_latency(self, latency_of: Callable[[list[LayerSpec]], float]) -> None:
        """Replace the latency function (a re-anchored prediction) and forget the memoised costs."""
        self.latency_of = latency_of
        self._cache.clear()


def _lazy_greedy(top: Sequence[tuple[float, dict[str, int], float, tuple[str, int, int]]], memo: dict[tuple, float],
                 incremental: bool, measure: Callable[[dict[str, int]], float],
                 rank: Callable[[float, float], float]) -> tuple[dict[str, int], float]:
    """The best of the candidate steps ``top`` (``(_, policy, cost, step)``, lowest ``rank(value, cost)``
    wins) with each step's ``measure`` (its score loss or gain) memoised in ``memo`` by step: measured
    when new (every time unless ``incremental``), and measured again when it wins on a value measured
    at an earlier policy (lazy greedy). Returns the winner's ``(policy, cost)``."""
    fresh = set()
    for _, trial_policy, _, step in top:
        if step not in memo or not incremental:
            memo[step] = measure(trial_policy)
            fresh.add(step)
    while True:
        _, chosen, trial, step = min(top, key=lambda option: rank(memo[option[3]], option[2]))
        if step in fresh:
            return chosen, trial
        memo[step] = measure(chosen)
        fresh.add(step)


def _shrunk(spec: LayerSpec, cin: int | None, cout: int | None, groups: int | None) -> LayerSpec:
    """A layer row with new channel counts; MACs and parameters rescaled exactly for conv/linear/BN."""
    old_cin, old_cout, old_groups = spec.cin or 1, spec.cout or 1, spec.groups or 1
    new_cin, new_cout, new_groups = cin or 1, cout or 1, groups or 1
    if spec.op.startswith("BatchNorm"):
        macs, params = spec.macs, spec.params * new_cout // old_cout
    else:
        per_weight_old = old_cout * (old_cin // old_groups)
        per_weight_new = new_cout * (new_cin // new_groups)
        kernel = math.prod(spec.kernel) if spec.kernel else 1
        bias = spec.params - per_weight_old * kernel  # 0 or cout
        macs = spec.macs * per_weight_new // per_weight_old if per_weight_old else 0
        params = per_weight_new * kernel + (new_cout if bias else 0)
    in_shape = _with_channels(spec.in_shape, new_cin)
    out_shape = _with_channels(spec.out_shape, new_cout)
    return replace(spec, cin=cin, cout=cout, groups=groups, macs=macs, params=params, in_shape=in_shape, out_shape=out_shape)


def _with_channels(shape: tuple[int, ...] | None, channels: int) -> tuple[int, ...] | None:
    if not shape or len(shape) < 2:
        return shape
    return (shape[0], channels, *shape[2:])
