"""Does `hwcompress profile` report what a plain ONNX Runtime timing loop sees?

For each model, the same exported ONNX file is timed by hwcompress's ONNX Runtime profiler and by a
bare loop (a session with the same thread count, `time.perf_counter` around `session.run`), in
alternating rounds within one process, so machine noise hits both alike. Prints each side's median of
round medians, and the median of the per-round ratios (each round's two sides ran back to back, so
the paired ratio cancels slow drift in machine load; target 1.00 +- 0.03).

    python bench/profile_agreement.py [--models resnet18,mobilenet_v2] [--rounds 6] [--runs 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torchvision

from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.measure.resolve import installed_profiler
from hwcompress.model.export import export_onnx


def plain_loop(path: Path, shape: tuple[int, ...], runs: int, warmup: int, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,resnet50")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    profiler = installed_profiler("onnxruntime")
    if profiler is None:
        raise SystemExit("profile_agreement: the onnxruntime profiler is not installed (pip install hwcompress-profiler-onnxruntime)")
    settings = ProfileSettings(runs=args.runs, warmup=args.warmup, threads=args.threads, per_layer=False)
    print(f"threads={args.threads} rounds={args.rounds} runs/round={args.runs} ort={ort.__version__}")
    print(f"{'model':<14}{'hwcompress ms':>15}{'plain ORT ms':>14}{'paired ratio':>14}{'min..max':>14}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            shape = (1, 3, 224, 224)
            path = Path(folder) / f"{name}.onnx"
            export_onnx(torchvision.models.get_model(name).eval(), shape, path, verify=False)
            ours, plain = [], []
            for round_index in range(args.rounds):
                # Alternate which side goes first so drift and warm caches favour neither.
                order = ("ours", "plain") if round_index % 2 == 0 else ("plain", "ours")
                for side in order:
                    if side == "ours":
                        ours.append(profiler.measure(ModelArtifact(path, shape), settings).latency.median)
                    else:
                        plain.append(plain_loop(path, shape, args.runs, args.warmup, args.threads))
            a, b = statistics.median(ours), statistics.median(plain)
            ratios = [x / y for x, y in zip(ours, plain)]
            spread = f"{min(ratios):.3f}..{max(ratios):.3f}"
            print(f"{name:<14}{a:>15.3f}{b:>14.3f}{statistics.median(ratios):>14.3f}{spread:>14}")


if __name__ == "__main__":
    main()
