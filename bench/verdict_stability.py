"""How steady is a student's measured verdict on a shared machine, and which estimator keeps it so?

A search's verdict times the student and its teacher in interleaved rounds (a fresh ONNX Runtime
session per model and round) and multiplies a ratio of the two by the teacher's reference latency. On
a shared machine other processes' load slows both models, but not always by the same factor (one that
shares the measuring core cuts into every run of a large model and into few runs of a small one that
fit between the scheduler's turns), so the ratio itself moves with the load. This script measures one
(student, teacher) pair in repeated verdicts of ``--rounds`` rounds under three conditions, side by side
and interleaved: quiet; loaded (a memory-streaming process for the whole verdict); intermittent (that
process on or off at random for each session). ``--hog-core same`` (the default) runs it on the
measuring core, as every run before 2026-11-28 did by accident (the child inherited the pinning of its
parent and could not move); ``other`` on the second core, where on a 2-vCPU EPYC it moved nothing
measurable (``bench/busy_machine.py``). For each estimator of the verdict's ratio it prints the mean and spread over the
verdicts of each condition, and the shift from quiet:

* ``median of round ratios``: the median over rounds of student / teacher (what a search uses);
* ``ratio of round minima``: the fastest round of the student over the fastest round of the teacher;
* ``ratio of round medians``: the median round of each, divided;
* ``size-matched reference``: the median over rounds of student / reference, where the reference is a
  third model near the student's size timed in the same rounds, times the reference's quiet ratio to
  the teacher (pooled over all quiet rounds): the verdict a search would give if it paired each student
  with a reference of its own size measured at preparation, instead of with the teacher.

With ``--rounds 15`` (or more) it also replays the search's verdict rule on the recorded rounds, in the
order they were taken: the fixed rule (the median of the first 5 round ratios against the budget)
against the adaptive one (two more rounds while the 90% interval of the median holds the budget, up to
15), for budgets a few percent above and below the condition's pooled median ratio (the truth, from
all its rounds). Per budget: the share of verdicts on the right side, the share the adaptive rule left
undecided (it says so in the report), and its mean number of rounds.

    python bench/verdict_stability.py --student student.onnx --teacher teacher.onnx [--verdicts 6] [--rounds 5]

Without ``--student``/``--teacher``: torchvision's resnet18 at 64 px against a copy of it with every
channel group at a quarter, and a copy at a third as the size-matched reference (random weights; only
the times matter). ``--reference`` names another file.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CONDITIONS = ("quiet", "loaded", "intermittent")
ESTIMATORS = ("median of round ratios", "ratio of round minima", "ratio of round medians", "size-matched reference")


#: The cores this process may use when the script starts, before it pins itself: a child started after that
#: inherits the pinned set, so the hog is told the whole set.
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin(core: int, cores: list[int] = CORES) -> None:
    """Keep the calling process on ``core`` of ``cores`` (where the machine has two or more and allows it)."""
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[core]})


def hog(stop: Any, core: int, cores: list[int]) -> None:
    """Stream a 256 MB array through memory until ``stop`` is set, on ``core`` of ``cores`` (:data:`CORES`,
    passed: a child started another way than by fork reads this module again, pinned)."""
    import numpy as np

    pin(core, cores)

    a = np.ones(32 * 1024 * 1024)
    b = np.empty_like(a)
    while not stop.is_set():
        np.multiply(a, 2.0, out=b)


class Load:
    """A process running ``target`` (``target(stop, core, cores)``; default :func:`hog`, memory-streaming),
    switched on and off, on ``core`` (0: the measuring one once :func:`pin` put this process there; 1: the other)."""

    def __init__(self, core: int = 1, target: Any = hog) -> None:
        self.core, self.target = core, target
        self.stop: Any = None
        self.process: Any = None

    def on(self) -> None:
        if self.process is None:
            self.stop = multiprocessing.Event()
            self.process = multiprocessing.Process(target=self.target, args=(self.stop, self.core, CORES), daemon=True)
            self.process.start()
            time.sleep(0.3)  # let it reach its loop

    def off(self) -> None:
        if self.process is not None:
            self.stop.set()
            self.process.join()
            self.process = None


def default_models(folder: Path) -> tuple[Path, Path, Path, tuple[int, ...]]:
    import torch
    import torchvision

    from hwcompress.model.export import export_onnx
    from hwcompress.slim.pruning import find_channel_groups, prune_channels

    torch.manual_seed(0)
    shape = (1, 3, 64, 64)
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    groups = find_channel_groups(teacher, torch.zeros(shape))
    student = prune_channels(teacher, torch.zeros(shape), {g.name: max(8, g.channels // 4) for g in groups})
    reference = prune_channels(teacher, torch.zeros(shape), {g.name: max(8, g.channels // 3) for g in groups})
    paths = folder / "teacher.onnx", folder / "student.onnx", folder / "reference.onnx"
    export_onnx(teacher, shape, paths[0], verify=False)
    export_onnx(student.eval(), shape, paths[1], verify=False)
    export_onnx(reference.eval(), shape, paths[2], verify=False)
    return paths[1], paths[0], paths[2], shape


def estimates(times: dict[str, list[float]], reference_scale: float) -> dict[str, float]:
    """Each estimator of the student/teacher ratio; ``reference_scale``: the reference's quiet ratio to the teacher."""
    student, teacher, reference = times["student"], times["teacher"], times["reference"]
    return {
        "median of round ratios": statistics.median(s / t for s, t in zip(student, teacher)),
        "ratio of round minima": min(student) / min(teacher),
        "ratio of round medians": statistics.median(student) / statistics.median(teacher),
        "size-matched reference": statistics.median(s / r for s, r in zip(student, reference)) * reference_scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student")
    parser.add_argument("--teacher")
    parser.add_argument("--reference", help="a model near the student's size (default: with the default pair, the teacher at a third)")
    parser.add_argument("--input-shape", default="1,3,64,64")
    parser.add_argument("--verdicts", type=int, default=6, help="verdicts per condition")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per verdict (a search's verdict takes 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hog-core", choices=("same", "other"), default="same",
                        help="the load on the measuring core (time-sharing; every run before 2026-11-28) or the other one")
    args = parser.parse_args()
    from hwcompress.devices import resolve_device
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, resolve_timing

    folder = tempfile.TemporaryDirectory(prefix="hwcompress-verdict-")
    if args.student and args.teacher:
        if not args.reference:
            parser.error("--student and --teacher need --reference too (a model near the student's size)")
        student_path, teacher_path, reference_path = Path(args.student), Path(args.teacher), Path(args.reference)
        shape = tuple(int(d) for d in args.input_shape.split(","))
    else:
        student_path, teacher_path, reference_path, shape = default_models(Path(folder.name))
    descriptor = resolve_device("cpu")
    timing = resolve_timing(descriptor)
    settings = make_settings(descriptor, per_layer=False)
    artifacts = {"student": ModelArtifact(student_path, shape, None, "student"),
                 "teacher": ModelArtifact(teacher_path, shape, None, "teacher"),
                 "reference": ModelArtifact(reference_path, shape, None, "reference")}
    names = list(artifacts)
    rng = random.Random(args.seed)
    pin(0)  # the timed sessions on the first core
    load = Load(0 if args.hog_core == "same" else 1)
    recorded: dict[str, list[dict[str, list[float]]]] = {c: [] for c in CONDITIONS}
    try:
        for verdict in range(args.verdicts):
            order = list(CONDITIONS)
            rng.shuffle(order)  # the conditions interleaved, in a new order each time
            for condition in order:
                times: dict[str, list[float]] = {name: [] for name in names}
                (load.on if condition == "loaded" else load.off)()
                for round_ in range(args.rounds):
                    for which in names[round_ % 3:] + names[:round_ % 3]:  # the order rotating
                        if condition == "intermittent":
                            (load.on if rng.random() < 0.5 else load.off)()
                        times[which].append(timing.profiler.measure(artifacts[which], settings).latency.median)
                load.off()
                recorded[condition].append(times)
            print(f"verdict {verdict + 1}/{args.verdicts}: " + ", ".join(
                f"{c} {statistics.median(s / t for s, t in zip(recorded[c][-1]['student'], recorded[c][-1]['teacher'])):.3f}"
                for c in CONDITIONS), flush=True)
    finally:
        load.off()
    # The reference's ratio to the teacher as a search would measure it at preparation: quiet, all rounds pooled.
    reference_scale = statistics.median(r / t for times in recorded["quiet"] for r, t in zip(times["reference"], times["teacher"]))
    results = {c: [estimates(times, reference_scale) for times in recorded[c]] for c in CONDITIONS}
    raw = {c: [(times["student"], times["teacher"]) for times in recorded[c]] for c in CONDITIONS}
    quiet = {e: statistics.fmean(r[e] for r in results["quiet"]) for e in ESTIMATORS}
    print(f"\n{args.verdicts} verdicts of {args.rounds} rounds per condition; student {student_path.name}, teacher "
          f"{teacher_path.name}, reference {reference_path.name} (quiet ratio to the teacher {reference_scale:.4f}), {shape}")
    for condition in CONDITIONS:
        medians = {name: statistics.median(t for times in recorded[condition] for t in times[name]) for name in names}
        print(f"  {condition:<13} session medians: " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in medians.items()))
    print(f"\n  {'estimator':<24} {'condition':<13} {'mean':>7} {'min-max over verdicts':>22} {'spread':>7} {'vs quiet':>9}")
    for estimator in ESTIMATORS:
        for condition in CONDITIONS:
            values = [r[estimator] for r in results[condition]]
            mean = statistics.fmean(values)
            print(f"  {estimator:<24} {condition:<13} {mean:>7.4f} {min(values):>10.4f}-{max(values):<11.4f} "
                  f"{(max(values) - min(values)) / mean:>6.1%} {mean / quiet[estimator] - 1:>+8.1%}")
    if args.rounds >= 15:
        print("\nThe verdict rules replayed on these rounds (right: on the side of the budget the pooled median is on)")
        for condition in CONDITIONS:
            print(f"  {condition}")
            replay(raw[condition])


#: Budgets of the replay, as multiples of a condition's pooled median ratio.
REPLAY_OFFSETS = (0.90, 0.95, 0.98, 1.02, 1.05, 1.10)


def replay(rounds: list[tuple[list[float], list[float]]], first: int = 5, most: int = 15) -> None:
    """The fixed and the adaptive verdict rules on recorded verdicts (``(student, teacher)`` per verdict)."""
    from hwcompress.measure.compare import undecided

    ratios = [[s / t for s, t in zip(student, teacher)] for student, teacher in rounds]
    truth = statistics.median(r for verdict in ratios for r in verdict)
    print(f"    pooled median ratio {truth:.4f} over {sum(map(len, ratios))} rounds")
    for offset in REPLAY_OFFSETS:
        limit = truth * offset
        fixed = sum((statistics.median(v[:first]) <= limit) == (offset >= 1) for v in ratios) / len(ratios)
        right = left_open = used = 0
        for verdict in ratios:
            n = first
            while n + 2 <= min(most, len(verdict)) and undecided(verdict[:n], limit):
                n += 2
            used += n
            if undecided(verdict[:n], limit):
                left_open += 1
            elif (statistics.median(verdict[:n]) <= limit) == (offset >= 1):
                right += 1
        count = len(ratios)
        print(f"    budget {offset:.2f}x: fixed right {fixed:>5.0%} | adaptive right {right / count:>5.0%}, "
              f"undecided {left_open / count:>5.0%}, wrong {(count - right - left_open) / count:>5.0%}, "
              f"{used / count:.1f} rounds")


if __name__ == "__main__":
    main()
