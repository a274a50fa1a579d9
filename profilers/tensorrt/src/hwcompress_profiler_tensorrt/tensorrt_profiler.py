"""The ``tensorrt`` profiler's measurement: engine from the ONNX file, timed with CUDA events.

Works for any ONNX file and input shape, which is what ``hwcompress lut record`` relies on (it profiles
small single-layer ONNX files); the engine cache keeps repeated records cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress_profiler_tensorrt.engine import (
    PROFILED_RUNS,
    EngineRunner,
    engine_for,
    import_tensorrt,
    make_logger,
    version_major,
)
from hwcompress_profiler_tensorrt.layer_times import unit_run_times
from hwcompress_profiler_tensorrt.measuring import measure_launches
from hwcompress_profiler_tensorrt.options import GpuOptions, check_precision
from hwcompress_profiler_tensorrt.timing import warm_up


def check_device(index: int) -> None:
    """Refuse a CUDA device index that does not exist, saying how many there are."""
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"option device={index} but only {count} CUDA device(s) are visible")


def measure_tensorrt(
    artifact: ModelArtifact, settings: ProfileSettings, options: GpuOptions, *, explicit_quantization: bool, unit: bool = False
) -> Measurement:
    """Build or load the engine, time it, collect per-layer times.

    Args:
        artifact: the ONNX file and the input shape (the module is not used).
        settings: runs, warm-up, per-layer.
        options: validated GPU options (precision already checked against calibration).
        explicit_quantization: the ONNX model has Q/DQ nodes.
        unit: time the in-network cost of a tiny model instead (``measure_unit``): per run, the sum
            of TensorRT's layer times without the format conversions at the model's edges.

    Returns:
        The measurement; ``facts["profiler"] == "tensorrt"``.
    """
    import torch

    trt = import_tensorrt()
    # TensorRT 11 dropped calibrators: re-check now that the version is known.
    check_precision(options, profiler="tensorrt", explicit_quantization=explicit_quantization, tensorrt_major=version_major(trt.__version__))
    check_device(options.device)
    # The device is made current only for this measurement, not for the rest of the process.
    with torch.cuda.device(options.device):
        return _measure_on_current_device(trt, artifact, settings, options, explicit_quantization, unit)


def _measure_on_current_device(
    trt: Any, artifact: ModelArtifact, settings: ProfileSettings, options: GpuOptions, explicit_quantization: bool, unit: bool
) -> Measurement:
    import torch

    device = torch.cuda.current_device()
    gpu_name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    logger = make_logger(trt)
    onnx_path = Path(artifact.onnx_path)
    shape = tuple(int(d) for d in artifact.input_shape)

    def load() -> tuple[bytes, dict[str, Any], Any, str]:
        return engine_for(
            trt, logger, onnx_path, shape, options,
            explicit_quantization=explicit_quantization, gpu_name=gpu_name, compute_capability=f"{major}.{minor}",
        )

    engine_bytes, engine_facts, cache, key = load()
    stream = torch.cuda.Stream()
    notes: list[str] = []
    try:
        runner = EngineRunner(trt, logger, engine_bytes, shape, stream, transfers=options.transfers)
    except RuntimeError:
        if engine_facts.get("engine_cache") != "hit":
            raise
        # A cached engine that no longer loads (truncated file, driver update): rebuild it once.
        cache.discard(key)
        engine_bytes, engine_facts, cache, key = load()
        runner = EngineRunner(trt, logger, engine_bytes, shape, stream, transfers=options.transfers)
        notes.append("the cached engine did not load and was rebuilt")
    try:
        engine_facts["engine_layers"] = runner.num_layers
        engine_facts["workspace_mb"] = options.workspace_mb if options.workspace_mb is not None else "TensorRT default"
        if engine_facts.get("engine_cache") == "built":
            notes.append(f"built a TensorRT engine in {engine_facts['engine_build_s']:.1f} s (cached for next time)")
        if unit:
            return _measure_unit(trt, runner, stream, settings, options, engine_facts, notes)
        return measure_launches(
            profiler="tensorrt",
            runtime="tensorrt",
            runtime_version=str(trt.__version__),
            launch=runner.launch,
            stream=stream,
            settings=settings,
            options=options,
            layer_times=lambda: runner.layer_times(min(int(settings.runs), PROFILED_RUNS)),
            facts=engine_facts,
            notes=notes,
        )
    finally:
        runner.close()


def _measure_unit(
    trt: Any, runner: EngineRunner, stream: Any, settings: ProfileSettings, options: GpuOptions, facts: dict[str, Any], notes: list[str]
) -> Measurement:
    """In-network time of a tiny model from TensorRT's per-layer reports (the LUT recorder's unit timing)."""
    import torch

    with torch.cuda.stream(stream):
        # Clocks up and lazy work done before the profiled runs, as for whole-model timing.
        warm_up(runner.launch, stream, max(int(settings.warmup), 1), options.warmup_ms)
    samples = unit_run_times(runner.profile_records(int(settings.runs)))
    return Measurement(
        latency=LatencyStats.from_samples(samples),
        node_ms=None,
        facts={
            "profiler": "tensorrt",
            "runtime": "tensorrt",
            "runtime_version": str(trt.__version__),
            **options.to_facts(),
            **facts,
            "timing": "sum of TensorRT IProfiler layer times per run, format conversions at the edges left out",
        },
        notes=notes,
    )
