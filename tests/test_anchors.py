"""Anchoring the latency cost model on measured students: the curve, the order check, the third anchor."""

import pytest
import torch

from hwcompress.model.analysis import analyze
from hwcompress.model.embedded import resnet_cifar
from hwcompress.search.anchors import Anchor, AnchoredLatency, anchor_latency, monotone_anchors
from hwcompress.search.cost import CostModel
from hwcompress.slim.pruning import find_channel_groups

SHAPE = (1, 3, 32, 32)


def test_curve_passes_through_every_anchor_and_extends_the_end_segments():
    anchors = [Anchor("teacher", 4.0, 2.0), Anchor("smallest", 1.0, 0.5), Anchor("middle", 2.0, 1.5)]
    curve = AnchoredLatency(lambda rows: 0.0, anchors)
    for anchor in anchors:
        assert curve.map(anchor.predicted_ms) == pytest.approx(anchor.measured_ms)
    assert curve.map(1.5) == pytest.approx(1.0)  # halfway between smallest and middle
    assert curve.map(3.0) == pytest.approx(1.75)  # halfway between middle and teacher
    assert curve.map(0.0) == pytest.approx(-0.5)  # the first segment, extended
    assert curve.map(6.0) == pytest.approx(2.5)  # the last segment, extended
    assert AnchoredLatency(lambda rows: 3.0, [Anchor("teacher", 2.0, 1.0)])([]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        AnchoredLatency(lambda rows: 0.0, [])


def test_out_of_order_measurements_are_left_out():
    teacher, smallest = Anchor("teacher", 4.0, 2.0), Anchor("smallest", 1.0, 0.5)
    kept, dropped = monotone_anchors([teacher, smallest, Anchor("middle", 2.0, 2.1)])  # slower than the teacher
    assert kept == [teacher, smallest] and [a.name for a in dropped] == ["middle"]
    kept, dropped = monotone_anchors([teacher, Anchor("smallest", 1.0, 2.5)])  # noise inverted the ends
    assert kept == [teacher] and len(dropped) == 1


def test_saved_anchors_read_back():
    anchor = Anchor("uniform at the budget", 2.0, 1.5)
    assert Anchor.from_dict(anchor.to_dict()) == anchor


def _cost_model():
    torch.manual_seed(0)
    model = resnet_cifar(depth=20).eval()
    layers = analyze(model, SHAPE).layers
    groups = find_channel_groups(model, torch.zeros(SHAPE))

    def lut(rows):  # a LUT that is proportional to MACs
        return 1e-6 * sum(r.macs for r in rows)

    return CostModel(layers, groups, metric="latency_ms", latency_of=lut, multiple=8, lbound=0.2)


def _device(cost_model):
    """A device whose latency is a convex function of the LUT's prediction plus a fixed overhead: the
    shape that makes a straight line through the two ends under-predict the middle."""
    lut = cost_model.latency_of
    full = lut(cost_model.layers_for(cost_model.full_policy()))

    def latency(keep):
        x = lut(cost_model.layers_for(keep)) / full
        return 0.3 + 1.7 * x ** 0.6

    return latency


def test_third_anchor_makes_the_budget_point_exact_and_the_neighbourhood_closer():
    cost = _cost_model()
    device = _device(cost)
    measured: list[str] = []

    def measure_policy(keep, name):
        measured.append(name)
        return device(keep)

    teacher_ms = device(cost.full_policy())
    target = 0.3 + 0.6 * (teacher_ms - 0.3)
    two, _ = anchor_latency(cost, measure_policy, teacher_ms, None, log=lambda m: None)
    assert [a.name for a in two] == ["smallest", "teacher"] and measured == ["smallest"]
    probes = [cost.scaled_policy(cost.full_policy(), target * f) for f in (0.85, 0.95, 1.0, 1.05, 1.15)]
    probes = [p for p in probes if p != cost.full_policy()]
    two_error = [abs(cost.cost(p) - device(p)) for p in probes]
    assert cost.cost(cost.full_policy()) == pytest.approx(teacher_ms)
    assert cost.cost(cost.min_policy()) == pytest.approx(device(cost.min_policy()))

    three, note = anchor_latency(cost, measure_policy, teacher_ms, target, log=lambda m: None)
    assert [a.name for a in three] == ["smallest", "uniform at the budget", "teacher"]
    assert "3 students" in note
    middle = cost.scaled_policy(cost.full_policy(), target)
    assert cost.cost(middle) == pytest.approx(device(middle))
    assert device(middle) <= target * 1.05  # the anchor sits at the budget, where the search ends
    three_error = [abs(cost.cost(p) - device(p)) for p in probes]
    assert sum(three_error) < 0.5 * sum(two_error)
    # Anchoring again starts from the raw LUT, never from an already anchored curve.
    assert isinstance(cost.latency_of, AnchoredLatency) and not isinstance(cost.latency_of.raw, AnchoredLatency)


def test_a_middle_measurement_out_of_order_falls_back_to_two_anchors():
    cost = _cost_model()
    device = _device(cost)
    teacher_ms = device(cost.full_policy())

    def noisy(keep, name):
        return teacher_ms * 1.1 if name == "uniform" else device(keep)

    used, note = anchor_latency(cost, noisy, teacher_ms, 0.6 * teacher_ms, log=lambda m: None)
    assert [a.name for a in used] == ["smallest", "teacher"]
    assert "left out as out of order (measurement noise): uniform at the budget" in note  # the smallest was faster
    assert "measured no faster" not in note
    assert cost.cost(cost.min_policy()) == pytest.approx(device(cost.min_policy()))


def _u_shaped(cost_model, rise=0.25):
    """A device on which fewer channels stop paying (int8 on a small network: quantize/dequantize and
    fixed costs): latency x + rise/x of the LUT's share x, fastest at x = sqrt(rise)."""
    lut = cost_model.latency_of
    full = lut(cost_model.layers_for(cost_model.full_policy()))

    def latency(keep):
        x = lut(cost_model.layers_for(keep)) / full
        return x + rise / x

    return latency


def test_a_smallest_student_no_faster_than_the_teacher_gets_the_uniform_one_measured():
    """With two anchors asked for, a smallest student no faster than the teacher still gets the uniform
    student at the target measured: the line then runs through a pruned student that did measure faster
    (where the teacher alone scaled it before), and the note says which students measured slower."""
    cost = _cost_model()
    lut = cost.latency_of
    device = _u_shaped(cost)
    teacher_ms = device(cost.full_policy())
    assert device(cost.min_policy()) > teacher_ms  # the shape under test

    used, note = anchor_latency(cost, lambda keep, name: device(keep), teacher_ms, 0.85 * teacher_ms,
                                log=lambda m: None, middle=False)
    assert [a.name for a in used] == ["uniform at the budget", "teacher"]
    uniform = used[0]
    assert uniform.measured_ms < teacher_ms
    assert cost.cost(cost.scaled_policy(cost.full_policy(), uniform.measured_ms)) == pytest.approx(uniform.measured_ms, rel=0.05)
    assert "measured no faster than the teacher: smallest" in note and "noise" not in note
    # Nothing measured faster than the teacher: the teacher alone scales the line, as before, and no floor
    # is put under it (a searched student may still be faster, pruned unevenly).
    full = lut(cost.layers_for(cost.full_policy()))
    used, note = anchor_latency(cost, lambda keep, name: 2.0 - lut(cost.layers_for(keep)) / full, 1.0, 0.5,
                                log=lambda m: None, middle=False)
    assert [a.name for a in used] == ["teacher"]
    assert cost.cost(cost.min_policy()) < 0.5
    assert "measured no faster than the teacher: smallest" in note and "uniform at the budget" in note
    # Two anchors asked for and the smallest faster: nothing more is measured.
    measured = []
    anchor_latency(cost, lambda keep, name: measured.append(name) or 0.5, 1.0, 0.6, log=lambda m: None, middle=False)
    assert measured == ["smallest"]
