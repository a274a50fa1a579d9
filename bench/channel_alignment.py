"""Students in whole channel blocks or in the device's channel multiple: which is faster, and which does
the cost model price right?

ONNX Runtime's CPU convolutions work in NCHWc blocks (16 channels with AVX-512, 8 with AVX2). A
convolution whose input channels are at least one block and not a whole number of blocks runs off that
path, in plain NCHW, with layout conversions around it. The LUT records the block as its
``channel_quantum`` and prices a count between blocks as the next block; the cost model now keeps
policies in whole blocks from one block up (:func:`hwcompress.slim.pruning.round_channels`).

On the embedded default (ResNet-56 on digits, this CPU, one thread) this script builds the search's
context once (teacher measured, LUT, anchored cost model), then for each preserve ratio builds the
uniformly pruned student twice: rounded to the device's multiple only (``multiple``), and in whole
blocks from one block up (``blocks``). It measures them alternately, each paired with the teacher as
the search does, and prints per student: MACs, the convolutions ONNX Runtime leaves off its NCHWc path
(counted in the optimised graph), the cost model's prediction, the measured latency, and the error.

    python bench/channel_alignment.py [--ratios 0.3,0.4,0.5,0.6,0.7,0.8] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hwcompress.budget import Budget
from hwcompress.model.analysis import analyze
from hwcompress.model.export import export_onnx
from hwcompress.search.config import SearchConfig
from hwcompress.search.prepare import prepare
from hwcompress.search.scoring import build_student, torch_threads
from hwcompress.slim.pruning import round_channels


def off_path_convolutions(module, input_shape) -> tuple[int, int]:
    """(convolutions left in NCHW, all convolutions) in ONNX Runtime's optimised graph of ``module``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "m.onnx"
        export_onnx(module, input_shape, source)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "opt.onnx")
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        nodes = [(n.op_type, n.domain) for n in onnx.load(options.optimized_model_filepath).graph.node]
    blocked = sum(op == "Conv" and domain == "com.microsoft.nchwc" for op, domain in nodes)
    plain = sum(op in ("Conv", "FusedConv") and domain != "com.microsoft.nchwc" for op, domain in nodes)
    return plain, plain + blocked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", default="0.3,0.4,0.5,0.6,0.7,0.8", help="uniform preserve ratios")
    parser.add_argument("--runs", type=int, default=None, help="timed iterations per measurement (device default)")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]

    with torch_threads(1):
        started = time.perf_counter()
        prepared = prepare(SearchConfig(budget=Budget.latency_ratio(0.5), runs=args.runs), log=lambda m: print(f"  {m}"))
        cost, shape = prepared.cost_model, prepared.input_shape
        quantum = cost.quantum
        teacher_ms = prepared.teacher_measured["median"]
        teacher_macs = sum(r.macs for r in prepared.layers)
        print(f"teacher {teacher_ms:.3f} ms; device multiple {cost.multiple}, LUT channel quantum {quantum}")
        if quantum == 1:
            print("the LUT's quantum is not above the multiple here: both variants are the same students")
        rows = []
        for ratio in ratios:
            for variant, q in (("multiple", 1), ("blocks", quantum)):
                keep = {g.name: max(cost.min_channels(g) if q > 1 else g.min_channels,
                                    round_channels(g.channels, ratio, cost.multiple, q)) for g in prepared.groups}
                student = build_student(prepared.teacher, prepared.example, keep)
                macs = sum(r.macs for r in analyze(student, shape).layers)
                plain, convs = off_path_convolutions(student, shape)
                predicted = cost.cost(keep)
                measurement = prepared.measure(student, f"{variant}@{ratio}")
                measured = measurement["median"]
                rows.append((ratio, variant, macs / teacher_macs, plain, convs, predicted, measured,
                             measurement["paired_ratio"]))
                print(f"  {variant:8s} x{ratio:.2f}: MACs {macs / teacher_macs:.3f}x, off NCHWc {plain}/{convs}, "
                      f"predicted {predicted:.3f} ms, measured {measured:.3f} ms ({(predicted - measured) / measured:+.1%})")

    print(f"\n{'ratio':>5}  {'variant':8}  {'MACs':>6}  {'off-path':>8}  {'pred ms':>8}  {'meas ms':>8}  {'error':>7}  {'paired ratio':>14}")
    for ratio, variant, macs, plain, convs, predicted, measured, paired in rows:
        print(f"{ratio:5.2f}  {variant:8}  {macs:6.3f}  {plain:>3}/{convs:<4}  {predicted:8.3f}  {measured:8.3f}  "
              f"{(predicted - measured) / measured:+7.1%}  {paired:14.3f}")
    for variant in ("multiple", "blocks"):
        errors = [abs(r[5] - r[6]) / r[6] for r in rows if r[1] == variant]
        print(f"{variant}: mean |error| {statistics.mean(errors):.1%}, worst {max(errors):.1%}")
    pairs = list(zip(rows[::2], rows[1::2]))
    print("blocks/multiple at the same ratio (paired ratios to the teacher): latency "
          + ", ".join(f"{b[7] / a[7]:.2f}" for a, b in pairs) + "; MACs " + ", ".join(f"{b[2] / a[2]:.2f}" for a, b in pairs))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
