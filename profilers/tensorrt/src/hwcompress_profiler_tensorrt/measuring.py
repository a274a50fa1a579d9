"""One GPU measurement, shared by the ``tensorrt`` and ``cuda`` profilers.

Given something that enqueues one inference on a stream, this samples the GPU's clocks, times the
launches (:mod:`hwcompress_profiler_tensorrt.timing`), samples the clocks again, optionally collects
per-layer times, and assembles the :class:`~hwcompress.measure.contract.Measurement` with its facts and notes.
The two profilers differ only in how they build the ``launch`` callable.
"""

from __future__ import annotations

from typing import Any, Callable

from hwcompress.measure.contract import LatencyStats, Measurement, ProfileSettings
from hwcompress_profiler_tensorrt.gpu_facts import GpuMonitor, device_facts, pci_bus_id, throttle_notes, with_suffix
from hwcompress_profiler_tensorrt.options import KNOWN_OPTIONS, GpuOptions
from hwcompress_profiler_tensorrt.timing import coefficient_of_variation_note, time_launches


def ignored_options_note(options: GpuOptions) -> list[str]:
    """A note naming options this profiler does not know (typos such as ``cuda_graphs``)."""
    if not options.ignored:
        return []
    return [f"ignored unknown options {', '.join(options.ignored)} (known: {', '.join(sorted(KNOWN_OPTIONS))})"]


def measure_launches(
    *,
    profiler: str,
    runtime: str,
    runtime_version: str,
    launch: Callable[[], Any],
    stream: Any,
    settings: ProfileSettings,
    options: GpuOptions,
    layer_times: Callable[[], dict[str, float]] | None = None,
    facts: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    default_cuda_graph: bool = False,
) -> Measurement:
    """Time ``launch`` on the current CUDA device and report it.

    Args:
        profiler: the registry name of the profiler that measured (``"tensorrt"`` or ``"cuda"``),
            recorded as ``facts["profiler"]`` so a fallback is visible in every report.
        runtime: ``"tensorrt"`` or ``"torch"``.
        runtime_version: its version.
        launch: enqueues one inference on ``stream`` without synchronizing.
        stream: the ``torch.cuda.Stream`` to time on.
        settings: runs, warm-up, per-layer.
        options: the validated GPU options.
        layer_times: returns per-node median times (called after timing, when per-layer is on).
        facts: profiler-specific facts to add (engine cache, precision route...).
        notes: profiler-specific notes to add.
        default_cuda_graph: whether to replay a CUDA graph when the options do not say.

    Returns:
        The measurement: the latency statistics of the CUDA-event times, per-node times, facts with
        clocks at start and end, and notes (throttling, instability, graph fallback, ignored options).
    """
    import torch

    device_index = torch.cuda.current_device()
    bus_id = None
    try:
        bus_id = pci_bus_id(device_index)
    except Exception:
        bus_id = None
    monitor = GpuMonitor(device_index, bus_id)
    try:
        base = device_facts(device_index, monitor)
        start = monitor.sample()
        timing = time_launches(
            launch,
            stream,
            runs=int(settings.runs),
            warmup=int(settings.warmup),
            warmup_ms=options.warmup_ms,
            cuda_graph=default_cuda_graph if options.cuda_graph is None else options.cuda_graph,
            spin_wait=options.spin_wait,
            max_rounds=options.max_rounds,
            settle_tolerance=options.settle_tolerance,
        )
        end = monitor.sample()
    finally:
        monitor.close()
    node_ms = layer_times() if (settings.per_layer and layer_times is not None) else None
    all_facts: dict[str, Any] = {
        "profiler": profiler,
        "runtime": runtime,
        "runtime_version": runtime_version,
        **base,
        **options.to_facts(),
        **(facts or {}),
        "cuda_graph": timing.cuda_graph,
        "warmup_iterations": timing.warmup_iterations,
        "timing": ("CUDA events around each graph replay" if timing.cuda_graph else
                   "CUDA events around each enqueue") + ", synchronized per iteration",
        "rounds": len(timing.round_medians_ms),
        "round_medians_ms": [round(m, 5) for m in timing.round_medians_ms],
        "settled": timing.settled,
        "host_wall_median_ms": round(timing.host_median_ms, 4),
        **with_suffix(start, "start"),
        **with_suffix(end, "end"),
    }
    all_notes = list(notes or [])
    all_notes += timing.notes
    all_notes += throttle_notes(start, end)
    all_notes += coefficient_of_variation_note(timing.samples_ms)
    all_notes += ignored_options_note(options)
    return Measurement(latency=LatencyStats.from_samples(timing.samples_ms), node_ms=node_ms, facts=all_facts, notes=all_notes)
