"""NVIDIA GPU profilers for hwcompress: ``tensorrt`` (TensorRT engines) and ``cuda`` (PyTorch on the GPU).

A plugin distribution registered through the ``hwcompress`` entry-point group, like a third party's.
Importing this module loads neither torch, TensorRT nor NVML: ``hwcompress plugins`` and
``hwcompress devices`` stay fast on machines without a GPU. ``available()`` looks for the packages
without importing them and asks ``torch.cuda.is_available()``; measuring imports the rest.

The ``nvidia-gpu`` device names ``tensorrt``; when TensorRT is missing the ``cuda`` profiler can measure
the same GPU (see docs/gpu.md). Every measurement records ``facts["profiler"]``, so a report always
says which runtime produced its numbers.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Any

from hwcompress import hookimpl
from hwcompress.measure.contract import Measurement, ModelArtifact, ProfileSettings

__version__ = "0.2.0"

TENSORRT_HINT = "pip install 'hwcompress-profiler-tensorrt[tensorrt]'"
TENSORRT_MISSING = f"tensorrt is not installed; {TENSORRT_HINT}"
NO_GPU = "no NVIDIA GPU visible (torch.cuda.is_available() is False)"
# The tensor-name execution API (set_tensor_address / execute_async_v3) arrived in TensorRT 8.5;
# 8.6 is the oldest release tested by others with it (JetPack 5.1.2).
MIN_TENSORRT = (8, 6)
# Distributions that provide the `tensorrt` module (pip wheels; JetPack's apt package has none).
_TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tensorrt_distribution_version() -> str | None:
    """The installed TensorRT wheel's version from its metadata (no import), or None."""
    for name in _TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def gpu_problem() -> str | None:
    """Why no NVIDIA GPU can be used from PyTorch here, with the fix; None when one can."""
    if not _module_present("torch"):
        return "PyTorch is not installed; pip install torch (a CUDA build)"
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"{NO_GPU}: this PyTorch is a CPU-only build; install a CUDA build of PyTorch"
    from hwcompress_profiler_tensorrt import jetson

    if jetson.is_jetson():
        return f"{NO_GPU}: on a Jetson install NVIDIA's JetPack build of PyTorch"
    return NO_GPU


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot be used here (without importing it), with the fix; None when it can."""
    if not _module_present("tensorrt"):
        return TENSORRT_MISSING
    version = tensorrt_distribution_version()
    if version:
        parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if len(parts) == 2 and parts < MIN_TENSORRT:
            return f"tensorrt {version} is too old (needs 8.6 or later); {TENSORRT_HINT}"
    return None


class TensorRTProfiler:
    """Latency of the exported ONNX model as a TensorRT engine on this machine's NVIDIA GPU."""

    name = "tensorrt"
    description = "NVIDIA GPU latency with TensorRT (engine from the ONNX file, CUDA events)"
    #: int8 through explicit quantization: Q/DQ models (``--quantize``), symmetric only (zero point 0,
    #: the ``int8_symmetric`` fact).
    precisions = ("fp32", "fp16", "int8")

    def available(self) -> tuple[bool, str]:
        problems = [p for p in (tensorrt_problem(), gpu_problem()) if p]
        return (False, "; ".join(problems)) if problems else (True, "")

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        """GPU, driver and TensorRT facts now (no engine is built). Never raises."""
        facts = _current_gpu_facts(settings, profiler=self.name)
        facts["runtime"] = "tensorrt"
        facts["int8_symmetric"] = True  # its Q/DQ must be symmetric (hwcompress.slim.quantize.symmetric_int8)
        if _module_present("tensorrt"):
            try:
                import tensorrt as trt

                facts["runtime_version"] = str(trt.__version__)
            except Exception as error:
                facts["runtime_version"] = f"unknown (import failed: {type(error).__name__})"
        else:
            facts["runtime_version"] = "not installed"
        return facts

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """Build (or load from the cache) a TensorRT engine for ``artifact`` and time it.

        Raises:
            UserError: a precision that cannot be measured (int8 without calibration), TensorRT or a
                GPU missing, an ONNX file TensorRT cannot parse or build, a shape mismatch.
        """
        return self._measure(artifact, settings, unit=False)

    def measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """In-network time of a tiny model, for ``hwcompress lut record``.

        Per run, the sum of TensorRT's per-layer times (``IProfiler``) without the format conversions
        at the model's edges, which a layer inside a network does not pay: a one-convolution fp16
        engine converts its fp32 input and output, and those copies can cost more than the layer.
        """
        return self._measure(artifact, settings, unit=True)

    def _measure(self, artifact: ModelArtifact, settings: ProfileSettings, *, unit: bool) -> Measurement:
        from hwcompress.errors import UserError
        from hwcompress_profiler_tensorrt.engine import has_explicit_quantization
        from hwcompress_profiler_tensorrt.options import check_precision, parse_options

        # Settings are refused before anything touches the GPU, so mistakes surface in a second.
        options = parse_options(settings)
        # Q/DQ nodes in any precision: an int8 student is measured at the device's float precision, its
        # quantized layers in int8 (the engine then needs the INT8 flag too).
        explicit = has_explicit_quantization(artifact.onnx_path)
        check_precision(options, profiler=self.name, explicit_quantization=explicit)
        ok, reason = self.available()
        if not ok:
            raise UserError(f"profiler 'tensorrt' is unavailable: {reason}")
        from hwcompress_profiler_tensorrt.tensorrt_profiler import measure_tensorrt

        return measure_tensorrt(artifact, settings, options, explicit_quantization=explicit, unit=unit)


class CudaProfiler:
    """Latency of the PyTorch module on this machine's NVIDIA GPU (no TensorRT needed)."""

    name = "cuda"
    description = "NVIDIA GPU latency of the PyTorch model (CUDA graph replays timed with CUDA events)"
    #: What it times: PyTorch has no int8 path on the GPU, so ``--quantize`` is refused on this profiler.
    precisions = ("fp32", "fp16")

    def available(self) -> tuple[bool, str]:
        problem = gpu_problem()
        return (False, problem) if problem else (True, "")

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        """GPU, driver and PyTorch facts now. Never raises."""
        facts = _current_gpu_facts(settings, profiler=self.name)
        facts["runtime"] = "torch"
        try:
            import torch

            facts["runtime_version"] = str(torch.__version__)
        except Exception:
            facts["runtime_version"] = "unknown"
        return facts

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """Time the PyTorch module on the GPU.

        Raises:
            UserError: int8 (no PyTorch int8 GPU path), no module (ONNX-only model), no GPU.
        """
        from hwcompress.errors import UserError
        from hwcompress_profiler_tensorrt.options import check_precision, parse_options

        options = parse_options(settings)
        check_precision(options, profiler=self.name)
        ok, reason = self.available()
        if not ok:
            raise UserError(f"profiler 'cuda' is unavailable: {reason}")
        from hwcompress_profiler_tensorrt.cuda_profiler import measure_cuda

        return measure_cuda(artifact, settings, options)

    def measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """In-network time of a tiny model, for ``hwcompress lut record``: its kernels' durations per run
        (PyTorch's profiler), without the launch and synchronisation a single-layer loop pays."""
        from hwcompress.errors import UserError
        from hwcompress_profiler_tensorrt.options import check_precision, parse_options

        options = parse_options(settings)
        check_precision(options, profiler=self.name)
        ok, reason = self.available()
        if not ok:
            raise UserError(f"profiler 'cuda' is unavailable: {reason}")
        from hwcompress_profiler_tensorrt.cuda_profiler import measure_unit_cuda

        return measure_unit_cuda(artifact, settings, options)


def _current_gpu_facts(settings: ProfileSettings, *, profiler: str) -> dict[str, Any]:
    """Static and current GPU facts for ``facts()``; unknowns instead of errors when there is no GPU."""
    from hwcompress_profiler_tensorrt import gpu_facts, jetson
    from hwcompress_profiler_tensorrt.options import parse_options

    try:
        device = parse_options(settings).device
    except Exception:
        device = 0
    facts: dict[str, Any] = {"profiler": profiler, "precision": str(settings.precision)}
    problem = gpu_problem()
    if problem:
        facts["gpu"] = gpu_facts.UNKNOWN
        facts["gpu_problem"] = problem
        with gpu_facts.GpuMonitor(device) as monitor:
            facts.update(monitor.static_facts())
            facts.update(monitor.sample())
        if jetson.is_jetson():
            facts.update(jetson.jetson_facts())
        return facts
    try:
        bus_id = gpu_facts.pci_bus_id(device)
    except Exception:
        bus_id = None
    with gpu_facts.GpuMonitor(device, bus_id) as monitor:
        facts.update(gpu_facts.device_facts(device, monitor))
        facts.update(monitor.sample())
    return facts


@hookimpl
def register_profilers(register):
    register(TensorRTProfiler())
    register(CudaProfiler())
