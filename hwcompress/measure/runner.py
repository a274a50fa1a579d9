"""The measuring end of a remote device: a script copied to the device and spoken to over ssh or adb.

It needs only Python 3.8+ and the device's runtime (onnxruntime and numpy on a Raspberry Pi or a
phone): no PyTorch, and no hwcompress. The workstation copies it once per host and caches it there by
content hash (``<workdir>/runner-<sha>.py``, see :mod:`hwcompress.measure.remote`), starts it with
``--serve`` and keeps it running for the whole command, so the interpreter and the runtime are
imported once, not per measurement (importing onnxruntime alone costs 0.2 s on this project's Xeon
and seconds on a Pi).

Optional on the device: ``onnx``, to read ONNX Runtime's NCHWc channel block off its graph optimiser
(the ``channel_block`` and ``channel_alignment`` facts, as the plugin reports them).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (the real fd 1; the
script points fd 1 at stderr so that a library's stray print cannot corrupt the stream). The first
line written is the hello (versions, pid, what is missing). Requests:

* ``{"op": "has", "sha": S}`` -> ``{"ok": true, "have": bool}``: is model ``S`` cached here?
* ``{"op": "put", "sha": S, "size": N}`` followed by N raw bytes -> the file, checked against ``S``.
* ``{"op": "adopt", "sha": S, "path": P}``: a file copied by ``scp``/``adb push``, checked and cached.
* ``{"op": "facts", "settings": {...}}`` -> ``{"ok": true, "facts": {...}}``.
* ``{"op": "measure", "sha": S, "input_shape": [...], "settings": {...}, "mode": "measure" | "unit"}``
  -> ``{"ok": true, "samples_ms" | "latency", "node_ms", "facts", "notes", "work_s", "window"}``
  (``work_s``: seconds spent measuring, board lock held; ``window``: its start and end, epoch seconds).
* ``{"op": "conversions", "settings": {...}}`` -> ``{"ok": true, "conversions": {...} | null}``: what
  ONNX Runtime's layout conversions around a layer off its blocked path cost here (the plugin's
  ``layout_conversions``; the standalone runner times the same probe, and needs ``onnx`` for it).
* ``{"op": "non_layer", "settings": {...}}`` -> ``{"ok": true, "costs": {...} | null}``: what the work
  between layers (squeeze-excitation multiplies, adds, pooling) costs here (the plugin's
  ``non_layer_costs``; null without hwcompress on the device).
* ``{"op": "bye"}``.

While another measurement holds the board, a measure request first answers ``{"waiting": ...}``, then
``{"started": true}`` once it has the board. A failure is ``{"ok": false, "kind": "model" | "busy" | "runtime" | "protocol", "error": "one line"}``.

Timing mirrors :class:`hwcompress_profiler_onnxruntime.OnnxRuntimeProfiler` (same session options,
spinning off, the same warm-up, random input and per-node profiling; ``unit`` mode sums kernel times
without the layout conversions at the edges, and for int8 without the Q/DQ and transposes there,
flushing 16 MB of cache between runs). Keep the two in step: tests/test_remote.py compares them. Where
hwcompress and the device's profiler plugin import on the device,
that plugin measures instead (``--mode auto``, the default; ``standalone`` and ``plugin`` force one):
the numbers are then exactly the plugin's.

Measurements on one board never overlap: each takes ``<workdir>/measure.lock`` (``flock``) for its
duration, whichever workstation asked, besides the workstation's own per-host lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time

try:
    import fcntl
except ImportError:  # not POSIX: the workstation's per-host lock still serialises its own measurements
    fcntl = None

PROTOCOL = 1
PROFILED_RUNS = 20
BOUNDARY_OPS = frozenset({"ReorderInput", "ReorderOutput"})
# An int8 unit's edges (Q/DQ and the NHWC transposes around QLinearConv), which a layer inside an int8
# network does not pay either.
QUANTIZED_BOUNDARY_OPS = BOUNDARY_OPS | {"QuantizeLinear", "DequantizeLinear", "Transpose"}
KERNEL_SUFFIX = "_kernel_time"
DEFAULT_CACHE_FLUSH_MB = 16
#: Cached models kept per host; the oldest (by last use) go first.
MAX_CACHED_MODELS = 2000
MAX_CACHE_BYTES = 4 << 30
PER_LAYER_NOTE = ("per-layer times are ONNX Runtime's kernel times in a separate profiled run of the same session "
                  "(BatchNorm folded into Conv; layout reorders in (other))")


class Refusal(Exception):
    """A request this runner cannot serve; ``kind`` tells the workstation whose fault it is."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def version_of(module):
    try:
        return __import__(module).__version__
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags as Linux lists them (x86 ``flags``, Arm ``Features``); empty elsewhere.
    Read once per process: the facts that use it go with every measurement."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


#: x86 flags of an instruction that multiplies uint8 by int8 into 32-bit sums (VNNI, AMX).
X86_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_vnni():
    """True where an x86-64 CPU multiplies uint8 x int8 into 32-bit sums (VNNI); False on an x86-64 CPU
    without (its 16-bit intermediate sums can saturate: ONNX Runtime's quantization guide asks for 7-bit
    weights there); None on other machines or where the flags cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_flags()
    return bool(set(X86_VNNI_FLAGS) & flags) if flags else None


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def read_clocks():
    """CPU governor, frequency and temperature where the OS exposes them (as the recorder reads them)."""
    found = {}
    governor = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        found["governor"] = governor
    for key, path in (("cpu_cur_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
                      ("cpu_max_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
                      ("thermal_zone0_mC", "/sys/class/thermal/thermal_zone0/temp")):
        value = read_text(path)
        if value and value.lstrip("-").isdigit():
            found[key] = int(value)
    return found


NCHWC_DOMAIN = "com.microsoft.nchwc"


def runs_blocked(cin, group=1):
    """As the onnxruntime plugin's ``_runs_blocked``: whether ONNX Runtime runs a 3x3 convolution fed
    ``cin`` channels in its NCHWc layout, and whether it reorders the input first (needs ``onnx``)."""
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


_layout = []


def nchwc_layout():
    """As the onnxruntime plugin's: ``(block, alignment)`` of the NCHWc convolutions on this CPU, or
    None where ``onnx`` (needed to read the optimised graph) is not installed."""
    if not _layout:
        try:
            block = next((c for c in (2, 4, 8, 16, 32, 64, 128) if runs_blocked(c)[1]), 1)
        except ImportError:
            _layout.append(None)
            return None
        alignment = 1 if block == 1 else next(
            (a for a in (1, 2, 4, 8, 16, 32, 64, 128)
             if a >= block or (runs_blocked(block + a)[0] and runs_blocked(block + a, group=block + a)[0])), block)
        _layout.append((block, alignment))
    return _layout[0]


def where_facts():
    """Facts that say where the measurement ran: what proves it crossed the transport."""
    return {
        "hostname": socket.gethostname(),
        "runner_pid": os.getpid(),
        "ssh_connection": os.environ.get("SSH_CONNECTION"),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "clocks": read_clocks(),
    }


def conversion_costs(layout, kernel_events, sizes=(14, 28, 56), runs=30):
    """What a layer off ONNX Runtime's blocked path costs its network in layout conversions, timed with
    ``kernel_events(onnx_path, input_shape, iterations) -> [(node, args, ms)]`` (a profiled session's
    kernel events): per direction (``to_plain``, NCHWc to NCHW before such a layer; ``to_blocked``, back
    after it), the points timed (elements, ms) at ``sizes`` and a least-squares line
    ``ms = intercept + slope * elements``. None where ``layout`` (block, alignment) has no blocked path.

    The probe: three 1x1 convolutions, the middle one fed channels off the alignment, so that the
    runtime leaves its blocked layout before it (ReorderOutput) and re-enters it after (ReorderInput).
    Shared by the onnxruntime plugin and this runner (which needs ``numpy`` and ``onnx`` for it)."""
    block, alignment = layout
    if block == 1 or alignment == 1:
        return None
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    points = {"to_plain": [], "to_blocked": []}
    off = 4 * block - max(1, alignment // 2)
    wanted = {("ReorderOutput", off): "to_plain", ("ReorderInput", 3 * block): "to_blocked"}
    for hw in sizes:
        layers = (("a", 2 * block, off, "x", "h1"), ("b", off, 3 * block, "h1", "h2"), ("c", 3 * block, 3 * block, "h2", "y"))
        rng = np.random.default_rng(0)
        nodes, weights = [], []
        for name, cin, cout, source, target in layers:
            weights.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1)).astype(np.float32), name + "_w"))
            nodes.append(helper.make_node("Conv", [source, name + "_w"], [target], name=name))
        graph = helper.make_graph(nodes, "reorders", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 * block, hw, hw])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3 * block, hw, hw])], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, 8)
        times = {"to_plain": [], "to_blocked": []}
        with tempfile.TemporaryDirectory(prefix="hwcompress-reorder-") as folder:
            path = os.path.join(folder, "reorders.onnx")
            onnx.save(model, path)
            events = kernel_events(path, (1, 2 * block, hw, hw), runs + 5)
        for _, args, ms in events:
            shapes = args.get("output_type_shape") if args.get("op_name") == "ReorderOutput" else args.get("input_type_shape")
            try:
                channels = int(next(iter(shapes[0].values()))[1])
            except (TypeError, IndexError, StopIteration, ValueError, AttributeError):
                continue
            direction = wanted.get((args.get("op_name"), channels))
            if direction:
                times[direction].append(ms)
        elements = {"to_plain": off * hw * hw, "to_blocked": 3 * block * hw * hw}
        for direction, timed in times.items():
            if timed:
                points[direction].append((elements[direction], statistics.median(timed[-runs:])))
    result = {"block": block, "alignment": alignment}
    for direction, pts in points.items():
        if len(pts) < 2:
            return None
        mean_x = statistics.fmean(x for x, _ in pts)
        mean_y = statistics.fmean(y for _, y in pts)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in pts) / max(sum((x - mean_x) ** 2 for x, _ in pts), 1e-12)
        slope = max(slope, 0.0)
        result[direction] = {"points": [[x, round(y, 6)] for x, y in pts],
                             "intercept_ms": round(max(mean_y - slope * mean_x, 0.0), 6), "ms_per_element": slope}
    return result


class Standalone:
    """ONNX Runtime's CPU execution provider, timed as the onnxruntime plugin times it."""

    name = "onnxruntime"
    precisions = ("fp32", "int8")  # int8 as Q/DQ models, which ONNX Runtime runs as they come

    def facts(self, settings):
        import onnxruntime as ort

        facts = {
            "cpu": cpu_model(),
            "logical_cores": os.cpu_count(),
            "machine": platform.machine(),
            "os": platform.platform(),
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "execution_provider": "CPUExecutionProvider",
            "intra_op_threads": int(settings.get("threads", 1)),
            "spinning": bool(settings.get("options", {}).get("spin", False)),
            "measured_with": "hwcompress runner (standalone)",
            "int8_vnni": int8_vnni(),
        }
        layout = nchwc_layout()
        if layout is not None:  # without onnx on the device the recorder falls back to the probed quantum
            facts["channel_block"], facts["channel_alignment"] = layout
        return facts

    def session(self, path, settings, profile_prefix=None, layout=True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(settings.get("threads", 1))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        spin = "1" if settings.get("options", {}).get("spin", False) else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.log_severity_level = 3
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise Refusal("model", "ONNX Runtime cannot load the model: " + " ".join(str(error).split())[:300]) from None

    @staticmethod
    def feed(session, input_shape):
        import numpy as np

        first = session.get_inputs()[0]
        dtype = np.float16 if "float16" in first.type else np.float32
        return {first.name: np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(dtype)}

    def measure(self, path, input_shape, settings):
        session = self.session(path, settings)
        feed = self.feed(session, input_shape)
        for _ in range(int(settings.get("warmup", 10))):
            session.run(None, feed)
        samples = []
        for _ in range(int(settings.get("runs", 100))):
            start = time.perf_counter_ns()
            session.run(None, feed)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        result = {"samples_ms": samples, "node_ms": None, "notes": []}
        if settings.get("per_layer", False):
            warmup = max(1, min(int(settings.get("warmup", 10)), 5))
            runs = max(1, min(int(settings.get("runs", 100)), PROFILED_RUNS))
            per_node = self.kernel_times(path, input_shape, settings, warmup + runs)
            result["node_ms"] = {name: statistics.median(times[-runs:]) for name, times in per_node.items()}
            if result["node_ms"]:
                result["notes"].append(PER_LAYER_NOTE)
        return result

    def measure_unit(self, path, input_shape, settings):
        runs = max(1, int(settings.get("runs", 100)))
        warmup = max(1, int(settings.get("warmup", 10)))
        edges = QUANTIZED_BOUNDARY_OPS if settings.get("precision") == "int8" else BOUNDARY_OPS
        per_node = self.kernel_times(path, input_shape, settings, warmup + runs, flush=cache_flusher(settings),
                                     skip_ops=edges)
        if not per_node:
            raise Refusal("runtime", "ONNX Runtime reported no kernel times for the unit")
        count = min(runs, min(len(times) for times in per_node.values()))
        samples = [sum(times[len(times) - count + i] for times in per_node.values()) for i in range(count)]
        # The unit's nodes as well: the recorder counts its kernels (as the plugin's measure_unit does).
        node_ms = {name: statistics.median(times[-count:]) for name, times in per_node.items()}
        return {"samples_ms": samples, "node_ms": node_ms, "notes": []}

    def kernel_times(self, path, input_shape, settings, iterations, layout=True, flush=None, skip_ops=frozenset()):
        per_node = {}
        for name, args, ms in self.kernel_events(path, input_shape, settings, iterations, layout, flush):
            if args.get("op_name") not in skip_ops:
                per_node.setdefault(name, []).append(ms)
        return per_node

    def kernel_events(self, path, input_shape, settings, iterations, layout=True, flush=None):
        """Every kernel event of ``iterations`` profiled runs: ``(node name, the event's args, ms)``."""
        with tempfile.TemporaryDirectory(prefix="hwcompress-ort-") as folder:
            session = self.session(path, settings, os.path.join(folder, "ort"), layout)
            feed = self.feed(session, input_shape)
            for _ in range(iterations):
                if flush is not None:
                    flush()
                session.run(None, feed)
            with open(session.end_profiling()) as handle:
                events = json.load(handle)
        return [(event["name"][: -len(KERNEL_SUFFIX)], event.get("args", {}), event["dur"] / 1000.0) for event in events
                if event.get("cat") == "Node" and event.get("name", "").endswith(KERNEL_SUFFIX)]

    def layout_conversions(self, settings, sizes=(14, 28, 56), runs=30):
        """As the onnxruntime plugin's ``layout_conversion_costs`` (the same probe, :func:`conversion_costs`);
        None without a blocked layout or without ``onnx`` on the device."""
        layout = nchwc_layout()
        if layout is None:
            return None
        return conversion_costs(layout, lambda path, shape, iterations: self.kernel_events(path, shape, settings, iterations),
                                sizes, runs)

    def non_layer_costs(self, _settings):
        """None: the probe of the work between layers is hwcompress's (its plugin on the device times it)."""
        return None


def cache_flusher(settings):
    """As :func:`hwcompress.lut.recorder.cache_flusher`: evict the layer's weights between runs."""
    megabytes = float(settings.get("options", {}).get("cache_flush_mb", DEFAULT_CACHE_FLUSH_MB))
    if megabytes <= 0:
        return None
    import numpy as np

    buffer = np.zeros(int(megabytes * (1 << 20)), dtype=np.uint8)

    def flush():
        np.add(buffer, 1, out=buffer)

    return flush


class Plugin:
    """The device's profiler plugin, where hwcompress and the plugin import on the device."""

    def __init__(self, profiler, version):
        from hwcompress.measure.contract import ModelArtifact, ProfileSettings

        self.inner, self.version = profiler, version
        self.name = profiler.name
        self._artifact, self._settings = ModelArtifact, ProfileSettings

    @classmethod
    def find(cls, name):
        """The plugin ``name`` if it loads and is available here, else ``(None, why not)``."""
        # Imported here, not at the top: the runner must work where hwcompress is not installed.
        try:
            import hwcompress
            from hwcompress.plugins import registry

            entry = registry.profilers.entry(name)
        except Exception as error:
            return None, "hwcompress does not import here (%s: %s)" % (type(error).__name__, error)
        if entry is None:
            return None, "hwcompress is installed but no profiler plugin named %r is" % name
        try:
            profiler = entry.resolve()
            ok, why = profiler.available()
        except Exception as error:
            return None, "the %r plugin fails to load (%s: %s)" % (name, type(error).__name__, error)
        if not ok:
            return None, "the %r plugin is unavailable: %s" % (name, why)
        return cls(profiler, hwcompress.__version__), ""

    def settings(self, settings):
        return self._settings(**{k: v for k, v in settings.items() if k in ("runs", "warmup", "threads", "precision",
                                                                              "per_layer", "options")})

    def facts(self, settings):
        facts = dict(self.inner.facts(self.settings(settings)))
        facts["measured_with"] = "hwcompress %s plugin %r" % (self.version, self.name)
        return facts

    def _run(self, method, path, input_shape, settings):
        from hwcompress.errors import UserError

        artifact = self._artifact(onnx_path=pathlib.Path(path), input_shape=tuple(input_shape), name=os.path.basename(path))
        try:
            measurement = getattr(self.inner, method)(artifact, self.settings(settings))
        except UserError as error:
            raise Refusal("model", " ".join(str(error).split())) from None
        return {"latency": measurement.latency.to_dict(), "node_ms": measurement.node_ms,
                "notes": list(measurement.notes), "facts": measurement.facts}

    def measure(self, path, input_shape, settings):
        return self._run("measure", path, input_shape, settings)

    def layout_conversions(self, settings):
        probe = getattr(self.inner, "layout_conversions", None)
        return probe(self.settings(settings)) if callable(probe) else None

    def non_layer_costs(self, settings):
        probe = getattr(self.inner, "non_layer_costs", None)
        return probe(self.settings(settings)) if callable(probe) else None

    def measure_unit(self, path, input_shape, settings):
        if not callable(getattr(self.inner, "measure_unit", None)):
            raise Refusal("runtime", "the %r plugin on this device has no measure_unit (needed to record a LUT)" % self.name)
        return self._run("measure_unit", path, input_shape, settings)


def choose_backend(name, mode):
    """What measures here: the plugin where it works (``mode`` ``auto`` or ``plugin``), else the
    standalone timing for onnxruntime (``auto`` or ``standalone``). Returns ``(backend, missing,
    note)``: ``missing`` says what the device lacks, ``note`` why the plugin was not used."""
    why_not = "not tried (runner = standalone)"
    if mode != "standalone":
        plugin, why_not = Plugin.find(name)
        if plugin is not None:
            return plugin, None, ""
        if mode == "plugin":
            return None, "hwcompress's %r profiler plugin is not usable by %s: %s" % (name, sys.executable, why_not), ""
    if name != "onnxruntime":
        return None, ("the %r profiler needs hwcompress and hwcompress-profiler-%s installed for %s (%s)"
                      % (name, name, sys.executable, why_not)), ""
    missing = [m for m in ("numpy", "onnxruntime") if version_of(m) is None]
    if missing:
        return None, "%s not importable by %s" % (" and ".join(missing), sys.executable), ""
    return Standalone(), None, "" if mode == "standalone" else "standalone runner: " + why_not


class Runner:
    def __init__(self, workdir, backend, out):
        self.workdir = workdir
        self.models = os.path.join(workdir, "models")
        os.makedirs(self.models, exist_ok=True)
        self.backend = backend
        self.out = out

    def reply(self, document):
        self.out.write((json.dumps(document, default=str) + "\n").encode())
        self.out.flush()

    def model_path(self, sha):
        if not sha or not all(c in "0123456789abcdef" for c in sha):
            raise Refusal("protocol", "bad model hash %r" % (sha,))
        return os.path.join(self.models, sha + ".onnx")

    def adopt(self, sha, source):
        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha:
            os.unlink(source)
            raise Refusal("protocol", "the copied model is damaged (hash mismatch); it was dropped")
        os.replace(source, self.model_path(sha))
        self.evict()

    def evict(self):
        try:  # uploads that died mid-way (a dropped connection, a full disk) leave part files: drop stale ones
            for entry in os.scandir(self.models):
                if (".onnx.part" in entry.name or entry.name.endswith(".push")) and entry.stat().st_mtime < time.time() - 3600:
                    os.unlink(entry.path)
        except OSError:
            pass
        try:
            entries = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(self.models) if e.name.endswith(".onnx")]
        except OSError:
            return
        entries.sort()
        total = sum(size for _, size, _ in entries)
        while entries and (len(entries) > MAX_CACHED_MODELS or total > MAX_CACHE_BYTES):
            _, size, path = entries.pop(0)
            total -= size
            try:
                os.unlink(path)
            except OSError:
                pass

    def handle(self, request, stdin):
        op = request.get("op")
        if op == "has":
            path = self.model_path(request.get("sha"))
            have = os.path.exists(path)
            if have:
                os.utime(path)  # last use, for eviction
            return {"ok": True, "have": have}
        if op == "put":
            size = int(request["size"])
            part = self.model_path(request["sha"]) + ".part%d" % os.getpid()
            left = size
            try:
                with open(part, "wb") as handle:
                    while left:
                        block = stdin.read(min(left, 1 << 20))
                        if not block:
                            raise Refusal("protocol", "the model stream ended early")
                        left -= len(block)
                        handle.write(block)
                self.adopt(request["sha"], part)
            except BaseException:
                # The rest of the model's bytes must not be read as requests: drain them, leave no part file.
                while left > 0:
                    block = stdin.read(min(left, 1 << 20))
                    if not block:
                        break
                    left -= len(block)
                try:
                    os.unlink(part)
                except OSError:
                    pass
                raise
            return {"ok": True}
        if op == "adopt":
            self.adopt(request["sha"], request["path"])
            return {"ok": True}
        if op == "facts":
            return {"ok": True, "facts": self.facts(request.get("settings") or {})}
        if op == "measure":
            return self.measure(request)
        if op == "conversions":
            with self.board(request), deadline(request):
                return {"ok": True, "conversions": self.backend.layout_conversions(request.get("settings") or {})}
        if op == "non_layer":
            with self.board(request), deadline(request):
                return {"ok": True, "costs": self.backend.non_layer_costs(request.get("settings") or {})}
        raise Refusal("protocol", "unknown request %r" % (op,))

    def board(self, request):
        """The board's lock for one measurement; waiting for it is not measuring (the workstation's
        time limit restarts at "started")."""
        return BoardLock(os.path.join(self.workdir, "measure.lock"), float(request.get("lock_timeout_s") or 3600),
                         on_wait=lambda: self.reply({"waiting": "another measurement holds this board"}),
                         on_start=lambda: self.reply({"started": True}))

    def facts(self, settings):
        facts = dict(self.backend.facts(settings))
        facts.update(where_facts())
        return facts

    def measure(self, request):
        path = self.model_path(request.get("sha"))
        if not os.path.exists(path):
            raise Refusal("protocol", "model %s is not cached here" % request.get("sha"))
        settings = request.get("settings") or {}
        mode = request.get("mode", "measure")
        with self.board(request), deadline(request):
            started, began = time.perf_counter(), time.time()
            method = self.backend.measure_unit if mode == "unit" else self.backend.measure
            result = method(path, request.get("input_shape"), settings)
            work = time.perf_counter() - started
            window = [began, time.time()]
            facts = self.facts(settings)
        facts.update(result.pop("facts", None) or {})
        facts.update(where_facts())
        result.update(ok=True, facts=facts, work_s=work, window=window)
        os.utime(path)
        return result


class deadline:
    """The workstation gives up at the request's ``timeout_s``: a runner it can no longer reach must not
    go on measuring (and holding the board), so it exits 5 s after that."""

    def __init__(self, request):
        self.timeout = float(request.get("timeout_s") or 0)
        self.armed = self.timeout > 0 and hasattr(signal, "alarm")

    def __enter__(self):
        if self.armed:
            signal.signal(signal.SIGALRM, lambda *_: os._exit(124))
            signal.alarm(int(self.timeout) + 5)
        return self

    def __exit__(self, *_):
        if self.armed:
            signal.alarm(0)


class LockTimeout(Exception):
    pass


def _lock_timeout(*_):
    raise LockTimeout()


class BoardLock:
    """``flock`` on a file in the workdir: one measurement at a time on this board, whoever asks.

    A waiter blocks in the kernel, which wakes it at the release, before the holder's next request has
    crossed the network; polling instead let a busy holder take the lock back again and again (a
    second workstation starved for a whole LUT recording in a test here).
    """

    def __init__(self, path, timeout_s, on_wait=None, on_start=None):
        self.path, self.timeout_s, self.handle = path, timeout_s, None
        self.on_wait, self.on_start = on_wait or (lambda: None), on_start or (lambda: None)

    def __enter__(self):
        if fcntl is None:
            return self
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return self
        except OSError:
            self.on_wait()
        try:
            self._wait()
        finally:
            if self.handle is not None:
                self.on_start()
        return self

    def _wait(self):
        if not hasattr(signal, "setitimer"):
            fcntl.flock(self.handle, fcntl.LOCK_EX)
            return
        previous = signal.signal(signal.SIGALRM, _lock_timeout)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except LockTimeout:
            self.handle.close()
            self.handle = None
            raise Refusal("busy", "another measurement has held this board (%s) for over %g s"
                          % (self.path, self.timeout_s)) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def __exit__(self, *_):
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def serve(workdir, profiler, mode):
    # The protocol owns the real stdout; anything else that prints (a library, a plugin) goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    backend, missing, note = choose_backend(profiler, mode)
    hello = {"hello": PROTOCOL, "pid": os.getpid(), "python": platform.python_version(), "executable": sys.executable,
             "hostname": socket.gethostname(), "onnxruntime": version_of("onnxruntime"), "numpy": version_of("numpy"),
             "profiler": profiler, "backend": getattr(backend, "name", None), "missing": missing, "note": note,
             "precisions": list(getattr(getattr(backend, "inner", backend), "precisions", None) or ()),
             "workdir": os.path.abspath(workdir)}
    runner = Runner(workdir, backend, out)
    runner.reply(hello)
    if missing:
        return 3
    while True:
        line = stdin.readline()
        if not line:
            return 0
        try:
            request = json.loads(line)
        except ValueError:
            runner.reply({"ok": False, "kind": "protocol", "error": "not JSON: %r" % line[:80]})
            continue
        if request.get("op") == "bye":
            runner.reply({"ok": True})
            return 0
        try:
            runner.reply(runner.handle(request, stdin))
        except Refusal as refusal:
            runner.reply({"ok": False, "kind": refusal.kind, "error": str(refusal)})
        except Exception as error:  # the runtime failed on this request; the runner stays up for the next
            runner.reply({"ok": False, "kind": "runtime", "error": "%s: %s" % (type(error).__name__, " ".join(str(error).split())[:300])})


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--serve" not in argv:
        sys.stderr.write("usage: runner.py --serve [--workdir DIR] [--profiler NAME] [--mode auto|standalone|plugin]\n")
        return 2

    def value(flag, default):
        return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else default

    return serve(value("--workdir", os.path.join(os.path.expanduser("~"), ".cache", "hwcompress-runner")),
                 value("--profiler", "onnxruntime"), value("--mode", "auto"))


if __name__ == "__main__":
    sys.exit(main())
