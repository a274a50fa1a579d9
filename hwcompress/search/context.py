"""Fit the latency cost model on students profiled layer by layer in the run itself ("in context").

A LUT times each layer configuration alone, as a one-layer model. Inside a network a layer runs with
its neighbours' caches warm, its input already in the runtime's layout and its kernel code hot, and
what it costs there is what a student pays. Where the two differ, the anchored line through the
teacher and the smallest student puts the error in between: on mobilenet_v2 at 64 px in int8 (this
project's 2-vCPU Xeon, ONNX Runtime 1.32) the LUT's unit for a 1x1 convolution at 4x4 cost 0.019-0.022
ms at 80 and at 384 channels, while in the network the same layer took 0.005 and 0.012 ms: the units'
fixed cost hid how much a layer grows with its channels, so students that kept the wide late layers
measured 1.2-1.6x their prediction (docs/benchmarks.md).

So before the search, a few students are profiled on the device with the runtime's per-node times
(the profiler contract's ``node_ms``, mapped back to layers as ``hwcompress profile`` does):

1. the teacher, the smallest student, uniform students in between, and students with a random width
   per group (which vary each layer's input and output channels independently); with ``--quantize``
   each is the Q/DQ model the runtime runs, and for ``mixed`` also in float and with random precisions;
2. each layer's time is fitted as ``a + b * work`` over those students (``work``: input x output
   channels / groups, the layer's MACs at its fixed spatial size), one line per layer and precision;
3. what names no layer (residual adds, pooling, Q/DQ and layout nodes) is one constant per precision,
   plus a rate per element crossing a change of precision, fitted on the mixed students.

Each student's node times are first cleared of the node profiler's own cost (a few microseconds a
node, :func:`hwcompress.measure.profile.without_profiler_overhead`): they are brought down evenly until they sum to the student's
whole-model median. Left in, it priced every node that a change of precision adds at several times
its cost, and mixed students came out 27-43% too expensive; taken out, held-out mixed students of
mobilenet_v2 at 64 px were priced within 3% on average (``bench/context_fidelity.py --quantize mixed``).

The fitted sum replaces the LUT's prediction as the raw latency that the anchors then map onto
measured whole-model times (:mod:`hwcompress.search.anchors`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwcompress.errors import UserError
from hwcompress.model.analysis import LayerSpec

#: The fit's key for a row without a precision (the model's own).
BASE = ""
#: The default number of students profiled (``--context-students``): the teacher, the smallest student, two
#: uniform ones and two with random widths. More did not predict better: fits on 6 and on 8 students agreed
#: within 0.2 points of error on the held-out students of every network in ``bench/context_fidelity.py``.
DEFAULT_STUDENTS = 6
#: Each student is profiled this many times, in whole passes over the students, keeping its fastest
#: profile: this machine has slow spells of a few seconds in which everything runs 1.5-1.9x slower
#: (a mobilenet_v2 at 64 px traced over 100 s: 0.52 ms, and 0.80 ms for a quarter of the time).
PASSES = 2
#: Timed runs of each profile (the profiler's per-node times come from as many profiled runs, up to its own cap).
PROFILED_RUNS = 20


class NoNodeTimes(UserError):
    """The device's profiler gives no per-node times (the fit needs them)."""


def work(row: LayerSpec) -> float:
    """What a layer's time grows with at its fixed spatial size: input x output channels / groups for
    a convolution or Linear (its MACs per output position), the channels for anything else. A row
    looked up at one channel block (:meth:`~hwcompress.search.cost.CostModel.layers_for`) counts its
    kept channels (``time_scale``)."""
    cin, cout = row.cin or 1, row.cout or row.cin or 1
    if row.op.startswith("Conv") or row.op == "Linear":
        return float(cin * cout * row.time_scale / (row.groups or 1))
    return float(cout)


def precision_key(row: Any) -> str:
    return getattr(row, "precision", None) or BASE


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``ms = intercept + slope * work`` with both kept >= 0:
    a negative slope (noise on a layer whose time barely moves) becomes the median time; a negative
    intercept, the line through the origin."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or float(np.ptp(xs)) == 0.0:
        return float(np.median(ys)), 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    if slope <= 0:
        return float(np.median(ys)), 0.0
    if intercept < 0:
        return 0.0, float(np.dot(xs, ys) / np.dot(xs, xs))
    return float(intercept), float(slope)


@dataclass
class ContextDetail:
    """What :meth:`ContextLatency.predict_detail` returns (the shape :class:`~hwcompress.search.quantized.PrecisionAnchoredLatency`
    reads off a LUT's prediction): the whole, and the part of each precision without the changes between them."""

    total_ms: float
    precision_ms: dict[str, float]


@dataclass
class ContextLatency:
    """The raw latency of layer rows, from per-layer lines fitted in context (see the module docstring).

    Attributes:
        lines: ``{(layer, precision): (intercept_ms, ms_per_work)}``.
        other_ms: per precision, what names no layer in a student all in that precision.
        transition_ms_per_element: per element crossing a change of precision (0 without mixed students).
        students: how many students were profiled; seconds: how long it took.
    """

    lines: dict[tuple[str, str], tuple[float, float]]
    other_ms: dict[str, float]
    transition_ms_per_element: float = 0.0
    students: int = 0
    seconds: float = 0.0
    #: The node profiler's own cost per node taken out of the times fitted (median over the students).
    profiler_overhead_ms_per_node: float = 0.0
    _names: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False, init=False)

    def __post_init__(self) -> None:
        for name, key in self.lines:
            self._names.setdefault(name, []).append(key)

    def line(self, row: LayerSpec) -> tuple[float, float] | None:
        key = (row.name, precision_key(row))
        hit = self.lines.get(key)
        if hit is None and row.name in self._names:  # a precision not profiled for this layer: its own other one
            hit = self.lines[(row.name, self._names[row.name][0])]
        return hit

    def predict_detail(self, rows: Sequence[LayerSpec]) -> ContextDetail:
        parts: dict[str, float] = {}
        counts: dict[str, int] = {}
        precision_of: dict[str, str | None] = {}
        for row in rows:
            key = precision_key(row)
            line = self.line(row)
            if line is not None:
                parts[key] = parts.get(key, 0.0) + line[0] + line[1] * work(row)
                counts[key] = counts.get(key, 0) + 1
            precision_of[row.name] = getattr(row, "precision", None)
        total_count = sum(counts.values()) or 1
        for key, count in counts.items():  # the non-layer time, shared out by each precision's layers
            other = self.other_ms.get(key, statistics.mean(self.other_ms.values()) if self.other_ms else 0.0)
            parts[key] += other * count / total_count
        total = sum(parts.values())
        if self.transition_ms_per_element and len(counts) > 1:
            from hwcompress.lut.predict import transition_elements

            total += self.transition_ms_per_element * transition_elements(list(rows), precision_of)
        return ContextDetail(total, parts)

    def __call__(self, rows: Sequence[LayerSpec]) -> float:
        return float(self.predict_detail(rows).total_ms)

    @property
    def layers(self) -> int:
        """How many layers have a fitted line (in any precision)."""
        return len(self._names)

    def to_dict(self) -> dict[str, Any]:
        return {"lines": [[name, key, round(a, 7), b] for (name, key), (a, b) in sorted(self.lines.items())],
                "other_ms": {k: round(v, 7) for k, v in self.other_ms.items()},
                "transition_ms_per_element": self.transition_ms_per_element, "students": self.students,
                "seconds": round(self.seconds, 2), "profiler_overhead_ms_per_node": round(self.profiler_overhead_ms_per_node, 7)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ContextLatency":
        return cls({(name, key): (float(a), float(b)) for name, key, a, b in data["lines"]},
                   {k: float(v) for k, v in data["other_ms"].items()}, float(data.get("transition_ms_per_element", 0.0)),
                   int(data.get("students", 0)), float(data.get("seconds", 0.0)),
                   float(data.get("profiler_overhead_ms_per_node", 0.0)))


@dataclass
class Profiled:
    """One profiled student: its priced rows and the time of each layer row and of everything else (ms);
    ``mixed``: its precisions were drawn per group (it prices the changes of precision)."""

    rows: list[LayerSpec]
    layer_ms: dict[str, float]
    other_ms: float
    mixed: bool = False
    #: The same measurement's whole-model median (the profiler session, not profiled).
    whole_ms: float | None = None
    #: The node profiler's own cost per node, taken out of the node times (:func:`~hwcompress.measure.profile.without_profiler_overhead`).
    overhead_ms_per_node: float = 0.0

    @property
    def total_ms(self) -> float:
        return sum(self.layer_ms.values()) + self.other_ms


def fit_context(profiled: Sequence[Profiled]) -> ContextLatency:
    """Fit :class:`ContextLatency` on profiled students (see the module docstring)."""
    from hwcompress.lut.predict import transition_elements

    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    pure_other: dict[str, list[float]] = {}
    mixed: list[Profiled] = []
    for student in profiled:
        timed = [row for row in student.rows if row.name in student.layer_ms]
        for row in timed:
            points.setdefault((row.name, precision_key(row)), []).append((work(row), student.layer_ms[row.name]))
        if student.mixed:
            mixed.append(student)
        elif timed:  # keyed by the precision most of its layers run in (an int8 student may keep a layer in float)
            keys = [precision_key(row) for row in timed]
            pure_other.setdefault(max(set(keys), key=keys.count), []).append(student.other_ms)
    lines = {key: fit_line(pts) for key, pts in points.items()}
    other = {key: statistics.median(values) for key, values in pure_other.items()}
    rate = 0.0
    if mixed and other:
        partial = ContextLatency(lines, other, 0.0)
        rates = []
        for student in mixed:
            elements = transition_elements(student.rows, {r.name: getattr(r, "precision", None) for r in student.rows})
            if elements:
                rates.append((student.total_ms - partial(student.rows)) / elements)
        rate = max(0.0, statistics.median(rates)) if rates else 0.0
    overhead = statistics.median(p.overhead_ms_per_node for p in profiled) if profiled else 0.0
    return ContextLatency(lines, other, rate, students=len(profiled), profiler_overhead_ms_per_node=overhead)


def profile_student(profiler: Any, settings: Any, onnx_path: Path, input_shape: Sequence[int], module: Any,
                    rows: Sequence[LayerSpec], name: str, mixed: bool = False) -> Profiled:
    """Profile one student file on the device and split its per-node times into its layer rows."""
    from types import SimpleNamespace

    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.profile import map_node_times, without_profiler_overhead
    from hwcompress.model.analysis import OTHER

    measured = profiler.measure(ModelArtifact(onnx_path, tuple(input_shape), module, name),
                                replace(settings, per_layer=True, runs=min(int(settings.runs), PROFILED_RUNS)))
    if not measured.node_ms:
        raise NoNodeTimes(f"--context-students: the {profiler.name} profiler reports no per-node times to fit the cost model "
                          "on; use --context-students 0 (the LUT's prediction)")
    node_ms, overhead = without_profiler_overhead(measured.node_ms, float(measured.latency.median))
    layer_ms = map_node_times(node_ms, SimpleNamespace(layers=list(rows)), onnx_path)  # (other): what names no layer
    other = layer_ms.pop(OTHER, 0.0)
    return Profiled(list(rows), layer_ms, other, mixed, float(measured.latency.median), overhead)


def context_policies(cost_model: Any, count: int, seed: int) -> list[dict[str, int]]:
    """The widths to profile: the teacher, the smallest student, uniform students at a third and two thirds
    of the way, then random widths per group (seeded), ``count`` in all (at least 2)."""
    rng = np.random.default_rng(seed)
    groups = cost_model.groups
    low = cost_model.lbound

    def uniform(share: float) -> dict[str, int]:
        return {g.name: max(cost_model.min_channels(g), cost_model.round(g, low + share * (1 - low))) for g in groups}

    policies = [cost_model.full_policy(), cost_model.min_policy(), uniform(1 / 3), uniform(2 / 3)][: max(2, count)]
    while len(policies) < count:
        policies.append({g.name: max(cost_model.min_channels(g), cost_model.round(g, float(rng.uniform(low, 1.0))))
                         for g in groups})
    return policies


def build_students(prepared_like: Any, plans: Sequence[tuple[dict[str, int], dict[str, str] | None]],
                   folder: str | Path) -> list[tuple[Path, Any, list[LayerSpec], str]]:
    """Each ``(keep, precision)`` plan pruned from the teacher and written as the file the device runs (the
    Q/DQ model with ``--quantize``; precision None: the cost model's own), with its priced rows:
    ``(path, module, rows, name)`` per plan. ``prepared_like`` as :func:`fit_in_context` takes it."""
    from hwcompress.model.export import export_onnx
    from hwcompress.slim.pruning import prune_channels

    cost_model, quantized = prepared_like.cost_model, prepared_like.quantized
    files = []
    for index, (keep, precision) in enumerate(plans):
        module = prune_channels(prepared_like.teacher, prepared_like.example, keep)
        view = cost_model if precision is None else cost_model.at_precision(precision)
        name = f"context-{index}"
        if quantized is not None:
            path = Path(quantized.quantize(module, name, {} if precision is None else precision, folder=folder)[1].path)
        else:
            path = Path(folder) / f"{name}.onnx"
            export_onnx(module, tuple(prepared_like.example.shape), path)
        files.append((path, module, view.layers_for(keep, priced=True), name))
    return files


def fit_in_context(prepared_like: Any, count: int, seed: int, log: Callable[[str], None] = print) -> ContextLatency:
    """Profile ``count`` students of the search being prepared and fit the cost model on them.

    ``prepared_like`` has ``cost_model``, ``teacher``, ``example``, ``measure`` (the paired measurement,
    whose profiler and settings time the students), ``quantized`` (None for float students).
    Mixed-precision searches profile each width all in int8 and all in float, and ``count // 2`` students
    with a random precision per group for the cost of changing precision.
    """
    from hwcompress.search.precision import ALL_FLOAT, FLOAT, LOW

    started = time.perf_counter()
    cost_model, quantized = prepared_like.cost_model, prepared_like.quantized
    profiler, settings = prepared_like.measure.profiler, prepared_like.measure.settings
    input_shape = tuple(prepared_like.example.shape)
    rng = np.random.default_rng(seed + 1)
    plans: list[tuple[dict[str, int], dict[str, str] | None]] = []
    for keep in context_policies(cost_model, count, seed):
        plans.append((keep, None))
        if quantized is not None and quantized.plan.choosable:
            plans.append((keep, dict(ALL_FLOAT)))
    if quantized is not None and quantized.plan.choosable:
        for keep in context_policies(cost_model, count // 2 + 4, seed + 2)[4:]:
            plans.append((keep, {g: (LOW if rng.random() < 0.5 else FLOAT) for g in quantized.plan.choosable}))
    mixed = f" ({count} widths in int8 and in float, and mixed ones)" if quantized is not None and quantized.plan.choosable else ""
    log(f"cost model: profiling {len(plans)} students layer by layer on the device, {PASSES} passes "
        f"(--context-students {count}{mixed})")
    with tempfile.TemporaryDirectory(prefix="hwcompress-context-") as folder:
        files = [(*built, precision is not None and precision != ALL_FLOAT)
                 for built, (_, precision) in zip(build_students(prepared_like, plans, folder), plans)]
        best: list[Profiled | None] = [None] * len(files)
        for _ in range(PASSES):  # whole passes, so that a slow spell of the machine spoils one pass of a student, not both
            for index, (path, module, rows, name, mixed) in enumerate(files):
                profiled = profile_student(profiler, settings, path, input_shape, module, rows, name, mixed)
                if best[index] is None or profiled.total_ms < best[index].total_ms:
                    best[index] = profiled
    fitted = fit_context([p for p in best if p is not None])
    fitted.seconds = time.perf_counter() - started
    return fitted


def fit_summary(fitted: ContextLatency) -> str:
    text = (f"latency cost model fitted in context: {fitted.layers} layers' times on {fitted.students} students profiled on the "
            f"device ({fitted.seconds:.0f} s)")
    if fitted.profiler_overhead_ms_per_node:
        text += f"; the node profiler's own {1e3 * fitted.profiler_overhead_ms_per_node:.1f} us per node taken out"
    if fitted.transition_ms_per_element:
        text += f", {1e6 * fitted.transition_ms_per_element:.2f} ns per element at a change of precision"
    return text
