"""The work between a network's layers (hwcompress.lut.nonlayer): read off the layer rows, timed by a
real ONNX Runtime probe, priced outside the calibration's ratio."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hwcompress.lut.nonlayer import KINDS, fit_cost_line, non_layer_ms, non_layer_work, valid_non_layer_rates
from hwcompress.model.analysis import analyze

SHAPE = (1, 3, 96, 96)


def test_the_work_between_layers_is_read_off_the_rows_of_torchvision_networks():
    torchvision = pytest.importorskip("torchvision")
    effnet = non_layer_work(analyze(torchvision.models.efficientnet_b0(), SHAPE).layers)
    # 16 squeeze-excitation blocks (a pool and a multiply each), one pool before the classifier, and
    # the 9 blocks whose input and output match (a residual add each).
    assert {kind: nodes for kind, (nodes, _, _) in effnet.items()} == {"scale": 16, "add": 9, "global_pool": 17}
    # Each add at its stage's size (channels x height x width), a chain of n blocks being n - 1 adds.
    assert effnet["add"][2] == 24 * 24 * 24 + 40 * 12 * 12 + 2 * 80 * 6 * 6 + 2 * 112 * 6 * 6 + 3 * 192 * 3 * 3
    resnet = non_layer_work(analyze(torchvision.models.resnet18(), SHAPE).layers)
    # One max pool after the stem (64x48x48 in), eight residual adds, one global pool (512x3x3 in).
    assert resnet == {"pool": (1, 64, 64 * 48 * 48), "add": (8, 2 * (64 + 128 + 256 + 512), 138240),
                      "global_pool": (1, 512, 512 * 3 * 3)}
    # An add that can run inside a layer writing one of its new operands costs nothing: each block's
    # second convolution, or (the first block of a stage) its shortcut's.
    rows = analyze(torchvision.models.resnet18(), SHAPE).layers
    assert "add" not in non_layer_work(rows, fused=lambda name: True)
    shortcut_only = non_layer_work(rows, fused=lambda name: "downsample" in name)
    assert shortcut_only["add"][0] == 8 - 3  # the three stages that start with a downsampling shortcut


def test_the_work_follows_the_channels_a_student_keeps_and_needs_the_rows_sources():
    torchvision = pytest.importorskip("torchvision")
    rows = analyze(torchvision.models.resnet18(), SHAPE).layers
    halved = [dataclasses.replace(r, out_shape=(r.out_shape[0], r.out_shape[1] // 2, *r.out_shape[2:]),
                                  in_shape=(r.in_shape[0], max(r.in_shape[1] // 2, 1), *r.in_shape[2:]))
              if r.out_shape and len(r.out_shape) == 4 else r for r in rows]
    full, half = non_layer_work(rows), non_layer_work(halved)
    assert half["add"][2] * 2 == full["add"][2] and half["global_pool"][1] * 2 == full["global_pool"][1]
    # Rows without sources (an ONNX analysis) say nothing about what runs between them.
    assert non_layer_work([dataclasses.replace(r, sources=None) for r in rows]) == {}


def test_the_cost_line_is_fitted_non_negative():
    points = [(c, c * hw * hw, 0.002 + 6e-6 * c + 8e-8 * c * hw * hw) for c, hw in ((64, 56), (64, 14), (256, 28), (1024, 3))]
    fit = fit_cost_line(points)
    assert fit["intercept_ms"] == pytest.approx(0.002, rel=1e-6) and fit["per_channel_ms"] == pytest.approx(6e-6, rel=1e-6)
    assert fit["per_element_ms"] == pytest.approx(8e-8, rel=1e-6) and len(fit["points"]) == 4
    falling = [(c, e, 0.01 - 1e-6 * c + 1e-7 * e) for c, e, _ in points]  # a term that fits negative is left out
    assert all(fit_cost_line(falling)[k] >= 0 for k in ("intercept_ms", "per_channel_ms", "per_element_ms"))
    work = {"scale": (2, 100, 1000)}
    assert non_layer_ms({"scale": fit}, work, netted_ms=0.001) == pytest.approx(2 * 0.001 + 100 * 6e-6 + 1000 * 8e-8)


def test_onnx_runtime_times_the_work_between_layers():
    from hwcompress_profiler_onnxruntime import OnnxRuntimeProfiler

    from hwcompress.measure.contract import ProfileSettings

    costs = OnnxRuntimeProfiler().non_layer_costs(ProfileSettings(threads=1))
    assert set(costs) == set(KINDS) and valid_non_layer_rates(costs)
    for kind, fit in costs.items():
        assert len(fit["points"]) == 6 and all(ms > 0 for _, _, ms in fit["points"]), (kind, fit)
        # Work grows with the tensor: the largest probe is priced above the smallest.
        big, small = max(fit["points"], key=lambda p: p[1]), min(fit["points"], key=lambda p: p[1])
        assert non_layer_ms({kind: fit}, {kind: (1, big[0], big[1])}) > non_layer_ms({kind: fit}, {kind: (1, small[0], small[1])})
    assert not valid_non_layer_rates({"scale": {**costs["scale"], "per_element_ms": math.nan}})
    assert not valid_non_layer_rates({"scale": {**costs["scale"], "intercept_ms": "0.1"}})
    assert not valid_non_layer_rates({"scale": 0.1}) and not valid_non_layer_rates([]) and not valid_non_layer_rates({})


def test_an_add_runs_on_its_own_after_a_blocked_convolution_with_a_partial_block_out():
    """ONNX Runtime sums in place in a plain convolution, and in a blocked one with whole blocks out; a
    blocked one with a partial block out (400 -> 371 channels on 16-channel blocks) leaves its add to a
    kernel of its own, as the torch-pruned regnet_x_400mf variants' kernels showed."""
    from types import SimpleNamespace

    torchvision = pytest.importorskip("torchvision")
    from hwcompress.lut.keys import LayerConfig
    from hwcompress.lut.nonlayer import priced_work
    from hwcompress.lut.predict import between_blocks

    rows = analyze(torchvision.models.resnet18(), SHAPE).layers
    fit = {"intercept_ms": 0.0, "per_channel_ms": 0.0, "per_element_ms": 1e-6}
    table = SimpleNamespace(_non_layer={"add": fit}, layout=(16, 4), kernel_overhead_ms=0.0, net_off_path=True,
                            _config_of=lambda spec: (LayerConfig.from_spec(spec), None),
                            off_path=lambda config: between_blocks(config, 16, 4))
    assert priced_work(table, rows) == 0  # every block's convolutions on the path, whole blocks out

    def narrowed(name: str, cout: int) -> list:
        return [dataclasses.replace(r, cout=cout, out_shape=(1, cout, *r.out_shape[2:])) if r.name == name else r for r in rows]

    # layer1.1.conv2 with 60 channels out (cin 64: on the path) leaves its add (64x24x24) on its own;
    # the same with 48 out (three whole blocks) sums in place.
    assert priced_work(table, narrowed("layer1.1.conv2", 60)) == pytest.approx(1e-6 * 60 * 24 * 24)
    assert priced_work(table, narrowed("layer1.1.conv2", 48)) == 0
