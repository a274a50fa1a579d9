"""TensorRT engines from ONNX files: build (or load from the cache), bind buffers, enqueue, profile layers.

The TensorRT API used here is the tensor-name API of TensorRT 8.6 and later (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); 10.x is the tested target. Differences handled:

* TensorRT 8.x needs the ``EXPLICIT_BATCH`` network flag; 10.x makes explicit batch the only mode
  and 11.x removed the flag, so ``create_network(0)`` there.
* TensorRT 11.x removed weak typing (``BuilderFlag.FP16``/``INT8``, calibrators): fp16 then needs an
  fp16 ONNX graph, made with NVIDIA ModelOpt AutoCast when it is installed, and int8 needs Q/DQ nodes.

Device memory, streams and events come from ``torch.cuda`` (torch is a dependency of hwcompress), not
pycuda: one CUDA runtime in the process, and tensors that own their memory.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress_profiler_tensorrt.engine_cache import EngineCache, engine_cache_dir, engine_cache_key
from hwcompress_profiler_tensorrt.layer_times import LayerTimeRecorder, aggregate_layer_times
from hwcompress_profiler_tensorrt.options import GpuOptions

INSTALL_HINT = "pip install 'hwcompress-profiler-tensorrt[tensorrt]'"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# TensorRT data type names -> torch dtype attribute names.
TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
}
# Layer timings through IProfiler: enough runs for a stable median, few enough to stay cheap.
PROFILED_RUNS = 20
PROFILED_WARMUP = 2


def import_tensorrt() -> Any:
    """``import tensorrt``, or a one-line :class:`UserError` with the install hint."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as error:  # OSError: the wheel is there but libnvinfer is not
        raise UserError(f"tensorrt cannot be imported ({error}); {INSTALL_HINT}") from None
    return trt


def version_major(version: str) -> int:
    """``"10.13.3.9"`` -> 10 (0 when unparsable)."""
    head = str(version).split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def has_explicit_quantization(onnx_path: str | Path) -> bool:
    """Whether the ONNX graph carries Q/DQ nodes (its INT8 scales are then in the model itself). Asked of
    every measurement, so a file is read once while it stays the same (path, size, modification time)."""
    stat = Path(onnx_path).stat()
    return _has_qdq(str(onnx_path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _has_qdq(path: str, _size: int, _mtime_ns: int) -> bool:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def torch_dtype_name(trt_dtype: Any) -> str:
    """The torch dtype name for a TensorRT ``DataType`` (or its name)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise UserError(f"TensorRT tensor type {name} has no PyTorch equivalent; this model cannot be timed here") from None


def resolve_input_shapes(
    network_inputs: Sequence[tuple[str, Sequence[int]]], requested: Sequence[int] | None
) -> tuple[dict[str, tuple[int, ...]], bool]:
    """The shape each network input is built and run at.

    The first input takes the requested shape (the model's ``--input-shape``); other inputs must be
    fully static, since only one shape is known.

    Args:
        network_inputs: ``(name, dims)`` per network input, ``-1`` for a dynamic dimension.
        requested: the shape asked for, or None to use the static shape.

    Returns:
        ``({name: shape}, dynamic)``, where ``dynamic`` says an optimisation profile is needed.

    Raises:
        UserError: the request contradicts a static dimension, or a shape stays unknown.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    dynamic = False
    for index, (name, dims) in enumerate(network_inputs):
        dims = tuple(int(d) for d in dims)
        is_dynamic = any(d < 0 for d in dims)
        dynamic = dynamic or is_dynamic
        want = tuple(int(d) for d in requested) if (index == 0 and requested is not None) else None
        if want is None:
            if is_dynamic:
                raise UserError(
                    f"ONNX input {name!r} has dynamic dimensions {list(dims)} and no shape was given for it "
                    "(only the first input takes --input-shape)"
                )
            shapes[name] = dims
            continue
        if len(want) != len(dims):
            raise UserError(f"ONNX input {name!r} has {len(dims)} dimensions {list(dims)}; the input shape {list(want)} has {len(want)}")
        clash = [i for i, (d, w) in enumerate(zip(dims, want)) if d >= 0 and d != w]
        if clash:
            fixed = "x".join(str(d) for d in dims)
            asked = "x".join(str(w) for w in want)
            raise UserError(f"ONNX input {name!r} is fixed at {fixed} but the input shape is {asked}; re-export the model at that shape")
        shapes[name] = want
    return shapes, dynamic


def precision_route(precision: str, tensorrt_major: int, explicit_quantization: bool) -> str:
    """How the requested precision is obtained with this TensorRT (recorded in the facts and the key)."""
    # A float precision with Q/DQ nodes: the quantized layers run in int8, the rest in that precision
    # (an int8 student with float layers, --quantize mixed).
    qdq = ", int8 from Q/DQ nodes" if explicit_quantization else ""
    if precision == "fp32":
        return "fp32 (TF32 allowed on Ampere and later)" + qdq
    if precision == "fp16":
        return ("fp16 builder flag" if tensorrt_major < 11 else "fp16 ONNX by ModelOpt AutoCast (strong typing)") + qdq
    return "int8 from Q/DQ nodes" if explicit_quantization else "int8 with calibration cache"


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps warnings and errors for error messages instead of printing them."""

    class _CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(str(msg))

    try:
        return _CollectingLogger()
    except Exception:
        # Builds without Python logger support: fall back to TensorRT's printing logger.
        return trt.Logger(trt.Logger.WARNING)


def _log_tail(logger: Any, count: int = 3) -> str:
    messages = getattr(logger, "messages", [])
    return ("; TensorRT said: " + " | ".join(m.strip() for m in messages[-count:])) if messages else ""


def _make_profiler(trt: Any, recorder: LayerTimeRecorder) -> Any:
    class _LayerProfiler(trt.IProfiler):
        """Forwards TensorRT's per-layer reports to the recorder (pure Python, tested without a GPU)."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            recorder.add(layer_name, ms)

    return _LayerProfiler()


def _calibrator_from_cache(trt: Any, cache: bytes) -> Any:
    """A calibrator that only replays a calibration cache (trtexec ``--calib`` semantics)."""

    class _CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, _names: Any) -> None:
            return None  # no data: every scale must come from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, _data: Any) -> None:
            return None

    return _CacheCalibrator()


def _autocast_fp16(onnx_path: Path, folder: Path) -> Path:
    """An fp16 copy of the ONNX model for TensorRT 11's strongly typed networks (ModelOpt AutoCast)."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise UserError(
            "fp16 with TensorRT 11 needs an fp16 ONNX graph (TensorRT 11 removed BuilderFlag.FP16); "
            "pip install 'nvidia-modelopt[onnx]' for automatic conversion, or install TensorRT 10 "
            f"({INSTALL_HINT}), or use --precision fp32"
        ) from None
    import onnx

    converted = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    out = folder / f"{onnx_path.stem}.fp16.onnx"
    onnx.save(converted, str(out))
    return out


def build_engine(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    input_shape: Sequence[int],
    options: GpuOptions,
    *,
    explicit_quantization: bool,
    timing_cache: bytes = b"",
) -> tuple[bytes, bytes]:
    """Parse the ONNX file and build a serialized engine.

    Args:
        trt: the ``tensorrt`` module.
        logger: the TensorRT logger (kept alive by the caller).
        onnx_path: the model.
        input_shape: the first input's shape (the optimisation profile's min = opt = max).
        options: precision, workspace, optimisation level, calibration.
        explicit_quantization: the model has Q/DQ nodes.
        timing_cache: a serialized TensorRT timing cache to start from (``b""`` for none).

    Returns:
        ``(engine bytes, updated timing cache bytes)``.

    Raises:
        UserError: the ONNX cannot be parsed or no engine can be built (with TensorRT's last words).
    """
    major = version_major(trt.__version__)
    with tempfile.TemporaryDirectory(prefix="hwcompress-trt-") as scratch:
        source = onnx_path
        if options.precision == "fp16" and major >= 11:
            source = _autocast_fp16(onnx_path, Path(scratch))
        builder = trt.Builder(logger)
        flags = 0
        if major < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
            raise UserError(f"TensorRT cannot parse {onnx_path.name}: {' | '.join(errors[:3]) or 'unknown error'}{_log_tail(logger)}")
        inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
        shapes, dynamic = resolve_input_shapes(inputs, input_shape)

        config = builder.create_builder_config()
        if options.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        if options.builder_optimization_level is not None:
            config.builder_optimization_level = options.builder_optimization_level
        # Detailed verbosity keeps the ONNX node names in the engine's layer names, which is what maps
        # IProfiler times back to PyTorch modules; it costs nothing at run time.
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profile = None
        if dynamic:
            profile = builder.create_optimization_profile()
            for name, shape in shapes.items():
                profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
        if major < 11:
            if explicit_quantization and options.precision != "int8":
                # TensorRT before 11 quantizes nothing, Q/DQ nodes included, without the INT8 flag.
                config.set_flag(trt.BuilderFlag.INT8)
            if options.precision == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            elif options.precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                if not explicit_quantization:
                    calibrator = options.int8_calibrator
                    if calibrator is None and options.int8_calibration_cache:
                        calibrator = _calibrator_from_cache(trt, Path(options.int8_calibration_cache).read_bytes())
                    config.int8_calibrator = calibrator
                    if profile is not None:
                        config.set_calibration_profile(profile)
        cache = None
        try:
            cache = config.create_timing_cache(timing_cache)
            config.set_timing_cache(cache, False)
        except Exception:
            cache = None  # a stale or foreign timing cache only costs build time
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"TensorRT could not build an engine for {onnx_path.name} at {options.precision}{_log_tail(logger)}")
        engine = bytes(serialized)
        new_cache = b""
        if cache is not None:
            try:
                new_cache = bytes(config.get_timing_cache().serialize())
            except Exception:
                new_cache = b""
    return engine, new_cache


def engine_for(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    input_shape: Sequence[int],
    options: GpuOptions,
    *,
    explicit_quantization: bool,
    gpu_name: str,
    compute_capability: str,
) -> tuple[bytes, dict[str, Any], EngineCache, str]:
    """The serialized engine for these settings: from the cache, or built and stored.

    Returns:
        ``(engine bytes, facts, cache, key)``; facts say ``engine_cache`` hit/built/disabled, build
        seconds and the precision route.
    """
    from hwcompress.model.export import file_hash

    major = version_major(trt.__version__)
    route = precision_route(options.precision, major, explicit_quantization)
    calibration = None
    if options.precision == "int8" and not explicit_quantization:
        if options.int8_calibration_cache:
            calibration = "cache:" + file_hash(options.int8_calibration_cache)
        elif options.int8_calibrator is not None:
            calibrator = options.int8_calibrator
            calibration = "object:" + str(getattr(calibrator, "cache_key", type(calibrator).__qualname__))
    key = engine_cache_key(
        onnx_sha256=file_hash(onnx_path),
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=options.precision,
        workspace_bytes=options.workspace_bytes,
        input_shape=input_shape,
        extra={"route": route, "optimization_level": options.builder_optimization_level, "calibration": calibration},
    )
    cache = EngineCache(engine_cache_dir(options.engine_cache_dir), enabled=options.engine_cache)
    facts: dict[str, Any] = {"precision_route": route, "engine_key": key[:16]}
    cached = cache.load(key)
    if cached is not None:
        facts.update(engine_cache="hit", engine_build_s=0.0, engine_path=str(cache.engine_path(key)))
        return cached, facts, cache, key
    timing_path = cache.timing_cache_path(trt.__version__, gpu_name, compute_capability)
    started = time.perf_counter()
    engine, timing = build_engine(
        trt, logger, Path(onnx_path), input_shape, options,
        explicit_quantization=explicit_quantization, timing_cache=cache.load_timing_cache(timing_path),
    )
    build_s = time.perf_counter() - started
    cache.store_timing_cache(timing_path, timing)
    stored = cache.store(key, engine, {
        "onnx": str(onnx_path), "tensorrt": trt.__version__, "gpu": gpu_name, "compute_capability": compute_capability,
        "precision": options.precision, "route": route, "workspace_bytes": options.workspace_bytes,
        "input_shape": list(input_shape), "build_seconds": round(build_s, 3),
    })
    facts.update(
        engine_cache="built" if options.engine_cache else "disabled",
        engine_build_s=round(build_s, 3),
        engine_path=str(stored) if stored else None,
    )
    return engine, facts, cache, key


class EngineRunner:
    """A deserialized engine with its buffers bound, ready to enqueue on one stream.

    Args:
        trt: the ``tensorrt`` module.
        logger: the logger the runtime reports to (kept alive here: TensorRT holds a pointer).
        engine_bytes: a serialized engine.
        input_shape: the first input's shape.
        stream: the ``torch.cuda.Stream`` every launch is enqueued on.
        transfers: copy inputs from and outputs to pinned host memory inside each launch.

    Raises:
        RuntimeError: the bytes do not deserialize (corrupt cache entry, other TensorRT build).
    """

    def __init__(self, trt: Any, logger: Any, engine_bytes: bytes, input_shape: Sequence[int], stream: Any, *, transfers: bool = False) -> None:
        import torch

        self.trt = trt
        self.logger = logger
        self.stream = stream
        self.transfers = transfers
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine{_log_tail(logger)}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context (out of GPU memory?){_log_tail(logger)}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        engine_inputs = [(n, tuple(self.engine.get_tensor_shape(n))) for n in self.input_names]
        self.input_shapes, _ = resolve_input_shapes(engine_inputs, input_shape)
        for name, shape in self.input_shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise UserError(f"TensorRT refused shape {list(shape)} for input {name!r}{_log_tail(logger)}")
        device = torch.device("cuda", torch.cuda.current_device())
        generator = torch.Generator().manual_seed(0)
        self.tensors: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        for name in names:
            dtype = getattr(torch, torch_dtype_name(self.engine.get_tensor_dtype(name)))
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UserError(f"output {name!r} has a data-dependent shape {list(shape)}; such models cannot be timed here")
            if name in self.input_names and dtype.is_floating_point:
                host = torch.randn(shape, generator=generator).to(dtype)
            else:
                host = torch.zeros(shape, dtype=dtype)
            self.tensors[name] = host.to(device)
            if transfers:
                self.host[name] = host.pin_memory()
        self.bind(self.context)

    def bind(self, context: Any) -> None:
        """Set input shapes and every tensor address on ``context``."""
        for name, shape in self.input_shapes.items():
            context.set_input_shape(name, shape)
        for name, tensor in self.tensors.items():
            context.set_tensor_address(name, tensor.data_ptr())

    def launch(self) -> None:
        """Enqueue one inference (and the copies, with ``transfers``) on the stream; no sync."""
        if self.transfers:
            for name in self.input_names:
                self.tensors[name].copy_(self.host[name], non_blocking=True)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed{_log_tail(self.logger)}")
        if self.transfers:
            for name in self.output_names:
                self.host[name].copy_(self.tensors[name], non_blocking=True)

    @property
    def num_layers(self) -> int:
        return int(getattr(self.engine, "num_layers", 0))

    def profile_records(self, runs: int = PROFILED_RUNS) -> list[tuple[int, str, float]]:
        """TensorRT's per-layer reports over ``runs`` separate inferences (after a short warm-up).

        A second execution context carries the ``IProfiler``, so the timed context stays untouched (a
        profiler makes every enqueue synchronous and adds per-layer events; it must never share
        iterations with the whole-model timing, and CUDA graphs cannot be used with it).

        Returns:
            ``(run_index, layer_name, ms)``, warm-up runs with negative indices.
        """
        import torch

        recorder = LayerTimeRecorder()
        profiler = _make_profiler(self.trt, recorder)
        context = self.engine.create_execution_context()
        try:
            self.bind(context)
            context.profiler = profiler
            with torch.cuda.stream(self.stream):
                for index in range(-PROFILED_WARMUP, max(1, runs)):
                    recorder.begin_run(index)
                    if not context.execute_async_v3(self.stream.cuda_stream):
                        raise RuntimeError(f"TensorRT execute_async_v3 failed while profiling layers{_log_tail(self.logger)}")
                    self.stream.synchronize()
        finally:
            del context
        return recorder.records

    def layer_times(self, runs: int = PROFILED_RUNS) -> dict[str, float]:
        """Median per-ONNX-node times from TensorRT's ``IProfiler`` (see :meth:`profile_records`)."""
        return aggregate_layer_times(self.profile_records(runs))

    def close(self) -> None:
        """Release in dependency order: contexts before the engine, the engine before the runtime."""
        self.context = None
        self.engine = None
        self.runtime = None
        self.tensors.clear()
        self.host.clear()
