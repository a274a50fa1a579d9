"""The recorder: time layer configurations on this device into a table, detect the channel quantum.

Needs no PyTorch when it times exported units (a plan, :mod:`hwcompress.lut.plan`); it builds and
exports a unit itself only when given a PyTorch template (:mod:`hwcompress.lut.record`).

For every layer of a model the recorder times a tiny model made of that layer *as the runtime executes
it inside the network* (Conv2d with the BatchNorm and activation that follow it, which runtimes fold
into one kernel; depthwise convolutions with their groups; Linear), over a grid of channel counts
(:mod:`hwcompress.lut.units`), so that channel-pruned variants are predicted by interpolation. It also
times the whole model and uniformly pruned copies of it, for the calibration
(:mod:`hwcompress.lut.calibration`). Recording is resumable: entries already in the file are kept.

Two timing modes exist (``provenance.timing``):

* ``kernels``: the profiler's own ``measure_unit(artifact, settings) -> Measurement``, the in-network
  time of the unit: the sum of the runtime's per-node kernel times inside the tiny model, leaving out
  the layout conversions at its edges (ONNX Runtime's NCHWc ``ReorderInput``/``ReorderOutput``,
  TensorRT's reformatting layers), which a layer inside a network does not pay. Measured: on
  mobilenet_v2 the sum of standalone ONNX Runtime sessions over-estimates the network by 55 %, the
  sum of kernels is within 1 %.
* ``session``: the whole standalone run through the profiler's ``measure``, minus the fixed per-call
  overhead (timed once on a trivial model), for profilers without ``measure_unit``.

Channel quantum: many kernels work on blocks of channels (ONNX Runtime's NCHWc uses 16 with AVX-512,
8 with AVX2), so 56 channels cost what 64 cost. A profiler that reports its runtime's block
(``channel_block`` in its facts: ONNX Runtime's, read off its graph optimiser) sets it
(``channel_quantum_source: runtime``); otherwise the recorder detects the step once per table with a
timing probe (``detected``). Interpolation rounds channel counts up to it, and the search prunes in
whole blocks from one block up.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from hwcompress import __version__
from hwcompress.errors import UserError
from hwcompress.lut.keys import TIMING_KERNELS, TIMING_SESSION, LayerConfig, LutEntry, _ceil_to
from hwcompress.lut.table import LatencyTable, _now
from hwcompress.lut.units import PlannedUnit, UnitTemplate, build_unit
from hwcompress.measure.contract import LatencyStats, ModelArtifact, ProfileSettings
from hwcompress.model.export import export_onnx
from hwcompress.slim.quantize import INT8, quantize_unit, symmetric_int8


@dataclass
class UnitTimer:
    """How one tiny model is timed and what that measures: ``measure(artifact, settings)`` gives its
    statistics and how many kernels it ran (None where the profiler does not say)."""

    timing: str
    measure: Callable[[ModelArtifact, ProfileSettings], tuple[LatencyStats, int | None]]

    def time(self, artifact: ModelArtifact, settings: ProfileSettings) -> LatencyStats:
        return self.measure(artifact, settings)[0]


def unit_timer(profiler: Any) -> UnitTimer:
    """The best way ``profiler`` can time a layer as it runs inside a network.

    The profiler's own ``measure_unit`` (in-network time of the unit) when it has one; else its
    whole-session ``measure`` (the table then also stores the fixed per-call overhead, subtracted at
    prediction).
    """
    own = getattr(profiler, "measure_unit", None)
    if callable(own):
        def kernels(artifact: ModelArtifact, settings: ProfileSettings) -> tuple[LatencyStats, int | None]:
            # A profiler that reports the unit's nodes (ONNX Runtime's node profiler) says how many kernels
            # its time adds up; each carries the node profiler's own cost (kernel_overhead).
            measured = own(artifact, settings)
            return measured.latency, len(measured.node_ms) if measured.node_ms else None

        return UnitTimer(TIMING_KERNELS, kernels)

    def session(artifact: ModelArtifact, settings: ProfileSettings) -> tuple[LatencyStats, int | None]:
        return profiler.measure(artifact, replace(settings, per_layer=False)).latency, None

    return UnitTimer(TIMING_SESSION, session)


def kernel_overhead(profiler: Any, artifact: ModelArtifact, settings: ProfileSettings, rounds: int = 3) -> float | None:
    """What the node profiler adds to each kernel it times (ms), measured on a whole model: its kernel
    times summed, less its whole-model median (a session without the profiler), per node
    (:func:`hwcompress.measure.profile.without_profiler_overhead`, what ``hwcompress profile`` takes off
    its rows); the median of ``rounds`` tries. None when the profiler reports no per-node times.

    Units are timed under that profiler (``timing: kernels``), a whole model is not: on a 2-core EPYC with
    ONNX Runtime 1.32 the three held-out networks of ``bench/lut_fidelity.py`` at 96 px each measured
    1.2-1.8 us per node, and regnet_x_400mf's torch-pruned variants, about 70 layers priced as timed, came
    out 12-20% over their measurement.
    """
    from hwcompress.measure.profile import without_profiler_overhead  # what `hwcompress profile` takes off its rows

    estimates = []
    for _ in range(max(1, rounds)):
        measured = profiler.measure(artifact, replace(settings, per_layer=True))
        if not measured.node_ms or measured.latency.median <= 0:
            return None
        estimates.append(without_profiler_overhead(measured.node_ms, measured.latency.median)[1])
    return round(statistics.median(estimates), 6)


#: MB streamed between timed runs of a layer (``settings.options["cache_flush_mb"]`` overrides; 0 = off).
#: Measured on a 2-core Xeon: 16 MB brings a 480x1000 Linear from 0.033 to 0.078 ms (0.084 inside
#: mobilenet_v2) and 1x1 convolutions at 7x7 within 5 % of their in-network times; larger flushes
#: also evict the activations a layer finds warm inside a network and over-predict memory-bound
#: layers (mobilenet_v2's layer sum +20 % at 48 MB), so the remainder is left to the calibration.
DEFAULT_CACHE_FLUSH_MB = 16

#: MB streamed between timed runs of a layer that runs off the runtime's blocked path
#: (:func:`hwcompress.lut.predict.between_blocks`): none. Such a layer runs in plain NCHW, and after a
#: flush it paid a cold start of 20-30 us that it does not pay inside the network. Measured on a 2-core
#: Xeon (AVX-512), 10 off-path layers each of three torch-pruned networks at 96 px, their sum timed
#: alone against their kernels inside the network: flushed 1.17x (regnet_x_400mf), 1.86x
#: (mobilenet_v3_small), 1.18x (efficientnet_b0); unflushed 0.91x, 0.99x, 1.01x.
OFF_PATH_CACHE_FLUSH_MB = 0.0


def cache_flush_mb(settings: ProfileSettings) -> float:
    return float(settings.options.get("cache_flush_mb", DEFAULT_CACHE_FLUSH_MB))


def cache_flusher(settings: ProfileSettings) -> Callable[[], None]:
    """Evict the layer's weights from the core's private caches between timed runs (for a CPU
    profiler's ``measure_unit``; ``settings.options["cache_flush_mb"]`` sets the size, 0 turns it off).

    Inside a network the rest of the layers run between two uses of a layer's weights, so they come
    from the shared cache or memory; a layer timed alone in a loop keeps them in L2 and looks faster
    (measured: a 480x1000 Linear 2.1x, 1x1 convolutions with 500-900 channels at 7x7 10-19 %). The
    input stays warm: the runtime's layout conversion rewrites it right before the layer, as the
    previous layer would have.
    """
    megabytes = cache_flush_mb(settings)
    if megabytes <= 0:
        return lambda: None
    import numpy as np

    buffer = np.zeros(int(megabytes * (1 << 20)), dtype=np.uint8)

    def flush() -> None:
        # Read and write every byte (touching one byte per line measured as evicting less).
        np.add(buffer, 1, out=buffer)

    return flush


def read_clocks() -> dict[str, Any]:
    """CPU governor and frequencies, GPU clocks and temperature, where this OS exposes them."""
    found: dict[str, Any] = {}

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        found["governor"] = governor
    for key, path in (
        ("cpu_cur_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        ("cpu_max_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
        ("thermal_zone0_mC", "/sys/class/thermal/thermal_zone0/temp"),
    ):
        value = read(path)
        if value and value.lstrip("-").isdigit():
            found[key] = int(value)
    # Jetson and other SoC GPUs expose devfreq; desktop NVIDIA clocks come from the profiler's facts.
    for folder in sorted(Path("/sys/class/devfreq").glob("*")) if Path("/sys/class/devfreq").is_dir() else []:
        if "gpu" in folder.name.lower() or "gv11b" in folder.name or "ga10b" in folder.name:
            current = read(str(folder / "cur_freq"))
            if current and current.isdigit():
                found[f"gpu_{folder.name}_hz"] = int(current)
            gpu_governor = read(str(folder / "governor"))
            if gpu_governor:
                found[f"gpu_{folder.name}_governor"] = gpu_governor
    nvpmodel = read("/etc/nvpmodel.conf")
    if nvpmodel is not None:
        found["nvpmodel_conf"] = True
    return found


def new_provenance(descriptor: Any, profiler: Any, settings: ProfileSettings, batch: int, timing: str) -> dict[str, Any]:
    """The provenance block of a table recorded here and now."""

    facts = dict(profiler.facts(settings))
    # A device measured over a transport reports its own clocks and host; this machine's say nothing.
    remote = "transport" in facts
    clocks = dict(facts.get("clocks") or {}) if remote else read_clocks()
    now = _now()
    # A runtime that reports its channel block (ONNX Runtime reads it off its own graph optimiser) is
    # believed over a timing probe, which a loaded machine can mislead (8 one hour, 16 the next).
    block = int(facts.get("channel_block") or 0)
    quantum = {"channel_quantum": block, "channel_quantum_source": "runtime"} if block > 1 else {"channel_quantum": 1}
    return {
        "device": descriptor.name,
        "device_aliases": list(getattr(descriptor, "aliases", [])),
        "profiler": profiler.name,
        "runtime": str(facts.get("runtime", profiler.name)),
        "runtime_version": str(facts.get("runtime_version", "unknown")),
        "precision": str(settings.precision),
        "batch": int(batch),
        "threads": int(settings.threads),
        "runs": int(settings.runs),
        "warmup": int(settings.warmup),
        "options": dict(settings.options),
        "governor": clocks.get("governor"),
        "clocks": clocks,
        "date": now,
        "updated": now,
        "recorder": f"hwcompress {__version__}",
        "host": str(facts.get("host")) if remote else platform.node(),
        "machine": str(facts.get("machine", "?")) if remote else platform.machine(),
        "timing": timing,
        # Entries of this table store how many kernels their unit ran, where the profiler reports it, and
        # are priced net of the node profiler's cost per kernel (TablePredictor._entry_ms). A table
        # recorded before has no such switch: entries added to it later store no counts either, so that
        # one table never prices alike entries two ways.
        "kernel_counts": True,
        "channel_multiple": int(getattr(descriptor, "channel_multiple", 8)),
        **quantum,
        "session_overhead_ms": 0.0,
        "cache_flush_mb": cache_flush_mb(settings) if timing == TIMING_KERNELS else 0.0,
        "off_path_cache_flush_mb": OFF_PATH_CACHE_FLUSH_MB if timing == TIMING_KERNELS else 0.0,
        "facts": facts,
    }


def symmetric_table(table: LatencyTable) -> bool:
    """Whether the device ``table`` was recorded on reads only symmetric int8 Q/DQ
    (:func:`~hwcompress.slim.quantize.symmetric_int8` of its recording's facts and runtime)."""
    return symmetric_int8({"runtime": table.provenance.get("runtime"), **(table.provenance.get("facts") or {})})


def timing_precision(table: LatencyTable, precision: str) -> str:
    """The precision an entry of ``precision`` is timed at. A runtime that reads only symmetric Q/DQ
    (TensorRT, :func:`symmetric_table`) times an int8 unit at the table's float precision, its Q/DQ nodes
    making it int8: that is how it builds the search's int8 students (their other layers in that float
    precision), so units and students are priced alike."""
    if precision == INT8 and symmetric_table(table):
        return table.precision
    return precision


ProgressCallback = Callable[[int, int, str], None]

class Recorder:
    """Times layer configurations into a :class:`LatencyTable`, saving as it goes (resumable).

    Args:
        table: the table to fill (entries already in it are never re-measured).
        profiler: a measuring profiler available here.
        settings: measurement settings (``per_layer`` is ignored).
        path: where to save; None keeps the table in memory.
        progress: ``progress(done, total, label)`` after each configuration; raising from it stops the
            recording, and what was measured is saved.
        save_every_s: save at most this often while recording (and always at the end or on error).
    """

    def __init__(
        self,
        table: LatencyTable,
        profiler: Any,
        settings: ProfileSettings,
        path: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        save_every_s: float = 5.0,
    ) -> None:
        self.table = table
        self.profiler = profiler
        self.settings = replace(settings, per_layer=False)
        flush = table.provenance.get("cache_flush_mb")
        if flush is not None:
            # Every entry of a table is timed with the same flush, whoever records into it.
            self.settings = replace(self.settings, options={**settings.options, "cache_flush_mb": float(flush)})
        # Layers off the runtime's blocked path are timed with their own flush; a table recorded before
        # that rule (no such key) keeps one flush for all its entries.
        off_flush = table.provenance.get("off_path_cache_flush_mb")
        self._off_path_settings = None
        if off_flush is not None and float(off_flush) != cache_flush_mb(self.settings):
            self._off_path_settings = replace(self.settings, options={**self.settings.options, "cache_flush_mb": float(off_flush)})
        self.path = Path(path) if path is not None else None
        self.progress = progress
        self.save_every_s = save_every_s
        self.timer = unit_timer(profiler)
        self.measured = 0
        self._last_save = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="hwcompress-lut-")

    def close(self) -> None:
        self._tmp.cleanup()

    def save(self) -> None:
        if self.path is not None:
            self.table.save(self.path)
        self._last_save = time.monotonic()

    def time_config(self, config: LayerConfig, source: "UnitTemplate | PlannedUnit | None" = None) -> LatencyStats:
        """Time one configuration (not stored): built from its template and exported here, or, for a
        :class:`PlannedUnit`, the ONNX file exported beforehand (no PyTorch needed on the device)."""
        return self._time_unit(config, source)[0]

    def _time_unit(self, config: LayerConfig, source: "UnitTemplate | PlannedUnit | None") -> tuple[LatencyStats, int | None]:
        """:meth:`time_config` with the unit's kernel count (None where the profiler does not report it)."""
        return self.timer.measure(self.unit_artifact(config, source), self.settings_for(config))

    def settings_for(self, config: LayerConfig) -> ProfileSettings:
        """The measurement settings of ``config``: its own precision (an int8 unit is timed as int8); a
        float layer off the runtime's blocked path without the cache flush (:data:`OFF_PATH_CACHE_FLUSH_MB`)."""
        precision = timing_precision(self.table, config.precision or self.table.precision)
        if precision != self.settings.precision:
            return replace(self.settings, precision=precision)
        if self._off_path_settings is not None and self.table.predictor.off_path(config):
            return self._off_path_settings
        return self.settings

    def unit_artifact(self, config: LayerConfig, source: "UnitTemplate | PlannedUnit | None", slot: int = 0) -> ModelArtifact:
        """The tiny model that times ``config``: a plan's file, or the layer exported to ``unit-<slot>.onnx``."""
        if isinstance(source, PlannedUnit):
            return ModelArtifact(onnx_path=source.onnx_path, input_shape=source.input_shape, name=config.key())
        module, shape = build_unit(config, source)
        onnx_path = Path(self._tmp.name) / (f"unit-{slot}.onnx" if slot else "unit.onnx")
        export_onnx(module, shape, onnx_path, verify=False)
        if config.precision == INT8:
            # The layer as a Q/DQ model, as ONNX Runtime's quantizer writes the network's (ONNX Runtime
            # fuses DQ-Conv-Q into QLinearConv; TensorRT reads explicit Q/DQ).
            onnx_path = quantize_unit(onnx_path, onnx_path.with_suffix(".int8.onnx"), shape, symmetric=symmetric_table(self.table))
        return ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=module, name=config.key())

    @property
    def workers(self) -> int:
        """Timings that may run at once: one per host of a remote pool (its ``workers``), else one."""
        return max(1, int(getattr(self.profiler, "workers", 1) or 1))

    def record(
        self,
        configs: Sequence[tuple[LayerConfig, "UnitTemplate | PlannedUnit | None"]],
        passes: int = 1,
        every: int = 0,
        between: Callable[[], None] | None = None,
    ) -> LatencyTable:
        """Time every configuration not yet in the table (``passes`` times); returns the table.

        With a pool of remote hosts (a profiler whose ``workers`` > 1) the configurations of a pass are
        spread over the hosts, one timing per host at a time (:meth:`_record_spread`); a host that drops
        out leaves the others going, and whatever was timed is in the table either way.

        Args:
            configs: configurations with what times them: the template that builds the layer, a
                :class:`PlannedUnit` (an exported file), or None (a bare layer).
            passes: time each configuration in this many passes over the whole list and keep the
                lowest median: a burst of load or a thermal throttle slows a whole timing down for a
                moment, never speeds it up, and passes minutes apart rarely both meet one.
            every, between: call ``between()`` after every ``every`` new timings (the whole-model
                measurements of the calibration are spread over the recording this way).
        """
        passes = max(1, int(passes))
        total = len(configs) * passes

        def have(config: LayerConfig) -> int:
            entry = self.table.entries.get(config.key())
            return 0 if entry is None else min(entry.passes, passes)

        done = sum(have(c) for c, _ in configs)
        if self.progress:
            self.progress(done, total, "")

        def store(config: LayerConfig, template: Any, timed: tuple[LatencyStats, int | None]) -> None:
            nonlocal done
            stats, kernels = timed
            if not self.table.provenance.get("kernel_counts"):
                kernels = None  # a table recorded before counts existed: its calibrations were summed without
            fused = template.fused if template is not None else ()
            old = self.table.entries.get(config.key())
            if old is None:
                self.table.add(LutEntry(config, stats.median, stats.p90, stats.std, stats.runs, fused, kernels=kernels))
            elif stats.median < old.median:
                # The first timing's kernel count stays: a table's calibration was summed with it (an entry
                # recorded before counts existed keeps none).
                self.table.add(LutEntry(config, stats.median, stats.p90, stats.std, stats.runs, old.fused or fused, old.passes + 1,
                                        old.kernels))
            else:
                old.passes += 1
            self.measured += 1
            done += 1
            if time.monotonic() - self._last_save >= self.save_every_s:
                self.save()
            if between is not None and every and self.measured % every == 0 and done < total:
                between()
            if self.progress:
                self.progress(done, total, config.key())

        try:
            for current in range(1, passes + 1):
                if self.workers > 1:
                    self._record_spread(configs, lambda config, pass_=current: have(config) >= pass_, store)
                    continue
                for config, template in configs:
                    if have(config) >= current:
                        continue
                    store(config, template, self._time_unit(config, template))
        finally:
            # Also on KeyboardInterrupt or an error: an interrupted recording keeps what it measured.
            if self.measured:
                self.save()
        return self.table

    def _record_spread(
        self,
        configs: Sequence[tuple[LayerConfig, Any]],
        recorded: Callable[[LayerConfig], bool],
        store: Callable[[LayerConfig, Any, tuple[LatencyStats, int | None]], None],
    ) -> None:
        """One pass over ``configs`` with up to :attr:`workers` timings in flight (a remote pool).

        Units are exported here, one at a time (PyTorch's exporter is not thread-safe), and timed in
        worker threads; results are stored here, in the order they finish. On a failure no new timing
        starts, the ones in flight finish and are stored, then the failure is raised.
        """
        pending = iter(configs)
        inflight: dict[Future, tuple[LayerConfig, Any, ModelArtifact]] = {}
        started: set[str] = set()
        failure: BaseException | None = None
        slot = 0
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hwcompress-lut") as pool:
            while True:
                while failure is None and len(inflight) < self.workers:
                    item = next(pending, None)
                    if item is None:
                        break
                    config, template = item
                    if recorded(config) or config.key() in started:
                        continue
                    started.add(config.key())
                    slot += 1
                    try:
                        artifact = self.unit_artifact(config, template, slot)
                    except BaseException as error:
                        failure = error
                        break
                    inflight[pool.submit(self.timer.measure, artifact, self.settings_for(config))] = (config, template, artifact)
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in finished:
                    config, template, artifact = inflight.pop(future)
                    if not isinstance(template, PlannedUnit):
                        Path(artifact.onnx_path).unlink(missing_ok=True)  # exported here for this timing only
                    try:
                        store(config, template, future.result())
                    except BaseException as error:  # a timing that failed, or progress() asking to stop
                        failure = failure or error
        if failure is not None:
            raise failure

    def detect_quantum(self, batch: int, multiple: int) -> tuple[int, list[list[float]]]:
        """The channel step the runtime works in: time a 3x3 convolution at 64, 64+m, ... 64+8m output
        channels and pick the step that explains the times best (a staircase of 2m when kernels work
        on blocks of 2m channels)."""
        probes = quantum_probe_configs(batch, multiple)
        return self.detect_quantum_from([(config, None) for config in probes], multiple)

    def detect_quantum_from(self, probes: Sequence[tuple[LayerConfig, "PlannedUnit | None"]], multiple: int) -> tuple[int, list[list[float]]]:
        """:meth:`detect_quantum` on given probe configurations (exported beforehand for a plan)."""
        counts = [config.cout for config, _ in probes]
        saved = self.settings
        # Steps are a few per cent of the time: more runs than a layer needs make them stand out, and
        # the median of three passes drops the one stray point that turns 16 into 8 (measured here on
        # an idle machine: 2 of 20 single-pass probes said 8, 0 of 20 three-pass probes).
        self.settings = replace(saved, runs=max(int(saved.runs), 30))
        try:
            passes = [[self.time_config(config, source).median for config, source in probes]
                      for _ in range(QUANTUM_PROBE_PASSES)]
            times = [statistics.median(column) for column in zip(*passes)]
        finally:
            self.settings = saved
        return fit_quantum(counts, times, multiple), [[c, round(t, 6)] for c, t in zip(counts, times)]

    def session_overhead(self) -> float:
        """The fixed cost of one call on a trivial model (subtracted from session-timed entries)."""
        config = LayerConfig("Conv2d", 1, (1, 1), 8, 8, (1, 1), (1, 1), (0, 0), 1)
        return self.time_config(config).median


#: Passes over the quantum probe; each configuration keeps the median of its pass medians.
QUANTUM_PROBE_PASSES = 3


def quantum_probe_configs(batch: int, multiple: int) -> list[LayerConfig]:
    """The probe of :meth:`Recorder.detect_quantum`: a 3x3 convolution at 28x28, 64 input channels,
    64, 64 + m, ..., 64 + 8m output channels."""
    base = LayerConfig("Conv2d", batch, (28, 28), 64, 64, (3, 3), (1, 1), (1, 1), 1)
    return [base.with_channels(64, 64 + i * multiple) for i in range(9)]


def fit_quantum(counts: Sequence[int], times: Sequence[float], multiple: int) -> int:
    """The step ``q`` (a multiple of ``multiple``) for which ``time ~ a + b * ceil(count / q) * q`` fits
    best; a coarser step must halve the residual to be chosen over a finer one.

    The line is fitted robustly (Theil-Sen: the median of the pairwise slopes) and scored by the median
    absolute residual, so one stray point does not decide. A least-squares fit read this machine's
    probe ``0.344, 0.439, 0.452, 0.496, 0.505, 0.505, 0.562, 0.63, 0.632`` ms (one point low) as a step
    of 8 where ONNX Runtime works in blocks of 16, and the LUT recorded on it then under-predicted
    pruned resnet18s by 8-14 % instead of 3-5 %.
    """

    def residual(step: int) -> float:
        xs = [_ceil_to(c, step) for c in counts]
        slopes = [(times[j] - times[i]) / (xs[j] - xs[i])
                  for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
        slope = statistics.median(slopes) if slopes else 0.0
        intercept = statistics.median(y - slope * x for x, y in zip(xs, times))
        return statistics.median(abs(y - intercept - slope * x) for x, y in zip(xs, times))

    span = max(counts) - min(counts)
    best, best_residual = multiple, residual(multiple)
    for factor in (2, 4):
        step = multiple * factor
        if step * 2 > span:
            break
        value = residual(step)
        if value < 0.5 * best_residual:
            best, best_residual = step, value
    return best


def open_table(
    path: str | os.PathLike[str] | None,
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    batch: int,
    *,
    overwrite: bool = False,
) -> LatencyTable:
    """The table at ``path`` to resume (checked to be the same device and settings), or a new one."""
    timing = unit_timer(profiler).timing
    fresh = LatencyTable(new_provenance(descriptor, profiler, settings, batch, timing))
    if path is None or overwrite or not Path(path).exists():
        return fresh
    existing = LatencyTable.load(path)
    mine, theirs = fresh.settings_key(), existing.settings_key()
    for name, value in mine.items():
        if theirs[name] != value:
            raise UserError(
                f"LUT {path} was recorded with {name} {theirs[name]!r}, this recording uses {value!r}; "
                "record into another file or pass --overwrite to start afresh"
            )
    return existing
