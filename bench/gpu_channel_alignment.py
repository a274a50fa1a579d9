"""Does a GPU convolution cost more at a channel count that is not a multiple of 8? Run on a GPU.

The LUT records a GPU's layers at a grid of channel counts (multiples of the device's channel multiple)
and scales a count between grid points by its work. On the H100, torch-pruned regnet_x_400mf variants
with ``round_to=None`` came out 13% too fast on average (docs/gpu.md): if cuDNN runs a misaligned count
at the cost of the next aligned one (tensor cores take fp16 channels in eights), scaling by work prices
it too low.

For each layer shape and precision this times, with CUDA graph replays and CUDA events (the loop of
``bench/gpu_agreement.py``), one convolution at every channel count in a range, in rotating order over
``--rounds`` rounds, and prints per count the median time, its ratio to the next multiple of 8 and to
the work-scaled price of that multiple (``time(ceil8) * work(c) / work(ceil8)``, what the LUT would
predict from a grid point above it). A ratio to the work-scaled price near 1.00 means scaling by work
is right; near ``work(ceil8) / work(c)`` means the count costs as much as the aligned one.

    python bench/gpu_channel_alignment.py [--channels 48:72] [--rounds 3] [--json out.json]

Exits with status 2 and a one-line message when no NVIDIA GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_agreement import graph_loop  # noqa: E402  (the same plain loop the profilers are checked against)

#: (name, kernel, stride, groups width or 0 for dense, depthwise, spatial size)
SHAPES = (
    ("conv3x3 28px", 3, 1, 0, False, 28),
    ("conv1x1 14px", 1, 1, 0, False, 14),
    ("depthwise3x3 28px", 3, 1, 0, True, 28),
    ("conv3x3 56px", 3, 1, 0, False, 56),
)


def make_layer(torch, channels: int, kernel: int, stride: int, width: int, depthwise: bool):
    if depthwise:
        groups = channels
    elif width:
        if channels % width:
            return None
        groups = channels // width
    else:
        groups = 1
    return torch.nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=groups, bias=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default="48:72", help="inclusive range of channel counts, LO:HI")
    parser.add_argument("--precisions", default="fp16,fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no NVIDIA GPU is visible to PyTorch: run this on a machine with one", file=sys.stderr)
        return 2
    lo, hi = (int(x) for x in args.channels.split(":"))
    hi_aligned = int(math.ceil(hi / 8) * 8)
    counts = list(range(lo, hi_aligned + 1))
    torch.backends.cudnn.benchmark = True
    results: dict[str, dict[str, dict[int, list[float]]]] = {}
    for precision in args.precisions.split(","):
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[precision]
        for name, kernel, stride, width, depthwise, size in SHAPES:
            layers = {}
            for c in counts:
                layer = make_layer(torch, c, kernel, stride, width, depthwise)
                if layer is not None:
                    layer = layer.to("cuda", dtype).eval()
                    x = torch.randn(1, c, size, size, device="cuda", dtype=dtype)
                    layers[c] = (layer, x)
            times: dict[int, list[float]] = {c: [] for c in layers}
            order = list(layers)
            for r in range(args.rounds):
                shift = (r * 7) % len(order)
                for c in order[shift:] + order[:shift]:
                    layer, x = layers[c]
                    times[c].append(graph_loop(lambda layer=layer, x=x: layer(x), args.runs, 20))
            results.setdefault(precision, {})[name] = times
            print(f"\n{precision} {name}: median ms, / next multiple of 8, / its work-scaled price")
            for c in layers:
                med = statistics.median(times[c])
                up = int(math.ceil(c / 8) * 8)
                if up not in times:
                    continue
                aligned = statistics.median(times[up])
                work = (c * c) / (up * up) if not depthwise else c / up
                if width:
                    work = c / up
                print(f"  {c:4d}  {med:.4f}  x{med / aligned:.3f}  x{med / (aligned * work):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
