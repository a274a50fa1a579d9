"""Does a search's verdict stay true when another process loads the machine after the search measured its teacher?

Runs the same search several times with ``--reference teacher`` and ``--reference matched`` alternately (a
trained resnet18 at 64 px on the embedded digits by default: a 2.4 ms teacher that streams 45 MB of
weights). Each search runs on the first core; once its cost model is anchored (the teacher and the
size-matched reference measured quietly), a memory-streaming process starts and runs to the end of the
search (episodes, repair, grow step, fine-tuning, verdict). ``--hog-core same`` (the default) puts it on
the searches' core, which the two then take in turns: that is what every run before 2026-11-28 did (meant
for the second core, the child inherited this script's pinning and could not move). ``other`` puts it on
the second core, where on a 2-vCPU EPYC such a process moved resnet18's latency by 3%
(``bench/busy_machine.py``). Then, with the hog off, the
student file is timed on its own in 15 sessions: its quiet latency. Per search it prints the verdict, the
quiet latency and their ratio; per mode the mean and the range of that ratio. A verdict that keeps to the
quiet latency under load is what the search promised the user.

    python bench/search_under_load.py [--runs 2] [--latency-ratio 0.3] [--teacher TEACHER.pt --input-shape 1,3,64,64] [--quiet-only]

``--quiet-only`` leaves it off: the two modes on a quiet machine, where they should agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict_stability import Load  # noqa: E402 - the same memory-streaming process

MODES = ("teacher", "matched")


def search(out: Path, mode: str, teacher_args: list[str], ratio: float, episodes: int, load: Load | None) -> dict:
    command = ["taskset", "-c", "0", sys.executable, "-m", "hwcompress", "search", *teacher_args, "--latency-ratio", str(ratio),
               "--episodes", str(episodes), "--finetune-epochs", "0.3", "--no-plots", "--reference", mode, "-o", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "400"})
    hog_at = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "cost model anchored" in line and hog_at is None and load is not None:
            load.on()
            hog_at = time.perf_counter() - started
    process.wait()
    if load is not None:
        load.off()
    (out.parent / f"{out.name}.log").write_text("".join(lines))
    if process.returncode != 0:
        raise SystemExit(f"the search failed ({process.returncode}); its log: {out.parent / (out.name + '.log')}")
    doc = json.loads((out / "result.json").read_text())
    return {"doc": doc, "hog_at_s": hog_at, "seconds": time.perf_counter() - started}


def quiet_latency(path: Path, rounds: int = 15) -> float:
    from hwcompress.devices import resolve_device
    from hwcompress.measure.compare import measure_interleaved
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, resolve_timing
    from hwcompress.model.loading import load_model

    student = load_model(str(path))  # the file's own input shape
    descriptor = resolve_device("cpu")
    timing = resolve_timing(descriptor)
    settings = make_settings(descriptor, per_layer=False)
    runs = measure_interleaved(timing.profiler, [ModelArtifact(student.onnx_path, student.input_shape, None, "student")],
                               settings, rounds)[0]
    return statistics.median(m.latency.median for m in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="searches per mode")
    parser.add_argument("--latency-ratio", type=float, default=0.3)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--teacher", help="a teacher.pt from search --train-teacher (default: resnet18 trained here, 2 epochs)")
    parser.add_argument("--input-shape", default="1,3,64,64")
    parser.add_argument("--keep", help="keep the searches' folders here")
    parser.add_argument("--quiet-only", action="store_true", help="no hog: both modes on a quiet machine")
    parser.add_argument("--hog-core", choices=("same", "other"), default="same",
                        help="the load on the searches' core (time-sharing; every run before 2026-11-28) or the other one")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hwcompress-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher) if args.teacher else folder / "train" / "teacher.pt"
    if not teacher.is_file():
        from hwcompress.model import scratch
        from hwcompress.model.data import digits_splits

        size = int(args.input_shape.split(",")[-1])
        scratch.trained_teacher("resnet18", digits_splits(size=size), 2, 0, teacher.parent, print)  # writes teacher.pt
    teacher_args = ["-m", str(teacher), "--data", "digits", "--input-shape", args.input_shape]
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the quiet timing on the searches' core
    load = None if args.quiet_only else Load(0 if args.hog_core == "same" else 1)
    rows = []
    for run in range(args.runs):
        for mode in MODES if run % 2 == 0 else MODES[::-1]:
            result = search(folder / f"{mode}-{run}", mode, teacher_args, args.latency_ratio, args.episodes, load)
            doc = result["doc"]
            latency = doc["student"]["latency"]
            quiet = quiet_latency(folder / f"{mode}-{run}" / "student.onnx")
            row = {"mode": mode, "run": run, "verdict_ms": latency["median"], "quiet_ms": quiet,
                   "verdict_over_quiet": latency["median"] / quiet, "reference": latency.get("reference"),
                   "reference_slowdown": latency["reference_now_ms"] / latency["reference_ms"],
                   "budget_ms": doc["budget"]["latency_ms"], "budget_met": doc["budget_met"],
                   "quiet_over_budget": quiet / doc["budget"]["latency_ms"], "hog_at_s": round(result["hog_at_s"] or -1, 1),
                   "seconds": round(result["seconds"], 1)}
            rows.append(row)
            print(f"{mode:8s} run {run}: verdict {row['verdict_ms']:.3f} ms, quiet {quiet:.3f} ms (x{row['verdict_over_quiet']:.3f}); "
                  f"beside the {row['reference']}, which ran x{row['reference_slowdown']:.2f} its own latency; budget "
                  f"{row['budget_ms']:.3f} ms, met {row['budget_met']}, quiet/budget {row['quiet_over_budget']:.3f}", flush=True)
    condition = "no hog" if args.quiet_only else f"a memory-streaming process from the anchors on, on the {'searches' if args.hog_core == 'same' else 'other'} core"
    print(f"\nverdict / quiet latency of the student, {args.runs} searches per mode, {condition}:")
    for mode in MODES:
        ratios = [r["verdict_over_quiet"] for r in rows if r["mode"] == mode]
        over = [r["quiet_over_budget"] for r in rows if r["mode"] == mode]
        print(f"  --reference {mode:8s} mean x{statistics.fmean(ratios):.3f}, range x{min(ratios):.3f}-x{max(ratios):.3f}; "
              f"quiet latency over the budget: {sum(o > 1 for o in over)} of {len(over)} students")
    (folder / "search_under_load.json").write_text(json.dumps(rows, indent=1))
    print(f"\nrows: {folder / 'search_under_load.json'}")


if __name__ == "__main__":
    main()
