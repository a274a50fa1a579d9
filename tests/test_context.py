"""The cost model fitted in context (hwcompress.search.context): the per-layer lines, the constant and the
cost of a change of precision recovered from profiled students, the prediction by layer and precision,
and the fit saved and read back. The real ONNX Runtime profiling inside a search is tested in
tests/test_quantize.py (its int8 searches fit in context by default)."""

from __future__ import annotations

import pytest

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.lut.keys import at_precision
from hwcompress.lut.predict import transition_elements
from hwcompress.measure.profile import without_profiler_overhead
from hwcompress.model.analysis import LayerSpec
from hwcompress.search.config import SearchConfig
from hwcompress.search.context import ContextLatency, Profiled, fit_context, fit_line, work


def conv(name, cin, cout, groups=1, size=8, sources=None):
    return LayerSpec(name, "Conv2d", (1, cin, size, size), (1, cout, size, size), cin, cout, (3, 3), (1, 1), (1, 1),
                     groups, sources=sources)


def network(a, b, precisions=None):
    """Three layers: a:3->a, a depthwise a, b 1x1 a->b; each at ``precisions[name]`` when given."""
    rows = [conv("first", 3, a), conv("dw", a, a, groups=a, sources=("first",)), conv("last", a, b, sources=("dw",))]
    if precisions:
        rows = [at_precision(r, precisions[r.name]) for r in rows]
    return rows


TRUE = {"first": (0.010, 0.0004), "dw": (0.004, 0.0002), "last": (0.006, 0.00003)}


def timed(rows, other=0.05, rate=0.0, precision_of=None):
    layer_ms = {r.name: TRUE[r.name][0] + TRUE[r.name][1] * work(r) for r in rows}
    extra = rate * transition_elements(rows, precision_of) if precision_of else 0.0
    return Profiled(list(rows), layer_ms, other + extra, mixed=bool(precision_of))


def test_work_is_the_macs_per_position_and_counts_kept_channels_of_a_row_priced_at_a_block():
    assert work(conv("c", 16, 32)) == 512
    assert work(conv("d", 32, 32, groups=32)) == 32
    from dataclasses import replace

    assert work(replace(conv("c", 16, 16), time_scale=0.25)) == 64  # 8 x 8 kept, looked up at 16 x 16


def test_fit_line_recovers_a_line_and_keeps_both_terms_non_negative():
    assert fit_line([(1, 3.0), (2, 5.0), (4, 9.0)]) == pytest.approx((1.0, 2.0))
    assert fit_line([(1, 2.0), (2, 1.9), (3, 1.0)]) == (pytest.approx(1.9), 0.0)  # falling: the median, flat
    intercept, slope = fit_line([(1, 0.5), (2, 2.0), (3, 3.5)])  # would cross below zero: through the origin
    assert intercept == 0.0 and slope == pytest.approx((0.5 + 4.0 + 10.5) / 14)
    assert fit_line([(4, 1.0), (4, 3.0)]) == (2.0, 0.0)  # one width only: nothing to fit a slope on


def test_the_fit_recovers_each_layers_line_and_the_rest_and_predicts_an_unprofiled_student():
    profiled = [timed(network(a, b)) for a, b in ((8, 16), (16, 16), (32, 64), (24, 40), (8, 64))]
    fitted = fit_context(profiled)
    for name, (intercept, slope) in TRUE.items():
        assert fitted.lines[(name, "")] == pytest.approx((intercept, slope))
    assert fitted.other_ms == {"": pytest.approx(0.05)} and fitted.transition_ms_per_element == 0.0
    unseen = network(48, 24)
    assert fitted(unseen) == pytest.approx(timed(unseen).total_ms)
    assert fitted(network(48, 48)) > fitted(unseen)


def test_each_precision_gets_its_own_lines_and_a_change_of_precision_its_rate():
    rate = 2e-5
    floating, low = {n: "fp32" for n in TRUE}, {n: "int8" for n in TRUE}
    half = {"first": "int8", "dw": "fp32", "last": "int8"}
    profiled = [timed(network(a, b, p)) for a, b in ((8, 16), (32, 64), (16, 40)) for p in (floating, low)]
    profiled += [timed(network(a, b, half), rate=rate, precision_of=half) for a, b in ((16, 16), (32, 32))]
    fitted = fit_context(profiled)
    assert {key for _, key in fitted.lines} == {"fp32", "int8"}
    assert fitted.transition_ms_per_element == pytest.approx(rate)
    mixed = network(24, 48, half)
    detail = fitted.predict_detail(mixed)
    assert set(detail.precision_ms) == {"fp32", "int8"}
    assert detail.total_ms == pytest.approx(timed(mixed, rate=rate, precision_of=half).total_ms)
    assert detail.total_ms > sum(detail.precision_ms.values())  # the changes of precision are on top of the parts


def test_a_fit_reads_back_as_it_was_saved():
    fitted = fit_context([timed(network(a, b)) for a, b in ((8, 16), (32, 64), (16, 40))])
    again = ContextLatency.from_dict(fitted.to_dict())
    rows = network(24, 24)
    assert again(rows) == pytest.approx(fitted(rows), rel=1e-5) and again.students == 3


def test_the_node_profilers_own_cost_is_taken_out_evenly_down_to_the_whole_model_time():
    # 0.015 ms of nodes for a 0.009 ms model: 0.002 off each, the node that cannot give it stops at zero and
    # the other two share what it could not give.
    times, overhead = without_profiler_overhead({"a": 0.010, "b": 0.004, "c": 0.001}, 0.009)
    assert times == {"a": pytest.approx(0.0075), "b": pytest.approx(0.0015), "c": 0.0}
    assert sum(times.values()) == pytest.approx(0.009) and overhead == pytest.approx(0.002)
    # Nodes that sum to the whole or less (a profiler without overhead, or one that times part of the model): as they are.
    assert without_profiler_overhead({"a": 0.004, "b": 0.003}, 0.009) == ({"a": 0.004, "b": 0.003}, 0.0)
    # The fit keeps the median overhead of its students, and it reads back.
    students = [timed(network(a, b)) for a, b in ((8, 16), (32, 64), (16, 40))]
    for student, cost in zip(students, (0.001, 0.003, 0.002)):
        student.overhead_ms_per_node = cost
    fitted = fit_context(students)
    assert fitted.profiler_overhead_ms_per_node == 0.002
    assert ContextLatency.from_dict(fitted.to_dict()).profiler_overhead_ms_per_node == 0.002


def test_context_students_is_on_by_default_and_checked():
    assert SearchConfig(budget=Budget.latency_ratio(0.5)).context_count == 6
    assert SearchConfig(budget=Budget.latency_ratio(0.5), quantize="int8").context_count == 6
    assert SearchConfig(budget=Budget.latency_ratio(0.5), quantize="int8", context_students=0).context_count == 0
    assert SearchConfig(budget=Budget.latency_ratio(0.5), context_students=5).context_count == 5
    for bad in (1, 2, -1, 2.5):
        with pytest.raises(UserError, match="--context-students"):
            SearchConfig(budget=Budget.latency_ratio(0.5), context_students=bad)
