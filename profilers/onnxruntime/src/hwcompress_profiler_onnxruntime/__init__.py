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
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from hwcompress import hookimpl
from hwcompress.lut.recorder import cache_flusher
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings

INSTALL_HINT = "pip install onnxruntime (or pip install ./profilers/onnxruntime from the hwcompress repository)"
# Per-node times come from a separate profiled session: ORT's profiler adds overhead per node, so it
# must never share iterations with the whole-model timing.
PROFILED_RUNS = 20
# Nodes that only convert layouts at the edge of a tiny model; inside a network the whole chain of
# NCHWc convolutions runs without them (they appear once, at the network's edges).
BOUNDARY_OPS = frozenset({"ReorderInput", "ReorderOutput"})
KERNEL_SUFFIX = "_kernel_time"
PER_LAYER_NOTE = ("per-layer times come from a separate profiled run without ONNX Runtime's NCHWc layout pass and "
                  "include its fusions (BatchNorm folded into Conv); they need not add up to the whole-model median")  # ONNX Runtime's profile names a node's kernel event "<node>_kernel_time"


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it, else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


class OnnxRuntimeProfiler:
    """Latency on this machine's CPU with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"
    description = "CPU latency with ONNX Runtime (CPU execution provider)"

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
        }

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
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
        model's edges (:data:`BOUNDARY_OPS`), which a layer inside a network does not pay. The session
        is the one ``measure`` uses (same threads, spinning and optimisation level, NCHWc layout
        included) with the node profiler on; between runs the recorder's cache flush
        (:func:`hwcompress.lut.recorder.cache_flusher`) evicts the layer's weights, as the rest of a network would.
        """
        runs = max(1, int(settings.runs))
        warmup = max(1, int(settings.warmup))
        per_node = profiled_kernel_times(artifact.onnx_path, artifact.input_shape, settings, warmup + runs,
                                         before_each=cache_flusher(settings), skip_ops=BOUNDARY_OPS)
        if not per_node:
            raise RuntimeError(f"ONNX Runtime reported no kernel times for {artifact.onnx_path}")
        count = min(runs, min(len(times) for times in per_node.values()))
        samples = [sum(times[len(times) - count + i] for times in per_node.values()) for i in range(count)]
        return Measurement(latency=LatencyStats.from_samples(samples), facts=self.facts(settings))

    def _node_times(self, artifact: ModelArtifact, settings: ProfileSettings) -> dict[str, float]:
        # Without the NCHWc layout pass, fused nodes keep the exporter's names (/layer1/layer1.0/conv1/Conv),
        # which is what maps them back to PyTorch layers; the whole-model timing keeps every pass.
        warmup = max(1, min(int(settings.warmup), 5))
        runs = max(1, min(int(settings.runs), PROFILED_RUNS))
        per_node = profiled_kernel_times(artifact.onnx_path, artifact.input_shape, settings, warmup + runs,
                                         layout_optimizations=False)
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
    with tempfile.TemporaryDirectory(prefix="hwcompress-ort-") as folder:
        session = make_session(onnx_path, settings, profile_prefix=os.path.join(folder, "ort"),
                               layout_optimizations=layout_optimizations)
        feed = random_feed(session, input_shape)
        for _ in range(iterations):
            if before_each is not None:
                before_each()
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX):
            continue
        if event.get("args", {}).get("op_name") in skip_ops:
            continue
        per_node.setdefault(name[: -len(KERNEL_SUFFIX)], []).append(event["dur"] / 1000.0)
    return per_node


@hookimpl
def register_profilers(register):
    register(OnnxRuntimeProfiler())
