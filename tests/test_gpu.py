"""The GPU end of the chain (skipped without an NVIDIA GPU; run by bench/gpu_check.sh on one).

What the ``cuda`` profiler reports by default (graph replays, rounds until the medians settle), what it
records into a LUT (kernel times of a unit), and a search on ``nvidia-gpu`` with only the ``cuda``
profiler present, from teacher to measured verdict.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwcompress.budget import Budget
from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.measure.resolve import installed_profiler

pytestmark = pytest.mark.gpu
TINY = "hwcompress.model.embedded:resnet20"


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def test_cuda_profiler_replays_a_graph_by_default_and_checks_stability(tmp_path):
    profiler = installed_profiler("cuda")
    artifact = ModelArtifact(tmp_path / "unused.onnx", (4, 3, 32, 32), _net(), "net")
    measurement = profiler.measure(artifact, ProfileSettings(runs=50, warmup=10, per_layer=False))
    facts = measurement.facts
    assert facts["cuda_graph"] is True and facts["batch"] == 4
    assert 1 <= facts["rounds"] <= 5 and len(facts["round_medians_ms"]) == facts["rounds"]
    assert facts["settled"] or any("did not settle" in note for note in measurement.notes)
    eager = profiler.measure(artifact, ProfileSettings(runs=50, warmup=10, per_layer=False, options={"cuda_graph": False}))
    assert eager.facts["cuda_graph"] is False
    assert measurement.latency.median < eager.latency.median  # the graph saves the launches


def test_cuda_unit_timing_reads_kernel_times(tmp_path):
    profiler = installed_profiler("cuda")
    unit = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval()
    artifact = ModelArtifact(tmp_path / "unit.onnx", (1, 64, 28, 28), unit, "unit")
    measurement = profiler.measure_unit(artifact, ProfileSettings(runs=30, warmup=5, per_layer=False))
    assert measurement.latency.runs == 30 and measurement.latency.median > 0
    assert measurement.facts["unit_timing"] in ("kernels", "graph replay")
    whole = profiler.measure(artifact, ProfileSettings(runs=30, warmup=5, per_layer=False, options={"cuda_graph": False}))
    assert measurement.latency.median < whole.latency.median  # no launch or synchronisation in the kernel sum


def test_search_on_nvidia_gpu_measures_its_verdict_with_cuda(tmp_path, monkeypatch):
    """Only the cuda profiler is needed (TensorRT may be missing): teacher, anchors, repair and verdict
    are measured on the GPU with the PyTorch modules the core passes."""
    from hwcompress.search.config import SearchConfig
    from hwcompress.search.run import run_search

    # On an H100 a batch-1 ResNet-20 at 32x32 is bound by its kernel count, not its channels: the smallest
    # channel-pruned student measured 0.81x the teacher there, so the budget sits above that.
    config = SearchConfig(budget=Budget.latency_ratio(0.9), device="nvidia-gpu", model=TINY, data="digits",
                          agent="uniform", episodes=1, finetune_epochs=0, runs=30, val_limit=64, bn_calibration=32,
                          out=str(tmp_path / "out"))
    report = run_search(config, progress=False).report
    assert report["verdict"]["source"] == "measured"
    assert report["student"]["latency"]["profiler"] in ("cuda", "tensorrt")
    assert report["teacher"]["latency_ms"] > 0 and report["student"]["latency_ms"] > 0
    assert report["device"]["facts"].get("gpu") == torch.cuda.get_device_name(0)
