"""Two anchors or three: how close does the cost model put the students a search produces to the budget?

On the embedded default (ResNet-56 on digits, this CPU, ONNX Runtime, one thread) this script

1. builds the search context once, as ``hwcompress search`` does: the teacher measured, the LUT
   (recorded here on first use, then cached), the smallest student measured: the two-anchor curve;
2. for each budget ratio, measures the uniformly pruned student the two-anchor curve puts at the
   search budget (the budget less the margin): with it, the three-anchor curve for that budget;
3. under each curve, walks ``--students`` episodes with AMC's random-warm-up policy through the clamp
   (what the first quarter of every AMC search does, and what every random-agent episode does), so
   each student is predicted right at the search budget by the curve it was searched under;
4. measures every student on the device, interleaved with the teacher (the search's paired ratio),
   and prints, per budget and curve: the mean and worst measured/budget, how many students the
   search's acceptance rule (measured <= budget x (1 - margin/2)) would take without a repair, and the
   mean absolute prediction error of both curves on the same students.

Both curves are built from the same measurements of one run and their students are measured
alternately in one loop, so a machine that slows down mid-run slows both.

    python bench/anchor_fidelity.py [--ratios 0.5,0.6,0.7] [--students 8] [--seed 0] [--runs 50]

``--quantize int8`` does the same for int8 students (the curves anchored on int8 students, every student
measured as its Q/DQ model); ``--model resnet18 --input-size 64`` uses that architecture trained on
digits (as ``bench/search_quality.py --model`` does, kept under ``--out``) instead of the embedded default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from hwcompress.budget import Budget
from hwcompress.search.amc.agents import RandomAgent
from hwcompress.search.amc.walker import EpisodeWalker
from hwcompress.search.anchors import Anchor, AnchoredLatency
from hwcompress.search.config import SearchConfig
from hwcompress.search.prepare import PYTHON_OBJECT, prepare
from hwcompress.search.scoring import torch_threads
from hwcompress.slim.pruning import prune_channels

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import bench_teacher  # noqa: E402  (the same trained teacher as the quantized comparison)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", default="0.5,0.6,0.7", help="budget ratios to the teacher's measured latency")
    parser.add_argument("--students", type=int, default=8, help="students searched per budget and curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=None, help="timed iterations per measurement (device default)")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="int8 students (the int8-anchored curves)")
    parser.add_argument("--model", default=None, help="a torchvision architecture trained here on digits (default: the embedded ResNet-56)")
    parser.add_argument("--input-size", type=int, default=64, help="--model: the digits' size in px")
    parser.add_argument("--train-teacher", type=int, default=2, help="--model: the teacher's training epochs")
    parser.add_argument("--out", default="bench-out", help="--model: where the trained teacher is kept")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]

    with torch_threads(1):
        started = time.perf_counter()
        teacher, splits, _ = bench_teacher(args, Path(args.out))
        objects = {"model": PYTHON_OBJECT, "data": PYTHON_OBJECT} if teacher is not None else {}
        config = SearchConfig(budget=Budget.latency_ratio(ratios[0]), anchors=2, runs=args.runs, seed=args.seed,
                              quantize=args.quantize, **objects)
        prepared = prepare(config, teacher=teacher, splits=splits, log=lambda m: print(f"  {m}"))
        cost_model = prepared.cost_model
        curve2 = cost_model.latency_of
        raw = curve2.raw
        teacher_ms = prepared.teacher_measured["median"]
        margin = prepared.budget.margin
        print(f"teacher {teacher_ms:.3f} ms measured; anchors: {prepared.anchors}")

        def measure(keep: dict[str, int], name: str) -> float:
            return prepared.measure(prune_channels(prepared.teacher, prepared.example, keep), name)["median"]

        rows = []
        for ratio in ratios:
            budget_ms = ratio * teacher_ms  # every ratio against the same teacher measurement
            target = budget_ms * (1 - margin)
            cost_model.set_latency(curve2)
            uniform = cost_model.scaled_policy(cost_model.full_policy(), target)
            cost_model.set_latency(raw)
            middle = Anchor("uniform", cost_model.cost(uniform), measure(uniform, "uniform"))
            curve3 = AnchoredLatency(raw, [*curve2.anchors, middle])
            print(f"budget {ratio:g}x = {budget_ms:.3f} ms: uniform anchor LUT {middle.predicted_ms:.3f} ms, "
                  f"measured {middle.measured_ms:.3f} ms (two anchors predicted {curve2.map(middle.predicted_ms):.3f})")
            students: dict[str, list[dict[str, int]]] = {}
            for label, curve in (("2 anchors", curve2), ("3 anchors", curve3)):
                cost_model.set_latency(curve)
                walker = EpisodeWalker(cost_model, prepared.layers, target)
                policy = RandomAgent()
                policy.rng = np.random.default_rng(args.seed)
                students[label] = [policy.propose(walker, i).keep for i in range(args.students)]
            measured: dict[str, list[float]] = {"2 anchors": [], "3 anchors": []}
            for index in range(args.students):  # alternate the two curves' students
                for label in measured:
                    measured[label].append(measure(students[label][index], f"{label[0]}-{index}"))
            accept = budget_ms * (1 - margin / 2)
            for label in measured:
                ms = measured[label]
                cost_model.set_latency(raw)
                lut = [cost_model.cost(k) for k in students[label]]
                error = {name: statistics.mean(abs(c.map(p) - m) / m for p, m in zip(lut, ms))
                         for name, c in (("2", curve2), ("3", curve3))}
                rows.append({
                    "budget": f"{ratio:g}x = {budget_ms:.3f}",
                    "searched under": label,
                    "mean measured/budget": statistics.mean(m / budget_ms for m in ms),
                    "worst measured/budget": max(m / budget_ms for m in ms),
                    "accepted without repair": f"{sum(m <= accept for m in ms)}/{len(ms)}",
                    "error of 2-anchor curve": error["2"],
                    "error of 3-anchor curve": error["3"],
                })
        cost_model.set_latency(curve2)

    print()
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{v:.3f}" if "budget" in k and isinstance(v, float) else f"{100 * v:.1f}%" if isinstance(v, float) else str(v)
                 for k, v in row.items()]
        print("| " + " | ".join(cells) + " |")
    for ratio in ratios:
        pair = [r for r in rows if r["budget"].startswith(f"{ratio:g}x")]
        print(f"{ratio:g}x: mean measured/budget, 3 anchors / 2 anchors = "
              f"{pair[1]['mean measured/budget'] / pair[0]['mean measured/budget']:.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
