"""GPU measurement options: what ``ProfileSettings`` may ask of the ``tensorrt`` and ``cuda`` profilers.

``ProfileSettings`` carries the generic settings (runs, warm-up, precision, per-layer); the GPU-specific
extras live in ``settings.options`` (from the device descriptor's ``[settings] options = {...}`` or from
Python callers). This module turns both into one validated :class:`GpuOptions`, without importing
torch or TensorRT, so every rule here is tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.measure.contract import ProfileSettings

PRECISIONS = ("fp32", "fp16", "int8")

# trtexec warms up for 200 ms by default: long enough for a GPU to leave its idle clocks. Iteration
# counts alone are not enough on a GPU, where a tiny model's 50 iterations last a millisecond.
DEFAULT_WARMUP_MS = 200.0
# The stability check: time rounds of `runs` iterations until two consecutive round medians agree within
# the tolerance (trtexec's de facto stability bar is a 1% coefficient of variation), or say it did not.
DEFAULT_MAX_ROUNDS = 5
DEFAULT_SETTLE_TOLERANCE = 0.02

#: Every option either profiler reads, with its meaning (also rendered in docs/gpu.md).
KNOWN_OPTIONS: dict[str, str] = {
    "cuda_graph": "capture one inference in a CUDA graph and time graph replays (default: true for cuda, false for tensorrt)",
    "max_rounds": f"rounds of `runs` timed iterations until two round medians agree (default {DEFAULT_MAX_ROUNDS})",
    "settle_tolerance": f"how close two consecutive round medians must be to count as settled (default {DEFAULT_SETTLE_TOLERANCE:g})",
    "spin_wait": "busy-poll the end event instead of a blocking synchronize (default false)",
    "transfers": "include host-to-device and device-to-host copies in the timed region (default false)",
    "warmup_ms": f"minimum warm-up duration in ms on top of the warm-up iterations (default {DEFAULT_WARMUP_MS:g})",
    "device": "CUDA device index (default 0)",
    "workspace_mb": "TensorRT builder workspace limit in MiB (default: TensorRT's own, the device memory)",
    "builder_optimization_level": "TensorRT builder optimisation level 0-5 (default: TensorRT's, 3)",
    "engine_cache": "reuse and store built TensorRT engines (default true)",
    "engine_cache_dir": "folder for cached engines (default: user cache folder / trt-engines)",
    "int8_calibration_cache": "TensorRT INT8 calibration cache file (what trtexec --calib reads); TensorRT 10 only",
    "int8_calibrator": "a tensorrt.IInt8Calibrator object, for direct measure() calls only; TensorRT 10 only",
    "cudnn_benchmark": "cuda profiler: let cuDNN pick the fastest convolution algorithms (default true)",
}

# Options that belong to other profilers (a device file may be shared); accepted silently.
_FOREIGN_OPTIONS = {"spin"}


@dataclass(frozen=True)
class GpuOptions:
    """Validated GPU measurement options.

    Attributes:
        precision: ``fp32`` | ``fp16`` | ``int8``.
        cuda_graph: time CUDA graph replays instead of eager launches (None: the profiler's default:
            replays for ``cuda``, where eager batch-1 timing measures Python's launch overhead; eager
            enqueues for ``tensorrt``, as trtexec).
        max_rounds: at most this many timed rounds (the stability check).
        settle_tolerance: relative difference of two consecutive round medians that counts as settled.
        spin_wait: poll the end event (lower wake-up latency) rather than block on it.
        transfers: time H2D input and D2H output copies with the inference (trtexec's "Latency"
            rather than its "GPU Compute Time").
        warmup_ms: minimum warm-up duration, on top of ``settings.warmup`` iterations.
        device: CUDA device index.
        workspace_mb: TensorRT workspace limit, None for TensorRT's default.
        builder_optimization_level: TensorRT builder optimisation level, None for the default.
        engine_cache: read and write the engine cache.
        engine_cache_dir: engine cache folder override.
        int8_calibration_cache: path of a TensorRT calibration cache.
        int8_calibrator: a TensorRT calibrator object.
        cudnn_benchmark: cuDNN autotuning for the ``cuda`` profiler.
        ignored: unknown option names (reported in the measurement notes, not fatal).
    """

    precision: str = "fp32"
    cuda_graph: bool | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    settle_tolerance: float = DEFAULT_SETTLE_TOLERANCE
    spin_wait: bool = False
    transfers: bool = False
    warmup_ms: float = DEFAULT_WARMUP_MS
    device: int = 0
    workspace_mb: int | None = None
    builder_optimization_level: int | None = None
    engine_cache: bool = True
    engine_cache_dir: str | None = None
    int8_calibration_cache: str | None = None
    int8_calibrator: Any = field(default=None, compare=False, repr=False)
    cudnn_benchmark: bool = True
    ignored: tuple[str, ...] = ()

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_mb is None else int(self.workspace_mb) * (1 << 20)

    @property
    def has_calibrator(self) -> bool:
        return self.int8_calibrator is not None or self.int8_calibration_cache is not None

    def to_facts(self) -> dict[str, Any]:
        """The options that shape the number, as JSON-safe report facts."""
        facts: dict[str, Any] = {
            "precision": self.precision,
            "cuda_graph_requested": self.cuda_graph,
            "spin_wait": self.spin_wait,
            "transfers_timed": self.transfers,
            "warmup_ms_min": self.warmup_ms,
            "cuda_device": self.device,
        }
        return facts


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise UserError(f"option {key!r} must be true or false (got {value!r})")
    return value


def _int(options: dict[str, Any], key: str, default: int | None, *, low: int, high: int | None = None) -> int | None:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise UserError(f"option {key!r} must be {bound} (got {value!r})")
    return value


def _tolerance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"option 'settle_tolerance' must be a number between 0 and 1 (got {value!r})")
    return float(value)


def parse_options(settings: ProfileSettings) -> GpuOptions:
    """Validate ``settings`` for a GPU profiler.

    Args:
        settings: the measurement settings; ``settings.options`` holds the GPU extras listed in
            :data:`KNOWN_OPTIONS`.

    Returns:
        The validated options.

    Raises:
        UserError: an unsupported precision, or an option of the wrong type or range (one line each).
    """
    precision = str(settings.precision).lower()
    if precision not in PRECISIONS:
        raise UserError(f"precision {settings.precision!r} is not supported on NVIDIA GPUs here; choose one of {', '.join(PRECISIONS)}")
    options = dict(settings.options or {})
    warmup_ms = options.get("warmup_ms", DEFAULT_WARMUP_MS)
    if isinstance(warmup_ms, bool) or not isinstance(warmup_ms, (int, float)) or warmup_ms < 0:
        raise UserError(f"option 'warmup_ms' must be a number >= 0 (got {warmup_ms!r})")
    cache_dir = options.get("engine_cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
        raise UserError(f"option 'engine_cache_dir' must be a folder path (got {cache_dir!r})")
    calibration_cache = options.get("int8_calibration_cache")
    if calibration_cache is not None:
        if not isinstance(calibration_cache, (str, Path)) or not Path(calibration_cache).is_file():
            raise UserError(f"option 'int8_calibration_cache' must name an existing file (got {calibration_cache!r})")
        calibration_cache = str(calibration_cache)
    ignored = tuple(sorted(set(options) - set(KNOWN_OPTIONS) - _FOREIGN_OPTIONS))
    return GpuOptions(
        precision=precision,
        cuda_graph=None if options.get("cuda_graph") is None else _bool(options, "cuda_graph", False),
        max_rounds=_int(options, "max_rounds", DEFAULT_MAX_ROUNDS, low=1, high=50),
        settle_tolerance=_tolerance(options.get("settle_tolerance", DEFAULT_SETTLE_TOLERANCE)),
        spin_wait=_bool(options, "spin_wait", False),
        transfers=_bool(options, "transfers", False),
        warmup_ms=float(warmup_ms),
        device=_int(options, "device", 0, low=0) or 0,
        workspace_mb=_int(options, "workspace_mb", None, low=1),
        builder_optimization_level=_int(options, "builder_optimization_level", None, low=0, high=5),
        engine_cache=_bool(options, "engine_cache", True),
        engine_cache_dir=None if cache_dir is None else str(cache_dir),
        int8_calibration_cache=calibration_cache,
        int8_calibrator=options.get("int8_calibrator"),
        cudnn_benchmark=_bool(options, "cudnn_benchmark", True),
        ignored=ignored,
    )


def check_precision(
    options: GpuOptions,
    *,
    profiler: str,
    explicit_quantization: bool = False,
    tensorrt_major: int | None = None,
) -> None:
    """Refuse precisions the chosen runtime cannot measure honestly.

    INT8 without calibration would make TensorRT time an engine built with placeholder scales: the
    latency of a model that computes garbage. That is refused rather than reported.

    Args:
        options: the validated options.
        profiler: ``"tensorrt"`` or ``"cuda"``.
        explicit_quantization: the ONNX model carries QuantizeLinear/DequantizeLinear nodes, so its
            INT8 scales are in the graph and no calibrator is needed.
        tensorrt_major: TensorRT's major version when known (11 removed implicit calibration).

    Raises:
        UserError: the precision cannot be measured; the message says what to do instead.
    """
    if options.precision != "int8":
        return
    if profiler == "cuda":
        raise UserError(
            "precision int8 is not available with the cuda (PyTorch) profiler; use --precision fp16 or fp32, "
            "or the tensorrt profiler with a calibrator or a Q/DQ-quantized ONNX model"
        )
    if explicit_quantization:
        return
    if not options.has_calibrator:
        raise UserError(
            "precision int8 needs calibration, otherwise TensorRT times an engine with placeholder scales; "
            "pass options int8_calibration_cache=FILE (or int8_calibrator=...), or profile a Q/DQ-quantized "
            "ONNX model, or use --precision fp16"
        )
    if tensorrt_major is not None and tensorrt_major >= 11:
        raise UserError(
            "TensorRT 11 removed implicit INT8 calibration; quantize the ONNX model with Q/DQ nodes "
            "(e.g. NVIDIA ModelOpt) or install TensorRT 10 (pip install 'hwcompress-profiler-tensorrt[tensorrt]')"
        )
