"""The ``cuda`` profiler's measurement: the PyTorch module itself on the GPU, timed with CUDA events.

For machines with an NVIDIA GPU and PyTorch but no TensorRT. It runs PyTorch's own kernels (cuDNN,
cuBLAS; no layer fusion), so it is slower than TensorRT for the same model: a different runtime, not a
worse measurement.

* **Whole model**: one inference is captured in a CUDA graph and the graph replayed, by default. Eager
  batch-1 timing on a fast GPU measures Python's launch overhead, not the GPU (measured on an H100:
  mobilenet_v2 fp16 3.15 ms eager against 0.57 ms replayed); a deployed model runs without it. Where
  capture fails the eager launches are timed and the report says so. The batch is the input shape's.
* **Per layer**: CUDA events recorded by forward hooks on every leaf module, in a separate eager run,
  keyed so the core maps them to the same layer rows as ONNX nodes.
* **A LUT unit** (:func:`measure_unit_cuda`): the sum of its kernels' durations from PyTorch's profiler
  (CUPTI), per run: what the layer costs inside a graph-replayed network, without the launch and
  synchronisation a single-layer loop pays per iteration. Where the profiler cannot run, graph replays
  of the unit are timed instead, with a note.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

from hwcompress.errors import UserError
from hwcompress.measure.contract import Measurement, ModelArtifact, ProfileSettings
from hwcompress_profiler_tensorrt.layer_times import aggregate_layer_times
from hwcompress_profiler_tensorrt.measuring import measure_launches
from hwcompress_profiler_tensorrt.options import GpuOptions
from hwcompress_profiler_tensorrt.tensorrt_profiler import check_device

PROFILED_RUNS = 20
PROFILED_WARMUP = 2


def module_node_name(module_path: str, module: Any) -> str:
    """A node name the core maps back to ``module_path``: ``/layer1.0.conv1/Conv2d``.

    ``hwcompress.model.export.node_module_path`` takes the second-to-last ``/`` part of an ONNX node name
    as the module path; this builds names of that shape for PyTorch modules.
    """
    return f"/{module_path}/{type(module).__name__}"


@contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    # A process-wide switch: set for the measurement, put back afterwards.
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _tf32_facts() -> dict[str, Any]:
    import torch

    return {
        "tf32_matmul": bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False)),
        "tf32_cudnn": bool(getattr(torch.backends.cudnn, "allow_tf32", False)),
    }


def module_layer_times(model: Any, example: Any, stream: Any, runs: int = PROFILED_RUNS) -> dict[str, float]:
    """Median per-leaf-module GPU time, from CUDA events recorded by forward hooks.

    Args:
        model: the module on the GPU.
        example: its input on the GPU.
        stream: the stream to run on.
        runs: profiled inferences (after a short warm-up).

    Returns:
        :func:`module_node_name` -> median milliseconds per inference (a module called twice per
        forward, like torchvision's shared ReLU, is summed within an inference).
    """
    import torch

    records: list[tuple[int, str, Any, Any]] = []
    pending: dict[str, Any] = {}
    current = {"run": -1}
    handles = []

    def before(path: str) -> Any:
        def hook(_module: Any, _args: Any) -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            pending[path] = event

        return hook

    def after(path: str) -> Any:
        def hook(module: Any, _args: Any, _output: Any) -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            start = pending.pop(path, None)
            if start is not None:
                records.append((current["run"], module_node_name(path, module), start, event))

        return hook

    for path, module in model.named_modules():
        if path and next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(before(path)))
            handles.append(module.register_forward_hook(after(path)))
    try:
        with torch.cuda.stream(stream), torch.inference_mode():
            for index in range(-PROFILED_WARMUP, max(1, runs)):
                current["run"] = index
                model(example)
                stream.synchronize()
    finally:
        for handle in handles:
            handle.remove()
    return aggregate_layer_times((run, name, start.elapsed_time(end)) for run, name, start, end in records)


def measure_cuda(artifact: ModelArtifact, settings: ProfileSettings, options: GpuOptions) -> Measurement:
    """Time ``artifact.module`` on the GPU with CUDA events.

    Args:
        artifact: needs the PyTorch module (an ONNX-only model cannot run here).
        settings: runs, warm-up, per-layer.
        options: validated GPU options (precision fp32 or fp16).

    Returns:
        The measurement; ``facts["profiler"] == "cuda"``.

    Raises:
        UserError: no PyTorch module, or a bad device index.
    """
    if artifact.module is None:
        raise UserError(
            "the cuda profiler runs the PyTorch module, and this model is only an ONNX file; "
            "install TensorRT for the tensorrt profiler (pip install 'hwcompress-profiler-tensorrt[tensorrt]') "
            "or pass a PyTorch model"
        )
    import torch

    check_device(options.device)
    dtype = torch.float16 if options.precision == "fp16" else torch.float32
    with torch.cuda.device(options.device), _cudnn_benchmark(options.cudnn_benchmark):
        device = torch.device("cuda", options.device)
        # A copy: moving and casting are in place, and the caller's module must stay as it was.
        model = copy.deepcopy(artifact.module).eval().to(device=device, dtype=dtype)
        host_input = torch.randn(tuple(artifact.input_shape), generator=torch.Generator().manual_seed(0)).to(dtype)
        example = host_input.to(device)
        stream = torch.cuda.Stream(device)
        if options.transfers:
            pinned_input = host_input.pin_memory()
            with torch.inference_mode(), torch.cuda.stream(stream):
                first = model(example)
            stream.synchronize()
            output = first[0] if isinstance(first, (tuple, list)) else first
            pinned_output = torch.empty(output.shape, dtype=output.dtype).pin_memory()

            def launch() -> Any:
                example.copy_(pinned_input, non_blocking=True)
                out = model(example)
                out = out[0] if isinstance(out, (tuple, list)) else out
                pinned_output.copy_(out, non_blocking=True)
                return out

        else:

            def launch() -> Any:
                return model(example)

        facts = {"cudnn_benchmark": options.cudnn_benchmark, "batch": int(artifact.input_shape[0]), **_tf32_facts()}
        with torch.inference_mode():
            measurement = measure_launches(
                profiler="cuda",
                runtime="torch",
                runtime_version=str(torch.__version__),
                launch=launch,
                stream=stream,
                settings=settings,
                options=options,
                layer_times=lambda: module_layer_times(model, example, stream, min(int(settings.runs), PROFILED_RUNS)),
                facts=facts,
                default_cuda_graph=True,
            )
        if measurement.node_ms and measurement.facts.get("cuda_graph"):
            measurement.notes.append("per-layer times come from a separate eager run, CUDA events around each module "
                                     "(launch gaps included); the whole-model time is a CUDA graph replay")
        return measurement


def split_runs(kernels: list[tuple[float, float]], runs: int) -> list[float]:
    """Per-run sums (ms) of device events ``(start_us, duration_us)`` from ``runs`` identical runs.

    Each run launches the same kernels, so the events, in start order, fall into ``runs`` equal chunks;
    when they do not divide evenly (an extra memset, say), every run gets the mean instead.
    """
    if not kernels or runs < 1:
        return []
    ordered = sorted(kernels)
    if len(ordered) % runs:
        mean = sum(duration for _, duration in ordered) / runs / 1e3
        return [mean] * runs
    size = len(ordered) // runs
    return [sum(duration for _, duration in ordered[i * size:(i + 1) * size]) / 1e3 for i in range(runs)]


def kernel_times(launch: Any, stream: Any, runs: int, warmup: int) -> list[float]:
    """The kernel time of each of ``runs`` launches (ms), read from PyTorch's profiler (CUPTI)."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.cuda.stream(stream), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Profiler clears events at the end of each cycle": one cycle here
        for _ in range(max(1, warmup)):
            launch()
        stream.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                launch()
                stream.synchronize()
    device = torch.autograd.DeviceType.CUDA
    kernels = [(event.time_range.start, event.time_range.elapsed_us()) for event in prof.events()
               if event.device_type == device]
    return split_runs(kernels, runs)


def measure_unit_cuda(artifact: ModelArtifact, settings: ProfileSettings, options: GpuOptions) -> Measurement:
    """A LUT unit's in-network time: its kernels' durations per run (see the module docstring)."""
    from hwcompress.measure.contract import LatencyStats

    if artifact.module is None:
        raise UserError("the cuda profiler times the PyTorch module of a LUT unit; this unit is only an ONNX file")
    import torch

    check_device(options.device)
    dtype = torch.float16 if options.precision == "fp16" else torch.float32
    with torch.cuda.device(options.device), _cudnn_benchmark(options.cudnn_benchmark), torch.inference_mode():
        device = torch.device("cuda", options.device)
        model = copy.deepcopy(artifact.module).eval().to(device=device, dtype=dtype)
        example = torch.randn(tuple(artifact.input_shape), generator=torch.Generator().manual_seed(0)).to(dtype).to(device)
        stream = torch.cuda.Stream(device)
        runs = max(1, int(settings.runs))
        try:
            samples = kernel_times(lambda: model(example), stream, runs, int(settings.warmup))
            how, notes = "kernels", []
        except Exception as error:  # no CUPTI here: graph replays of the unit, launch included
            samples = []
            notes = [f"PyTorch's profiler could not read kernel times ({type(error).__name__}: {error}); "
                     "timed CUDA graph replays of the unit instead"]
            how = "graph replay"
        if not samples:
            from hwcompress_profiler_tensorrt.timing import time_launches

            timing = time_launches(lambda: model(example), stream, runs=runs, warmup=int(settings.warmup),
                                   warmup_ms=0.0, cuda_graph=True)
            samples, how = timing.samples_ms, "graph replay"
            notes += timing.notes
    return Measurement(latency=LatencyStats.from_samples(samples),
                       facts={"profiler": "cuda", "unit_timing": how, "precision": options.precision}, notes=notes)
