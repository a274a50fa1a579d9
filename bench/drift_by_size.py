"""Does this machine's drift slow a large model and a small one alike? (the drift correction's premise)

Times a torchvision architecture (random weights) and its uniformly pruned copies, as ``lut record``'s
calibration builds them, in ``--rounds`` interleaved rounds (the order reversed every other round) with
ONNX Runtime, one thread, on the thread clock (``bench/lut_fidelity.py``'s), and prints each model's
range and spread (max / min) and the correlation of the models' log times across rounds. Were the drift
one factor, every model would spread alike and the logs would correlate near 1; a large model whose
weights leave the cache swings with the other tenants' memory traffic, and a small one does not.

    python bench/drift_by_size.py                                     # efficientnet_b0 at 96 px, 25 rounds
    python bench/drift_by_size.py --model regnet_x_400mf --widths 0.5,0.3 --rounds 40
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0", help="torchvision architecture (default efficientnet_b0)")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--widths", default="0.5,0.3", help="widths of the pruned copies (default 0.5,0.3)")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per measurement (its median is kept)")
    args = parser.parse_args(argv)

    import lut_fidelity as lf
    import numpy as np
    import torch
    import torchvision

    from hwcompress.devices import resolve_device
    from hwcompress.lut.record import uniform_variants
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, measuring_profiler
    from hwcompress.model.export import export_onnx

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    shape = (1, 3, args.input_size, args.input_size)
    device = resolve_device("cpu")
    settings = make_settings(device, runs=args.runs, warmup=5, threads=1, per_layer=False)
    profiler = lf.ThreadClockProfiler(measuring_profiler(device)[0])
    base = torchvision.models.get_model(args.model, weights=None).eval()
    widths = [float(w) for w in args.widths.split(",") if w]
    models = [(1.0, base)] + uniform_variants(base, shape, widths, device.channel_multiple)
    folder = Path(tempfile.mkdtemp(prefix="drift-by-size-"))
    artifacts = {}
    for width, module in models:
        path = folder / f"w{width:.2f}.onnx"
        export_onnx(module, shape, path, verify=False)
        artifacts[f"width {width:g} ({sum(p.numel() for p in module.parameters()) / 1e6:.2f} M params)"] = ModelArtifact(path, shape, module, args.model)
    times: dict[str, list[float]] = {label: [] for label in artifacts}
    for round_ in range(args.rounds):
        order = list(artifacts) if round_ % 2 == 0 else list(reversed(artifacts))
        for label in order:
            times[label].append(profiler.measure(artifacts[label], settings).latency.median)
        print(f"round {round_ + 1}/{args.rounds}: " + "  ".join(f"{times[label][-1]:.3f}" for label in artifacts), flush=True)
    print(f"\n{args.model} at {args.input_size} px, {args.rounds} interleaved rounds of {args.runs} runs (ms):")
    for label, series in times.items():
        print(f"  {label:28s} min {min(series):.3f}  median {statistics.median(series):.3f}  max {max(series):.3f}  "
              f"spread {max(series) / min(series):.2f}x")
    print("correlation of log times across rounds:")
    for a, b in itertools.combinations(times, 2):
        print(f"  {a} / {b}: {np.corrcoef(np.log(times[a]), np.log(times[b]))[0, 1]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
