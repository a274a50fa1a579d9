"""Timing GPU work with CUDA events: the loop both GPU profilers share.

Method (after trtexec, research/performance.md section 5):

* Everything is enqueued on one dedicated (non-default) CUDA stream, which CUDA graph capture requires
  and which keeps other work of the process off the timed stream.
* Warm-up runs for at least ``warmup`` iterations *and* ``warmup_ms`` milliseconds: GPUs ramp their
  clocks up over tens of milliseconds, and lazy initialisation (cuDNN autotuning, TensorRT's deferred
  allocations) happens on the first launches.
* Each timed iteration records a start event, enqueues one inference, records an end event and waits
  for the end event before the next iteration: single-stream latency, never overlapping iterations.
  ``start.elapsed_time(end)`` is the time the GPU spent between the two events, so host jitter after
  the end event does not count; launch overhead does count when the GPU waits for the host to enqueue
  (small models), which is what a deployed single-stream model sees too.
* With ``cuda_graph`` the inference is captured once and the graph replayed: one launch instead of one
  per kernel, as trtexec's ``--useCudaGraph``. Capture failures fall back to eager launches with a note.
* With ``spin_wait`` the host polls the end event instead of blocking in ``cudaEventSynchronize``
  (trtexec's ``--useSpinWait``): the next iteration starts sooner, and the host wall time per iteration,
  reported alongside, gets closer to the event time.
* The stability check (:func:`time_until_settled`): the timed loop runs in rounds of ``runs``
  iterations until the medians of two consecutive rounds agree within a tolerance (clocks ramping,
  another process's burst); the report gives every round's median and says when it never settled.

torch is imported inside the functions: this module is imported when the plugin loads.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# Stops a warm-up whose iterations are too slow to ever satisfy a count (a safety net, not a rule).
MAX_WARMUP_SECONDS = 30.0
GRAPH_WARMUP_REPLAYS = 3


@dataclass
class CudaTiming:
    """Per-iteration times of one timed loop.

    Attributes:
        samples_ms: CUDA-event time of each timed iteration (of the last round).
        host_ms: host wall time of each timed iteration (enqueue + wait).
        warmup_iterations: eager (and replay) iterations run before timing.
        cuda_graph: whether the timed iterations were CUDA graph replays.
        notes: what the user should know (graph capture fell back, ...).
        round_medians_ms: the median of each timed round (the stability check).
        settled: whether two consecutive rounds agreed within the tolerance.
    """

    samples_ms: list[float]
    host_ms: list[float]
    warmup_iterations: int
    cuda_graph: bool
    notes: list[str] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    settled: bool = True

    @property
    def host_median_ms(self) -> float:
        return statistics.median(self.host_ms)


def _wait(event: Any, spin: bool) -> None:
    if spin:
        # Busy-poll: costs a CPU core while waiting, but no sleep/wake-up latency.
        while not event.query():
            pass
    else:
        event.synchronize()


def warm_up(launch: Callable[[], Any], stream: Any, iterations: int, min_ms: float) -> int:
    """Run ``launch`` until both ``iterations`` and ``min_ms`` are reached; return the count."""
    count = 0
    start = time.perf_counter()
    while True:
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if count >= iterations and elapsed_ms >= min_ms:
            break
        if count >= max(iterations, 1) and elapsed_ms >= MAX_WARMUP_SECONDS * 1e3:
            break
        launch()
        stream.synchronize()
        count += 1
    return count


def capture_graph(launch: Callable[[], Any], stream: Any) -> tuple[Any | None, str | None]:
    """Capture one ``launch`` into a CUDA graph on ``stream``.

    Returns:
        ``(graph, None)``, or ``(None, why)`` when capture is not possible (an operation that
        synchronizes, allocates or depends on data; TensorRT engines with data-dependent shapes).
    """
    import torch

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            launch()
        stream.synchronize()
    except Exception as error:
        # A failed capture leaves the stream in an error state only for the capture itself;
        # synchronizing clears what was pending so eager timing can go on.
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return None, f"CUDA graph capture failed ({type(error).__name__}: {first_line[:160]}); timed eager launches instead"
    return graph, None


def settled(round_medians: list[float], tolerance: float) -> bool:
    """Whether the last two round medians agree within ``tolerance`` (relative to the smaller)."""
    if len(round_medians) < 2:
        return False
    a, b = round_medians[-2], round_medians[-1]
    low = min(a, b)
    return low > 0 and abs(a - b) / low <= tolerance


def time_launches(
    launch: Callable[[], Any],
    stream: Any,
    *,
    runs: int,
    warmup: int,
    warmup_ms: float,
    cuda_graph: bool = False,
    spin_wait: bool = False,
    max_rounds: int = 1,
    settle_tolerance: float = 0.02,
) -> CudaTiming:
    """Warm up, optionally capture a CUDA graph, then time rounds of ``runs`` iterations with CUDA events
    until two consecutive round medians agree within ``settle_tolerance`` (at most ``max_rounds``).

    Args:
        launch: enqueues one inference on ``stream`` (it may read ``torch.cuda.current_stream()``,
            which is ``stream`` while this runs). It must not synchronize: that would break capture.
        stream: a ``torch.cuda.Stream`` (not the default stream).
        runs: timed iterations per round.
        warmup: minimum warm-up iterations.
        warmup_ms: minimum warm-up duration.
        cuda_graph: capture ``launch`` once and time graph replays.
        spin_wait: poll the end event instead of blocking on it.
        max_rounds: rounds at most; 1 times one round and skips the check.
        settle_tolerance: see :func:`settled`.

    Returns:
        The last round's per-iteration times, every round's median, and whether they settled.
    """
    import torch

    notes: list[str] = []
    with torch.cuda.stream(stream):
        # Eager warm-up always runs first: it also performs the lazy work (allocations, autotuning,
        # TensorRT's deferred shape updates) that must not happen inside a graph capture.
        count = warm_up(launch, stream, max(warmup, 1), warmup_ms)
        step = launch
        graphed = False
        if cuda_graph:
            graph, why = capture_graph(launch, stream)
            if graph is None:
                notes.append(why or "CUDA graph capture failed; timed eager launches instead")
            else:
                step = graph.replay
                graphed = True
                count += warm_up(step, stream, GRAPH_WARMUP_REPLAYS, 0.0)
        medians: list[float] = []
        while True:
            samples, host_ms = _timed_round(step, stream, runs, spin_wait)
            medians.append(statistics.median(samples))
            if max_rounds <= 1 or settled(medians, settle_tolerance) or len(medians) >= max_rounds:
                break
    stable = max_rounds <= 1 or settled(medians, settle_tolerance)
    if not stable:
        spread = (max(medians) - min(medians)) / min(medians) if min(medians) > 0 else 0.0
        notes.append(f"the GPU time did not settle: {len(medians)} rounds of {runs} iterations, round medians "
                     f"{', '.join(f'{m:.4f}' for m in medians)} ms ({spread:.1%} apart; tolerance "
                     f"{settle_tolerance:.0%}); another process may be using the GPU, or its clocks are moving")
    return CudaTiming(samples_ms=samples, host_ms=host_ms, warmup_iterations=count, cuda_graph=graphed, notes=notes,
                      round_medians_ms=medians, settled=stable)


def _timed_round(step: Callable[[], Any], stream: Any, runs: int, spin_wait: bool) -> tuple[list[float], list[float]]:
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    host_ms: list[float] = []
    for start, end in zip(starts, ends):
        begin = time.perf_counter_ns()
        start.record(stream)
        step()
        end.record(stream)
        _wait(end, spin_wait)
        host_ms.append((time.perf_counter_ns() - begin) / 1e6)
    return [start.elapsed_time(end) for start, end in zip(starts, ends)], host_ms


def coefficient_of_variation_note(samples_ms: list[float], limit: float = 0.01) -> list[str]:
    """trtexec's stability warning: a note when std/mean of the GPU times exceeds ``limit`` (1%)."""
    if len(samples_ms) < 2:
        return []
    mean = statistics.fmean(samples_ms)
    if mean <= 0:
        return []
    cov = statistics.pstdev(samples_ms) / mean
    if cov <= limit:
        return []
    return [
        f"GPU time is unstable (coefficient of variation {cov:.1%}, above trtexec's 1% bar); "
        "locking GPU clocks, options spin_wait=true or cuda_graph=true may steady it"
    ]
