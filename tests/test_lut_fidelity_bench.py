"""bench/lut_fidelity.py's torch-pruning variants of a held-out architecture (mobilenet_v3_small at 64 px).

Only the variant builder runs here (no LUT recording, no timing): what it hands the bench must be pruned
the way its kind says.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys

import pytest
import torch

from tests.conftest import REPO

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lut_fidelity_bench", REPO / "bench" / "lut_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def conv_channels(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {name: (m.in_channels, m.out_channels) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def macs(model: torch.nn.Module) -> int:
    from hwcompress.model.analysis import analyze

    return analyze(model, SHAPE).macs


@pytest.fixture(scope="module")
def original():
    import torchvision

    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    return conv_channels(model), macs(model)


@pytest.mark.parametrize("seed", [0, 1])
def test_tp8_variant_keeps_multiples_of_8(bench, original, seed):
    channels, original_macs = original
    torch.manual_seed(seed)
    model, drawn = bench.build_variant("mobilenet_v3_small", "tp8", SHAPE, random.Random(seed), 8)
    assert drawn["round_to"] == 8
    assert bench.TP_RATIO_RANGE[0] <= drawn["pruning_ratio"] <= bench.TP_RATIO_RANGE[1]
    pruned = conv_channels(model)
    assert pruned.keys() == channels.keys()  # channels removed, no layer removed
    changed = {name for name in pruned if pruned[name][1] != channels[name][1]}
    assert changed, "round_to=8 pruned no convolution's output channels"
    for name in changed:
        assert pruned[name][1] % 8 == 0, f"{name}: {channels[name][1]} -> {pruned[name][1]} output channels"
        assert pruned[name][1] < channels[name][1]
    with torch.no_grad():
        out = model(torch.randn(*SHAPE))
    assert out.shape == (1, 1000)  # the classifier was ignored
    assert macs(model) < original_macs


@pytest.mark.parametrize("seed", [0, 1])
def test_tpnone_variant_has_misaligned_counts(bench, original, seed):
    channels, original_macs = original
    torch.manual_seed(seed)
    model, drawn = bench.build_variant("mobilenet_v3_small", "tpnone", SHAPE, random.Random(seed), 8)
    assert drawn["round_to"] is None
    pruned = conv_channels(model)
    changed = {name for name in pruned if pruned[name][1] != channels[name][1]}
    assert any(pruned[name][1] % 8 for name in changed), "round_to=None left every pruned count a multiple of 8"
    with torch.no_grad():
        out = model(torch.randn(*SHAPE))
    assert out.shape == (1, 1000)
    assert macs(model) < original_macs


def test_lut_flags_misaligned_variant_off_the_blocked_path(bench):
    """The bench's "cannot vouch" count reads the predictor's own verdict: a variant with misaligned
    input channels has layers off the blocked path, an aligned one none (ONNX Runtime's NCHWc rule)."""
    from hwcompress.lut.keys import LayerConfig
    from hwcompress.lut.predict import between_blocks
    from hwcompress.model.analysis import analyze

    block, alignment = 16, 8
    counts = {}
    for kind in ("tp8", "tpnone"):
        torch.manual_seed(0)
        model, _ = bench.build_variant("mobilenet_v3_small", kind, SHAPE, random.Random(3), 8)
        configs = [LayerConfig.from_spec(spec) for spec in analyze(model, SHAPE).layers]
        counts[kind] = sum(between_blocks(c, block, alignment) for c in configs if c is not None)
    assert counts["tp8"] == 0
    assert counts["tpnone"] > 0
    row = {"between_blocks": counts["tpnone"], "extrapolated": 0, "missing": 0}
    assert bench.unvouched(row)
    assert not bench.unvouched({**row, "between_blocks": 0})


def test_project_variant_and_unknown_kind(bench, original):
    channels, original_macs = original
    torch.manual_seed(0)
    model, drawn = bench.build_variant("mobilenet_v3_small", "project", SHAPE, random.Random(0), 8)
    assert 0.3 <= drawn["mean_ratio"] <= 1.0
    assert macs(model) < original_macs
    with pytest.raises(ValueError, match="unknown variant kind"):
        bench.build_variant("mobilenet_v3_small", "tp4", SHAPE, random.Random(0), 8)


def test_thread_clock_profiler_hands_the_node_times_on(bench, tmp_path):
    """The recording measures the node profiler's own cost from a whole model's per-node times
    (``kernel_overhead_ms``, taken off what is priced as timed); the bench's thread-clock wrapper must
    hand them on, as it hands on the layout-conversion probe, or its LUTs lack the term."""
    from hwcompress_profiler_onnxruntime import OnnxRuntimeProfiler

    from hwcompress.lut.recorder import kernel_overhead
    from hwcompress.measure.contract import ModelArtifact, ProfileSettings
    from hwcompress.model.export import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 1)).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 3, 16, 16), path, verify=False)
    wrapped = bench.ThreadClockProfiler(OnnxRuntimeProfiler())
    artifact = ModelArtifact(onnx_path=path, input_shape=(1, 3, 16, 16), module=model, name="m")
    settings = ProfileSettings(threads=1, runs=5, warmup=1)
    assert wrapped.measure(artifact, dataclasses.replace(settings, per_layer=False)).node_ms is None  # unprofiled
    measured = kernel_overhead(wrapped, artifact, settings, rounds=1)
    assert measured is not None and 0 <= measured < 0.1


def test_drift_references_are_the_recorders_copies(bench, tmp_path):
    """The size-matched reference of the drift-corrected view: each calibration copy rebuilt as the recorder
    built it (same MACs), and a variant measured beside the copy nearest its predicted latency."""
    import torchvision

    from hwcompress.lut.record import calibration_models

    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    (tmp_path / "rec").mkdir()
    recorded = calibration_models(model, SHAPE, (0.5, 0.3), 8, tmp_path / "rec", "m")
    calibration = {"measured_ms": 1.0, "points": [{"width": p["width"], "measured_ms": ms, "macs": p["macs"]}
                                                  for p, ms in zip(recorded, (1.0, 0.5, 0.3))]}
    refs = bench.drift_references("mobilenet_v3_small", calibration, SHAPE, "fp32", "nearest", 8, tmp_path)
    assert [r[0] for r in refs] == [1.0, 0.5, 0.3]
    for (width, path, module, ms), point in zip(refs, calibration["points"]):
        assert path.exists() and ms == point["measured_ms"]
        assert macs(module) == point["macs"], f"width {width}: not the recorder's copy"
    assert bench.nearest_reference(refs, 0.33)[0] == 0.3
    assert bench.nearest_reference(refs, 0.45)[0] == 0.5  # by ratio: 0.45 is 0.9x of 0.5, 1.5x of 0.3
    assert bench.nearest_reference(refs, 2.0)[0] == 1.0
    unpruned = bench.drift_references("mobilenet_v3_small", calibration, SHAPE, "fp32", "unpruned", 8, tmp_path)
    assert [(r[0], r[3]) for r in unpruned] == [(1.0, 1.0)]
