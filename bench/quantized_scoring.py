"""How should the search score an int8 student: ONNX Runtime itself, or a fake-quantized PyTorch copy?

On the embedded default (ResNet-56 teacher on digits), for the teacher and ``--students`` pruned
students (every channel group at a random preserve ratio, BatchNorm statistics re-estimated as the
search does), this script scores each student on the reward-validation split three ways and times them:

* float: the pruned PyTorch student as it is (what the search scores without ``--quantize``);
* ONNX Runtime: export, quantize statically (Q/DQ, per-channel weights, 64 calibration images) and run
  the int8 model (:mod:`hwcompress.slim.quantize`; what the search does under ``--quantize``);
* fake-quant: a PyTorch copy rounding weights and activations where the Q/DQ model does
  (:mod:`hwcompress.slim.fake_quant`).

It prints, per student, the accuracies, the seconds each path took and the share of images on which the
fake-quant copy and ONNX Runtime predict the same class; then the ranges, and Kendall's tau between the
two int8 accuracies over the students (does the stand-in rank students as the runtime does?).

    python bench/quantized_scoring.py [--students 12] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from scipy.stats import kendalltau

    from hwcompress.model import embedded
    from hwcompress.model.data import resolve_data
    from hwcompress.model.training import evaluate
    from hwcompress.search.scoring import recalibrate_batchnorm
    from hwcompress.slim.fake_quant import fake_quantized
    from hwcompress.slim.pruning import find_channel_groups, prune_channels, round_channels
    from hwcompress.slim.quantize import calibration_inputs, onnx_logits, quantize_module

    torch.set_num_threads(1)
    teacher, _ = embedded.default_teacher(progress=False)
    teacher.eval()
    splits = resolve_data(None)
    shape = (1, 3, 32, 32)
    example = torch.zeros(shape)
    groups = find_channel_groups(teacher, example)
    rng = np.random.default_rng(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="quantized-scoring-"))
    labels = np.asarray([int(splits.val[i][1]) for i in range(len(splits.val))])
    rows = []
    for index in range(args.students + 1):
        low = 1.0 if index == 0 else (0.3, 0.5, 0.7)[index % 3]
        keep = {g.name: max(g.min_channels, round_channels(g.channels, rng.uniform(low, 1.0), 8)) for g in groups}
        student = prune_channels(teacher, example, keep)
        recalibrate_batchnorm(student, splits.train, 256)
        started = time.perf_counter()
        float_accuracy = evaluate(student, splits.val)
        float_s = time.perf_counter() - started

        started = time.perf_counter()
        calibration = calibration_inputs(splits.train, args.calibration_images, shape)
        _, result = quantize_module(student, shape, folder, calibration, check=False)
        ort_logits, _ = onnx_logits(result.path, splits.val)
        ort_s = time.perf_counter() - started

        started = time.perf_counter()
        copy = fake_quantized(student, [torch.from_numpy(np.concatenate(calibration))])
        with torch.no_grad():
            images = torch.stack([splits.val[i][0] for i in range(len(splits.val))])
            fake_logits = torch.cat([copy(images[s:s + 256]) for s in range(0, len(images), 256)]).numpy()
        fake_s = time.perf_counter() - started

        ort_pred, fake_pred = ort_logits.argmax(1), fake_logits.argmax(1)
        row = {"student": "teacher" if index == 0 else f"pruned {index} (ratios {low:.1f}-1.0)",
               "float_accuracy": float_accuracy, "float_s": float_s,
               "ort_accuracy": float((ort_pred == labels).mean()), "ort_s": ort_s,
               "fake_accuracy": float((fake_pred == labels).mean()), "fake_s": fake_s,
               "agreement": float((ort_pred == fake_pred).mean())}
        rows.append(row)
        print(f"{row['student']:<28} float {100 * float_accuracy:6.2f}% ({float_s:4.2f} s)   "
              f"ONNX Runtime int8 {100 * row['ort_accuracy']:6.2f}% ({ort_s:4.2f} s)   "
              f"fake-quant {100 * row['fake_accuracy']:6.2f}% ({fake_s:4.2f} s)   top-1 agreement {100 * row['agreement']:5.1f}%",
              flush=True)

    def span(key: str, scale: float = 1.0, unit: str = "") -> str:
        values = [r[key] * scale for r in rows]
        return f"{min(values):.2f}-{max(values):.2f}{unit} (median {statistics.median(values):.2f}{unit})"

    tau = float(kendalltau([r["ort_accuracy"] for r in rows], [r["fake_accuracy"] for r in rows]).statistic)
    gap = [abs(r["ort_accuracy"] - r["fake_accuracy"]) * 100 for r in rows]
    print(f"\n{len(rows)} models, {len(labels)} validation images, one thread")
    print(f"  seconds per score: float {span('float_s')}, ONNX Runtime int8 {span('ort_s')}, fake-quant {span('fake_s')}")
    print(f"  top-1 agreement fake-quant vs ONNX Runtime: {span('agreement', 100, '%')}")
    print(f"  |accuracy difference|: max {max(gap):.2f} points, mean {statistics.fmean(gap):.2f}; "
          f"Kendall tau of the int8 accuracies over the models: {tau:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "kendall_tau": tau}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
