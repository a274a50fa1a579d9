"""ONNX Runtime CPU profiler for hwcompress (a plugin distribution registered through entry points).

ONNX Runtime is imported only inside the methods, so listing plugins never loads it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from hwcompress import hookimpl
from hwcompress.lut.nonlayer import non_layer_costs
from hwcompress.lut.recorder import cache_flusher
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.measure.runner import conversion_costs, cpu_model, int8_vnni

INSTALL_HINT = "pip install onnxruntime (or pip install ./profilers/onnxruntime from the hwcompress repository)"
# Per-node times come from a separate profiled session: ORT's profiler adds overhead per node, so it
# must never share iterations with the whole-model timing.
PROFILED_RUNS = 20
# Nodes that only convert layouts at the edge of a tiny model; inside a network the whole chain of
# NCHWc convolutions runs without them (they appear once, at the network's edges).
BOUNDARY_OPS = frozenset({"ReorderInput", "ReorderOutput"})
# An int8 unit's edges: the input's QuantizeLinear, the output's DequantizeLinear and the NHWC
# transposes around the QLinearConv; inside an int8 network activations stay uint8 and NHWC from one
# integer kernel to the next, so only the network's own edges pay them.
QUANTIZED_BOUNDARY_OPS = BOUNDARY_OPS | {"QuantizeLinear", "DequantizeLinear", "Transpose"}
KERNEL_SUFFIX = "_kernel_time"
PER_LAYER_NOTE = ("per-layer times are ONNX Runtime's kernel times in a separate profiled run of the same session "
                  "(BatchNorm folded into Conv; layout reorders in (other))")  # ONNX Runtime's profile names a node's kernel event "<node>_kernel_time"


def make_session(onnx_path: str | os.PathLike[str], settings: ProfileSettings, profile_prefix: str | None = None, layout_optimizations: bool = True) -> Any:
    """An ONNX Runtime CPU session with the measurement settings applied (threads fixed, spinning off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(settings.threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout_optimizations else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    # Spinning workers fight the timing thread on small machines (measured: 2 threads with spinning
    # ran 35% slower than without on a 2-vCPU host); keep it off unless asked for.
    spin = "1" if settings.options.get("spin", False) else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


#: Operators of a quantized ONNX model (ONNX Runtime's static quantizer writes QDQ or QOperator models).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                           "MatIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear"})


def holds_quantized_nodes(onnx_path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX file holds a quantized operator (its graph only: weights kept outside are not read)."""
    stat = os.stat(onnx_path)
    return _holds_quantized_nodes(os.path.abspath(onnx_path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _holds_quantized_nodes(path: str, mtime_ns: int, size: int) -> bool:  # noqa: ARG001 (the cache key: the file as it is)
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return any(node.op_type in QUANTIZED_OPS for node in graph.node)


def random_feed(session: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    import numpy as np

    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    return {inp.name: np.random.default_rng(0).standard_normal(input_shape).astype(dtype)}


def time_session(session: Any, feed: dict[str, Any], runs: int, warmup: int) -> list[float]:
    """Per-iteration wall times in ms after ``warmup`` untimed runs."""
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


#: ONNX Runtime's domain for its blocked-layout (NCHWc) kernels in an optimised graph.
NCHWC_DOMAIN = "com.microsoft.nchwc"


def _runs_blocked(cin: int, group: int = 1) -> tuple[bool, bool]:
    """(whether ONNX Runtime runs a 3x3 convolution fed ``cin`` channels in its NCHWc layout, whether it
    reorders the input into that layout first), read off the optimised graph of a one-layer model."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    cout = cin if group > 1 else 16
    weight = numpy_helper.from_array(np.ones((cout, cin // group, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, pads=[1, 1, 1, 1])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    with tempfile.TemporaryDirectory(prefix="hwcompress-nchwc-") as folder:
        source, optimised = os.path.join(folder, "probe.onnx"), os.path.join(folder, "probe.opt.onnx")
        onnx.save(model, source)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = optimised
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(optimised).graph.node
    blocked = any(n.op_type == "Conv" and n.domain == NCHWC_DOMAIN for n in nodes)
    return blocked, any(n.op_type == "ReorderInput" for n in nodes)


@lru_cache(maxsize=1)
def nchwc_layout() -> tuple[int, int]:
    """``(block, alignment)`` of ONNX Runtime's NCHWc convolutions on this CPU, asked of the runtime
    itself (milliseconds; nothing timed); ``(1, 1)`` where it has no NCHWc path.

    * ``block``: the channel block its blocked kernels work in (16 with AVX-512, 8 with AVX2): the
      smallest input channel count that ONNX Runtime reorders into blocks rather than reading directly.
      Counts between blocks are padded to the next block, so they cost what it costs.
    * ``alignment``: from one block up, a convolution's input channels (a depthwise one's channels) must
      be a multiple of this for the blocked path; others run in plain NCHW with layout conversions
      around them (ONNX Runtime 1.32: 4, so 60 channels run blocked and 58 do not). A grouped (not
      depthwise) convolution needs whole blocks in every group instead (32 channels in 2 groups run
      blocked on 16-channel blocks, 16 in 2 groups do not): :func:`hwcompress.lut.predict.between_blocks`.
    """
    block = next((c for c in (2, 4, 8, 16, 32, 64, 128) if _runs_blocked(c)[1]), 1)
    if block == 1:
        return 1, 1
    alignment = next((a for a in (1, 2, 4, 8, 16, 32, 64, 128) if a >= block or
                      (_runs_blocked(block + a)[0] and _runs_blocked(block + a, group=block + a)[0])), block)
    return block, alignment


def layout_conversion_costs(settings: ProfileSettings, sizes: tuple[int, ...] = (14, 28, 56), runs: int = 30) -> dict[str, Any] | None:
    """What a layer off ONNX Runtime's blocked path costs its network in layout conversions: per direction
    (``to_plain``, NCHWc to NCHW before such a layer; ``to_blocked``, back after it), the points timed
    (elements, ms) at ``sizes`` and a least-squares line ``ms = intercept + slope * elements``. None where
    the runtime has no blocked layout. Timed warm, without a cache flush: the tensor converted is the one
    the layer before just wrote. The probe is :func:`hwcompress.measure.runner.conversion_costs`, which
    the remote runner times on a device the same way."""
    return conversion_costs(nchwc_layout(), lambda path, shape, iterations: _kernel_events(path, shape, settings, iterations),
                            sizes, runs)


class OnnxRuntimeProfiler:
    """Latency on this machine's CPU with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"
    description = "CPU latency with ONNX Runtime (CPU execution provider)"
    #: Precisions it runs: int8 as Q/DQ models (static quantization, hwcompress.slim.quantize).
    precisions = ("fp32", "int8")

    def available(self) -> tuple[bool, str]:
        try:
            metadata.version("onnxruntime")
        except metadata.PackageNotFoundError:
            try:
                metadata.version("onnxruntime-gpu")
            except metadata.PackageNotFoundError:
                return False, f"onnxruntime is not installed; {INSTALL_HINT}"
        return True, ""

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "cpu": cpu_model(),
            "logical_cores": os.cpu_count(),
            "machine": platform.machine(),
            "os": platform.platform(),
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "execution_provider": "CPUExecutionProvider",
            "intra_op_threads": int(settings.threads),
            "spinning": bool(settings.options.get("spin", False)),
            # What the LUT rounds channel counts to, the search prunes in (hwcompress.lut.recorder) and
            # the predictor checks alignment against (hwcompress.lut.predict.between_blocks).
            "channel_block": nchwc_layout()[0],
            "channel_alignment": nchwc_layout()[1],
            # Whether int8 convolutions sum in 32 bits (VNNI): without, the quantizer keeps weights to 7 bits.
            "int8_vnni": int8_vnni(),
        }

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        if settings.precision == "int8" and not holds_quantized_nodes(artifact.onnx_path):
            # ONNX Runtime runs what the file holds: a float model timed "at int8" would be a float
            # timing under an int8 label.
            from hwcompress.errors import UserError

            raise UserError(f"--precision int8: ONNX Runtime runs a model in int8 only as a quantized (Q/DQ) ONNX file, and "
                            f"{artifact.name or Path(artifact.onnx_path).name} holds no quantized layer; profile it at "
                            f"--precision fp32, or profile a quantized model (search --quantize int8 writes one as student.onnx)")
        session = make_session(artifact.onnx_path, settings)
        feed = random_feed(session, artifact.input_shape)
        samples = time_session(session, feed, int(settings.runs), int(settings.warmup))
        node_ms = self._node_times(artifact, settings) if settings.per_layer else None
        notes = [PER_LAYER_NOTE] if node_ms else []
        return Measurement(latency=LatencyStats.from_samples(samples), node_ms=node_ms, facts=self.facts(settings),
                           notes=notes)

    def measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """The in-network time of a tiny model (one layer and what fuses into it), for LUT recording.

        Per run, the sum of ONNX Runtime's kernel times, leaving out the layout conversions at the
        model's edges (:data:`BOUNDARY_OPS`; for an int8 unit, ``settings.precision == "int8"``, also its
        Q/DQ and NHWC transposes, :data:`QUANTIZED_BOUNDARY_OPS`), which a layer inside a network does not pay. The session
        is the one ``measure`` uses (same threads, spinning and optimisation level, NCHWc layout
        included) with the node profiler on; between runs the recorder's cache flush
        (:func:`hwcompress.lut.recorder.cache_flusher`) evicts the layer's weights, as the rest of a network would.
        """
        runs = max(1, int(settings.runs))
        warmup = max(1, int(settings.warmup))
        edges = QUANTIZED_BOUNDARY_OPS if settings.precision == "int8" else BOUNDARY_OPS
        per_node = profiled_kernel_times(artifact.onnx_path, artifact.input_shape, settings, warmup + runs,
                                         before_each=cache_flusher(settings), skip_ops=edges)
        if not per_node:
            raise RuntimeError(f"ONNX Runtime reported no kernel times for {artifact.onnx_path}")
        count = min(runs, min(len(times) for times in per_node.values()))
        samples = [sum(times[len(times) - count + i] for times in per_node.values()) for i in range(count)]
        # The unit's nodes too: the recorder counts its kernels, each of which carries the node profiler's
        # own cost (a hardswish unit runs three: conv, HardSigmoid, Mul).
        node_ms = {name: statistics.median(times[-count:]) for name, times in per_node.items()}
        return Measurement(latency=LatencyStats.from_samples(samples), node_ms=node_ms, facts=self.facts(settings))

    def layout_conversions(self, settings: ProfileSettings) -> dict[str, Any] | None:
        """The cost of leaving and re-entering the blocked layout around a layer off its path
        (:func:`layout_conversion_costs`), for ``lut record --off-path``."""
        return layout_conversion_costs(settings)

    def non_layer_costs(self, settings: ProfileSettings) -> dict[str, Any] | None:
        """What the work between layers (squeeze-excitation multiplies, adds, pooling) costs per node,
        channel and element, timed warm from kernel events (:func:`hwcompress.lut.nonlayer.non_layer_costs`),
        for ``lut record --off-path``."""
        return non_layer_costs(lambda path, shape, iterations: _kernel_events(path, shape, settings, iterations))

    def _node_times(self, artifact: ModelArtifact, settings: ProfileSettings) -> dict[str, float]:
        # The session the whole model runs in (every graph pass, NCHWc included): per-layer times of a
        # session without the layout pass added up to 4.05x the whole model on mobilenet_v3_large. Fused
        # and re-laid nodes keep the exporter's name as a prefix (/conv/Conv_output_0_nchwc,
        # /fc/MatMul/MatMulAddFusion), which the core maps back to layers; the reorders go to (other).
        warmup = max(1, min(int(settings.warmup), 5))
        runs = max(1, min(int(settings.runs), PROFILED_RUNS))
        per_node = profiled_kernel_times(artifact.onnx_path, artifact.input_shape, settings, warmup + runs)
        # The warm-up runs are in the profile too; keep the last `runs` samples of each node.
        return {name: statistics.median(times[-runs:]) for name, times in per_node.items()}


def profiled_kernel_times(onnx_path: str | os.PathLike[str], input_shape: tuple[int, ...], settings: ProfileSettings,
                          iterations: int, *, layout_optimizations: bool = True,
                          before_each: Callable[[], None] | None = None,
                          skip_ops: frozenset[str] = frozenset()) -> dict[str, list[float]]:
    """Run ``iterations`` inferences with ONNX Runtime's node profiler on.

    Returns:
        Per node (its name without the ``_kernel_time`` suffix), the kernel time of each run in ms, in
        run order; nodes whose op is in ``skip_ops`` are left out.
    """
    per_node: dict[str, list[float]] = {}
    for name, args, ms in _kernel_events(onnx_path, input_shape, settings, iterations,
                                         layout_optimizations=layout_optimizations, before_each=before_each):
        if args.get("op_name") not in skip_ops:
            per_node.setdefault(name, []).append(ms)
    return per_node


def _kernel_events(onnx_path: str | os.PathLike[str], input_shape: tuple[int, ...], settings: ProfileSettings,
                   iterations: int, *, layout_optimizations: bool = True,
                   before_each: Callable[[], None] | None = None) -> list[tuple[str, dict[str, Any], float]]:
    """Run ``iterations`` inferences with ONNX Runtime's node profiler on: every kernel event, in run
    order, as ``(node name without the _kernel_time suffix, the event's args, ms)``."""
    with tempfile.TemporaryDirectory(prefix="hwcompress-ort-") as folder:
        session = make_session(onnx_path, settings, profile_prefix=os.path.join(folder, "ort"),
                               layout_optimizations=layout_optimizations)
        feed = random_feed(session, input_shape)
        for _ in range(iterations):
            if before_each is not None:
                before_each()
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return [(event["name"][: -len(KERNEL_SUFFIX)], event.get("args", {}), event["dur"] / 1000.0) for event in events
            if event.get("cat") == "Node" and event.get("name", "").endswith(KERNEL_SUFFIX)]


@hookimpl
def register_profilers(register):
    register(OnnxRuntimeProfiler())
