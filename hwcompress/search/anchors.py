"""Anchor the cost model's latency on students measured on the device in the run itself.

A LUT is recorded once, layer by layer; a search runs later, on a machine whose clocks, load and
runtime state have moved, and a per-layer sum misses the part of a whole model's time that does not
shrink with channels. So before the search, a few students are measured on the device and the LUT's
prediction is mapped through the monotone piecewise-linear curve that makes each of them exact:

1. the teacher (every channel) and the smallest allowed student (every group at its minimum) fix the
   two ends of the range the search moves in (the default);
2. optionally (``--anchors 3``), a third student, pruned uniformly to the width the two-point curve
   puts at the search budget, fixes the point where the search's policies end up, for devices whose
   latency bends between the two ends. On this project's 2-core CPU it did not help: with two anchors
   the searched students already measured within 1-6% (mean 3%) of their prediction, the level at which two
   measurements of one student agree (``bench/anchor_fidelity.py``, docs/benchmarks.md).

A measurement that contradicts the order of the others (noise on a machine that is busy) is left out
and said so, never bent into a non-monotone curve. A smallest student that measures no faster than the
teacher is not always noise: int8 students at a few channels pay the quantize/dequantize nodes and the
integer kernels' fixed costs. Then, given a search target, the uniform student at the target is measured
as well, so that the line runs through a pruned student where one measured faster than the teacher, and
the note says which students measured slower. No floor is put under the prices: on the embedded
ResNet-56 in int8 the smallest student (0.56-0.59 ms) and the uniform one (0.58-0.60) measured slower
than the teacher (0.55-0.58), and searched students still measured 0.488-0.508 ms, under budgets of
0.516-0.523: pruned unevenly, int8 students can be faster where no uniform one is (docs/search.md).
The measured verdict decides.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from hwcompress.model.analysis import LayerSpec


@dataclass(frozen=True)
class Anchor:
    """One student measured on the device: its name, the raw LUT prediction and the measurement (ms)."""

    name: str
    predicted_ms: float
    measured_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "predicted_ms": round(self.predicted_ms, 5), "measured_ms": round(self.measured_ms, 5)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Anchor":
        return cls(str(data["name"]), float(data["predicted_ms"]), float(data["measured_ms"]))


class AnchoredLatency:
    """A latency function: the raw prediction mapped through the curve that passes through the anchors.

    Between two anchors the map is the straight line through them; beyond the outermost ones, the
    nearest segment is extended. One anchor scales the prediction by its measured/predicted ratio.

    Args:
        raw: the LUT's prediction for a model's layer rows (ms).
        anchors: measured students; they must increase together in prediction and measurement
            (see :func:`monotone_anchors`).

    Example:
        >>> curve = AnchoredLatency(lambda rows: 1.0, [Anchor("a", 1.0, 0.5), Anchor("b", 2.0, 2.0)])
        >>> curve.map(1.5)
        1.25
    """

    def __init__(self, raw: Callable[[list[LayerSpec]], float], anchors: Sequence[Anchor]) -> None:
        if not anchors:
            raise ValueError("at least one anchor is needed")
        self.raw = raw
        self.anchors = sorted(anchors, key=lambda a: a.predicted_ms)
        self._xs = [a.predicted_ms for a in self.anchors]

    def map(self, predicted: float) -> float:
        """The measured-scale latency for a raw prediction."""
        points = self.anchors
        if len(points) == 1:
            return predicted * points[0].measured_ms / points[0].predicted_ms
        right = min(max(bisect.bisect_left(self._xs, predicted), 1), len(points) - 1)
        a, b = points[right - 1], points[right]
        slope = (b.measured_ms - a.measured_ms) / (b.predicted_ms - a.predicted_ms)
        return a.measured_ms + slope * (predicted - a.predicted_ms)

    def __call__(self, rows: list[LayerSpec]) -> float:
        return self.map(self.raw(rows))


def monotone_anchors(anchors: Sequence[Anchor]) -> tuple[list[Anchor], list[Anchor]]:
    """Split anchors into those that keep prediction and measurement increasing together, and the rest.

    The teacher and the smallest student come first and are always kept when they agree with each
    other; every further anchor is kept only when it lies strictly inside its neighbours on both axes.
    """
    kept: list[Anchor] = []
    dropped: list[Anchor] = []
    for anchor in anchors:
        trial = sorted([*kept, anchor], key=lambda a: a.predicted_ms)
        ordered = all(p.predicted_ms < q.predicted_ms and p.measured_ms < q.measured_ms for p, q in zip(trial, trial[1:]))
        (kept if ordered else dropped).append(anchor)
    return kept, dropped


def anchor_latency(
    cost_model: Any,
    measure_policy: Callable[[Mapping[str, int], str], float],
    teacher_ms: float,
    target_ms: float | None,
    log: Callable[[str], None] = print,
    middle: bool = True,
) -> tuple[list[Anchor], str]:
    """Measure the anchor students and install the anchored prediction in ``cost_model``.

    Args:
        cost_model: a latency :class:`~hwcompress.search.cost.CostModel` (its current ``latency_of`` is
            taken as the raw prediction, or its ``raw`` when it is already anchored).
        measure_policy: measures the student pruned to a policy on the device (ms); its second
            argument names the student.
        teacher_ms: the teacher's measured latency.
        target_ms: the latency the search aims at (the budget less its margin), where the third anchor
            goes; None: no third anchor, whatever ``middle`` says.
        log: where the one-line summary goes.
        middle: measure the third anchor whenever ``target_ms`` is in range (``--anchors 3``); False: only
            when the smallest student measured no faster than the teacher.

    Returns:
        ``(anchors used, smallest prediction first; note)``.
    """
    raw = getattr(cost_model.latency_of, "raw", cost_model.latency_of)
    cost_model.set_latency(raw)
    full_policy, min_policy = cost_model.full_policy(), cost_model.min_policy()
    teacher = Anchor("teacher", cost_model.cost(full_policy), teacher_ms)
    smallest = Anchor("smallest", cost_model.cost(min_policy), measure_policy(min_policy, "smallest"))
    kept, dropped = monotone_anchors([teacher, smallest])
    if len(kept) < 2:  # nothing to prune, or the smallest measured no faster: scale on the teacher alone
        kept, dropped = [teacher], [smallest]
    no_faster = smallest.predicted_ms < teacher.predicted_ms and smallest.measured_ms >= teacher.measured_ms
    cost_model.set_latency(AnchoredLatency(raw, kept))
    in_range = target_ms is not None and target_ms < teacher_ms
    wanted = in_range and ((middle and len(kept) == 2 and smallest.measured_ms < target_ms) or no_faster)
    middle_policy = cost_model.scaled_policy(full_policy, target_ms) if wanted else None
    if middle_policy is not None and middle_policy != min_policy:  # the smallest is not measured again as the uniform one
        cost_model.set_latency(raw)
        uniform = Anchor("uniform at the budget", cost_model.cost(middle_policy), measure_policy(middle_policy, "uniform"))
        kept, dropped = monotone_anchors([teacher, smallest, uniform])
        cost_model.set_latency(AnchoredLatency(raw, kept))
    kept = sorted(kept, key=lambda a: a.predicted_ms)
    parts = [f"{a.name} {a.measured_ms:.3f} ms (predicted {a.predicted_ms:.3f})" for a in reversed(kept)]
    note = (f"cost model anchored on {len(kept)} student{'s' * (len(kept) != 1)} measured in this run: "
            + ", ".join(parts))
    # Slower, not noise: predicted under every anchor kept and measured no faster than the teacher.
    slower = [a for a in dropped if a.predicted_ms < kept[0].predicted_ms and a.measured_ms >= teacher.measured_ms]
    noise = [a for a in dropped if a not in slower]
    if noise:
        note += "; left out as out of order (measurement noise): " + ", ".join(
            f"{a.name} {a.measured_ms:.3f} ms (predicted {a.predicted_ms:.3f})" for a in noise)
    if slower:
        note += ("; measured no faster than the teacher: " + ", ".join(
            f"{a.name} {a.measured_ms:.3f} ms (predicted {a.predicted_ms:.3f})" for a in slower)
            + " (fewer channels need not pay here; below the lowest anchor the line is extended, and the measured "
              "verdict decides)")
    log(note)
    return kept, note


class MedianOf:
    """A paired measurement (``measure(module, name, ...)``) taken ``times`` times; the measurement with
    the middle median is returned, so that one slow moment does not set an anchor.

    A quantized measurement's ``paired`` (its float students) is repeated the same way; every other
    attribute (``teacher_ms``, the profiler) is the wrapped measurement's.
    """

    def __init__(self, measure: Any, times: int) -> None:
        self.measure = measure
        self.times = max(1, int(times))

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        taken = sorted((self.measure(*args, **kwargs) for _ in range(self.times)), key=lambda m: m["median"])
        middle = dict(taken[len(taken) // 2])
        middle["repeated"] = [m["median"] for m in taken]
        return middle

    @property
    def paired(self) -> "MedianOf":
        return MedianOf(self.measure.paired, self.times)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.measure, attribute)
