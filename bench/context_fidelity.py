"""The LUT or a fit in context: which latency cost model predicts a network's pruned students?

For one teacher on this device (ONNX Runtime, one thread), this script

1. builds the search context as ``hwcompress search`` does (the teacher measured, the LUT recorded on
   first use and cached), without fitting anything;
2. prunes ``--students`` students: the teacher, the smallest allowed student, uniform students at a
   third and two thirds of the way, and the rest with a random width per group (what the search's
   random episodes produce), each as the search would deploy it (the Q/DQ model with ``--quantize int8``);
3. profiles every student layer by layer ``--passes`` times, in whole passes over the students, keeping
   each one's fastest profile (a slow spell of the machine spoils one pass, not all);
4. measures every student whole, paired with the teacher in ``--rounds`` interleaved rounds (the search's
   own measurement);
5. fits the cost model in context (:func:`hwcompress.search.context.fit_context`) on the first N
   students for each N in ``--fit``, exactly the ones a search with ``--context-students N`` profiles, and
   predicts the students after the largest N (held out) with each fit and with the LUT, each anchored as
   the search anchors: on the teacher and the smallest student, and with a third anchor at either
   uniform student;
6. prints, per predictor and anchoring, the mean absolute error, the mean signed error, the share
   within +-10% and Kendall tau on the held-out students: against the paired measurement (the search's),
   and against the fastest of each student's profile-session medians (robust to the machine's slow spells,
   which can catch one paired measurement of an anchor and tilt every anchored line).

    python bench/context_fidelity.py --model mobilenet_v2 --input-size 64 --quantize int8
    python bench/context_fidelity.py --model mobilenet_v2 --input-size 64 --quantize mixed --students 30 --fit 6
    python bench/context_fidelity.py                      # the embedded ResNet-56, float

With ``--quantize mixed`` it prepares a mixed search exactly as ``hwcompress search`` does (the fit in
context on the largest ``--fit``, anchored per precision) and prices and measures held-out students, a
third each with a random precision per group, all in int8 and all in float; per kind it prints the
mean error, the share within +-10% and Kendall tau, and how each student's profile compares with the
fit's layers and with the rest (other nodes and the changes of precision).

Both predictors are scored on the same measurements of the same students, so the machine's noise is
the same for both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hwcompress.budget import Budget
from hwcompress.lut.table import LatencyTable
from hwcompress.search.anchors import Anchor, AnchoredLatency
from hwcompress.search.config import SearchConfig
from hwcompress.search.context import build_students, context_policies, fit_context, fit_summary, profile_student, work
from hwcompress.search.prepare import PYTHON_OBJECT, prepare
from hwcompress.search.scoring import torch_threads

sys.path.insert(0, str(Path(__file__).parent))
from lut_fidelity import kendall_tau  # noqa: E402
from search_quality import bench_teacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=36, help="students pruned, profiled and measured")
    parser.add_argument("--fit", default="6,8", help="fit the cost model on the first N students, for each N given (the students "
                        "after the largest N are held out); the search profiles 6 by default")
    parser.add_argument("--passes", type=int, default=3, help="profiles per student, in whole passes (the fastest is kept)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds of each whole-model measurement")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--quantize", choices=("int8", "mixed"), default=None,
                        help="int8 students (Q/DQ models); mixed: the search's own fit and anchors (--context-students the "
                        "largest --fit) scored on held-out students with a random precision per group, beside all-int8 and "
                        "all-float ones, with each student's profile split into layers, the rest and the changes of precision")
    parser.add_argument("--model", default=None, help="a torchvision architecture trained here on digits (default: the embedded ResNet-56)")
    parser.add_argument("--input-size", type=int, default=64, help="--model: the digits' size in px")
    parser.add_argument("--train-teacher", type=int, default=1, help="--model: the teacher's training epochs (latency only: 1 is enough)")
    parser.add_argument("--out", default="bench-out", help="--model: where the trained teacher is kept")
    parser.add_argument("--pickle", default=None, help="also keep every profile and measurement in this file (for analysis)")
    args = parser.parse_args()
    fits = [int(n) for n in args.fit.split(",")]
    if not 4 <= min(fits) <= max(fits) < args.students:
        parser.error("--fit must be at least 4 (the teacher, the smallest and the two uniform students) and below --students")

    if args.quantize == "mixed":
        return mixed_main(args, max(fits))
    with torch_threads(1):
        started = time.perf_counter()
        teacher, splits, _ = bench_teacher(args, Path(args.out))
        objects = {"model": PYTHON_OBJECT, "data": PYTHON_OBJECT} if teacher is not None else {}
        config = SearchConfig(budget=Budget.latency_ratio(0.9), anchors=2, seed=0, quantize=args.quantize,
                              context_students=0, **objects)
        prepared = prepare(config, teacher=teacher, splits=splits, log=lambda m: print(f"  {m}"), search=False)
        cost_model, measure = prepared.cost_model, prepared.measure
        table = LatencyTable.load(prepared.lut_path)
        policies = context_policies(cost_model, args.students, args.seed)
        with tempfile.TemporaryDirectory(prefix="hwcompress-bench-") as folder:
            files = build_students(prepared, [(keep, None) for keep in policies], folder)
            profiles: list[list] = [[] for _ in files]
            for _ in range(args.passes):
                for index, (path, module, rows, name) in enumerate(files):
                    profiles[index].append(profile_student(measure.profiler, measure.settings, path, prepared.input_shape,
                                                           module, rows, name))
            whole = [measure(module, name, rounds=args.rounds, onnx_path=path)["median"] for path, module, rows, name in files]
        if args.pickle:
            import pickle

            Path(args.pickle).write_bytes(pickle.dumps({"profiles": profiles, "whole": whole, "policies": policies}))
        best = [min(p, key=lambda q: q.total_ms) for p in profiles]
        spread = [max(q.total_ms for q in p) / min(q.total_ms for q in p) for p in profiles]
        raw = {"LUT": [float(table.predict(list(rows)).total_ms) for _, _, rows, _ in files]}
        for count in fits:
            fitted = fit_context(best[:count])
            raw[f"fit in context on {count}"] = [fitted(rows) for _, _, rows, _ in files]

    held = list(range(max(fits), len(files)))
    print(f"\nteacher {prepared.teacher_measured['median']:.3f} ms (float); {len(files)} students measured "
          f"{min(whole):.3f}-{max(whole):.3f} ms; profile passes of one student differed by x{statistics.median(spread):.2f} "
          f"(median), x{max(spread):.2f} (most)\n")
    truths = {"paired with a reference (the search's measurement)": whole,
              "fastest of the profile passes (the profiler session's median)": [min(q.whole_ms for q in p) for p in profiles]}
    anchorings = {"teacher, smallest": [0, 1], "+ uniform at 1/3": [0, 1, 2], "+ uniform at 2/3": [0, 1, 3]}
    for truth_label, truth in truths.items():
        print(f"measured: {truth_label}\n")
        print("| predictor | anchored on | mean abs. error | mean error | within +-10% | Kendall tau |")
        print("|---|---|---|---|---|---|")
        for label, indices in anchorings.items():
            for name, values in raw.items():
                curve = AnchoredLatency(lambda x: x, [Anchor(str(i), values[i], truth[i]) for i in indices])
                predicted = [curve.map(values[i]) for i in held]
                errors = [(p - truth[i]) / truth[i] for p, i in zip(predicted, held)]
                print(f"| {name} | {label} | {100 * statistics.mean(abs(e) for e in errors):.1f}% | "
                      f"{100 * statistics.mean(errors):+.1f}% | {100 * sum(abs(e) <= 0.1 for e in errors) / len(errors):.0f}% | "
                      f"{kendall_tau(predicted, [truth[i] for i in held]):.3f} |")
        print()
    print(f"\n({len(held)} held-out students; {time.perf_counter() - started:.0f} s)")


def mixed_main(args: argparse.Namespace, count: int) -> None:
    """``--quantize mixed``: prepare a mixed search as ``hwcompress search`` does (the fit in context on
    ``count`` widths, anchored per precision), then price and measure held-out students in three kinds."""
    from hwcompress.lut.predict import transition_elements
    from hwcompress.search.precision import ALL_FLOAT, FLOAT, LOW

    with torch_threads(1):
        started = time.perf_counter()
        teacher, splits, _ = bench_teacher(args, Path(args.out))
        objects = {"model": PYTHON_OBJECT, "data": PYTHON_OBJECT} if teacher is not None else {}
        config = SearchConfig(budget=Budget.latency_ratio(0.9), anchors=2, seed=0, quantize="mixed",
                              context_students=count, **objects)
        prepared = prepare(config, teacher=teacher, splits=splits, log=lambda m: print(f"  {m}"), search=False)
        cost_model, measure, fitted = prepared.cost_model, prepared.measure, prepared.context
        choosable = prepared.quantized.plan.choosable
        rng = np.random.default_rng(args.seed)
        widths = context_policies(cost_model, args.students + 4, args.seed)[4:]
        kinds = ["mixed", "int8", "fp32"]
        plans = []
        for index, keep in enumerate(widths):
            kind = kinds[index % 3]
            precision = ({g: (LOW if rng.random() < 0.5 else FLOAT) for g in choosable} if kind == "mixed"
                         else {} if kind == "int8" else dict(ALL_FLOAT))
            plans.append((kind, keep, precision))
        rows_out = []
        with tempfile.TemporaryDirectory(prefix="hwcompress-bench-") as folder:
            files = build_students(prepared, [(keep, precision) for _, keep, precision in plans], folder)
            for (kind, keep, precision), (path, module, rows, name) in zip(plans, files):
                profiled = min((profile_student(measure.profiler, measure.settings, path, prepared.input_shape, module, rows, name)
                                for _ in range(args.passes)), key=lambda q: q.total_ms)
                whole = measure.paired(module, name, rounds=args.rounds, onnx_path=path)["median"]
                lines = [(fitted.line(r), r) for r in rows]
                layers_fit = sum(line[0] + line[1] * work(r) for line, r in lines if line)
                elements = transition_elements(rows, {r.name: getattr(r, "precision", None) for r in rows})
                rows_out.append({"kind": kind, "measured": whole, "predicted": cost_model.at_precision(precision).cost(keep),
                                 "profile_ms": profiled.total_ms, "profile_whole_ms": profiled.whole_ms,
                                 "layers_profiled": sum(profiled.layer_ms.values()), "layers_fit": layers_fit,
                                 "other_profiled": profiled.other_ms, "fit_total": fitted(rows),
                                 "transition_elements": elements})
        if args.pickle:
            import pickle

            Path(args.pickle).write_bytes(pickle.dumps({"rows": rows_out, "context": fitted.to_dict(), "anchors": prepared.anchors}))

    print(f"\n{fit_summary(fitted)}; anchors: " + ", ".join(f"{a['name']} {a['measured_ms']:.3f}" for a in prepared.anchors))
    print("\n| students | n | mean error (search's prediction vs paired) | within +-10% | tau | profiled/fit: layers | "
          "profiled/fit: rest incl. changes | profile whole/paired |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        chosen = [r for r in rows_out if r["kind"] == kind]
        if not chosen:
            continue
        errors = [(r["predicted"] - r["measured"]) / r["measured"] for r in chosen]
        rest = [(r["profile_ms"] - r["layers_profiled"]) / max(r["fit_total"] - r["layers_fit"], 1e-9) for r in chosen]
        print(f"| {kind} | {len(chosen)} | {100 * statistics.mean(errors):+.1f}% (abs {100 * statistics.mean(map(abs, errors)):.1f}%) | "
              f"{100 * sum(abs(e) <= 0.1 for e in errors) / len(errors):.0f}% | "
              f"{kendall_tau([r['predicted'] for r in chosen], [r['measured'] for r in chosen]):.3f} | "
              f"x{statistics.median(r['layers_profiled'] / r['layers_fit'] for r in chosen):.2f} | x{statistics.median(rest):.2f} | "
              f"x{statistics.median(r['profile_whole_ms'] / r['measured'] for r in chosen):.2f} |")
    print(f"\n({len(rows_out)} held-out students; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
