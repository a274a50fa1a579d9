"""Does a report's ``competition`` say when other processes slowed the measurement?

``hwcompress profile``, ``compare``, the search's verdict and ``lut record`` count how long the measuring
process waited for a CPU held by other processes, and how many cores those kept busy
(``hwcompress/measure/competition.py``), and add a note when the waiting reaches 5% of the measurement. This script measures models under three conditions, interleaved round by round
with the order rotating: quiet; a CPU busy loop in another process (compute only: it shares the cores'
turbo budget and little else); a memory-bandwidth hog in another process (streams 512 MB, the load that
slowed a resnet18 teacher 2.7x in docs/benchmarks.md). Each condition's process is pinned to the second
core where the machine allows, and the measurement runs in this process (one ONNX Runtime thread).

Per model and condition it prints the median latency, the median per-round ratio to the quiet
measurement of the same round, the competition read (the share of the measurement spent waiting for a
CPU, and the cores kept busy by others; means over rounds) and how many rounds carried the note.
``--same-core`` runs the loads on the measuring core instead (as bench/verdict_stability.py's hog did
until 2026-11-28, by accident): the time-sharing case.

    python bench/busy_machine.py [--models resnet18,mobilenet_v3_small] [--input-size 64] [--rounds 6] [--runs 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict_stability import Load, hog, pin  # noqa: E402 - the same load, pinned as it is there

CONDITIONS = ("quiet", "busy loop", "memory hog")


def busy_loop(stop: Any, core: int, cores: list[int]) -> None:
    """Spin until ``stop`` is set, on ``core`` of ``cores`` (as :func:`verdict_stability.hog` streams memory)."""
    pin(core, cores)
    while not stop.is_set():
        pass


class Condition:
    """One of :data:`CONDITIONS`, switched on for a measurement and off after it (:class:`verdict_stability.Load`)."""

    def __init__(self, name: str, core: int) -> None:
        target = {"busy loop": busy_loop, "memory hog": hog}.get(name)
        self.load = None if target is None else Load(core, target)

    def __enter__(self) -> "Condition":
        if self.load is not None:
            self.load.on()
            time.sleep(0.2)  # reached its loop (Load waits 0.3 s; numpy's 256 MB take a moment more)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.load is not None:
            self.load.off()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v3_small", help="torchvision names (random weights)")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each measuring every model under every condition")
    parser.add_argument("--runs", type=int, default=60, help="timed runs per measurement")
    parser.add_argument("--same-core", action="store_true", help="the loads on the measuring core (time-sharing)")
    args = parser.parse_args(argv)

    import torch
    import torchvision

    from hwcompress.devices import resolve_device
    from hwcompress.measure.competition import WAITED, watch
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, measuring_profiler
    from hwcompress.model.export import export_onnx

    torch.set_num_threads(1)
    pin(0)
    device = resolve_device("cpu")
    profiler, _ = measuring_profiler(device)
    settings = make_settings(device, runs=args.runs, warmup=5, threads=1, per_layer=False)
    shape = (1, 3, args.input_size, args.input_size)
    folder = Path(tempfile.mkdtemp(prefix="busy-machine-"))
    artifacts = {}
    for name in [n for n in args.models.split(",") if n]:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        path = folder / f"{name}.onnx"
        export_onnx(model, shape, path, verify=False)
        artifacts[name] = ModelArtifact(path, shape, model, name)
    facts = profiler.facts(settings)
    print(f"{facts.get('cpu')} ({os.cpu_count()} logical cores), {facts.get('runtime')} {facts.get('runtime_version')}, "
          f"one thread, input {'x'.join(map(str, shape))}, {args.rounds} rounds of {args.runs} runs; loads on the "
          f"{'measuring' if args.same_core else 'other'} core; note from {WAITED:.0%} waited")
    times: dict[tuple[str, str], list[float]] = {}
    readings: dict[tuple[str, str], list[float | None]] = {}
    for round_ in range(args.rounds):
        order = CONDITIONS[round_ % 3:] + CONDITIONS[:round_ % 3]
        for condition in order:
            with Condition(condition, 0 if args.same_core else 1):
                for name, artifact in artifacts.items():
                    with watch() as watched:
                        median = profiler.measure(artifact, settings).latency.median
                    times.setdefault((name, condition), []).append(median)
                    readings.setdefault((name, condition), []).append(watched.result)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    print()
    print(f"{'model':20s} {'condition':12s} {'median ms':>10s} {'x quiet (per round)':>20s} {'waited':>8s} "
          f"{'others, cores':>14s} {'rounds noted':>13s}")

    def mean(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.fmean(known):.2f}" if known else "-"

    for name in artifacts:
        quiet = times[(name, "quiet")]
        for condition in CONDITIONS:
            measured = times[(name, condition)]
            ratios = [m / q for m, q in zip(measured, quiet)]
            read = readings[(name, condition)]
            noted = sum(r.busy for r in read)
            print(f"{name:20s} {condition:12s} {statistics.median(measured):10.3f} {statistics.median(ratios):10.3f} "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) {mean([r.waited_share for r in read]):>8s} "
                  f"{mean([r.other_cores for r in read]):>14s} {noted:>6d} of {len(measured)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
