"""Do the GPU profilers agree with plain CUDA-event loops? Interleaved comparison, run on a GPU.

For each model this times, in rotating order within each round:

* ``plain-eager``: the simplest honest loop (the model on the GPU, a start and an end CUDA event around
  each forward, synchronize, median), written here independently of the plugin's timing code;
* ``plain-graph``: the same loop around replays of one forward captured in a CUDA graph;
* ``cuda``: the plugin's ``cuda`` profiler as a user gets it (CUDA-graph replay by default, rounds until
  the medians settle);
* ``cuda-eager``: the plugin's ``cuda`` profiler with ``cuda_graph=false``;
* where TensorRT works, ``plain-tensorrt``: the simple loop around the TensorRT engine the profiler
  uses, and ``tensorrt``: the plugin's ``tensorrt`` profiler.

It prints each contender's median and the ratio to its plain baseline measured in the same round
(``cuda / plain-graph``, ``cuda-eager / plain-eager``, ``tensorrt / plain-tensorrt``): agreement means
ratios near 1.00 with a small spread across rounds. ``plain-eager / plain-graph`` is printed too: what
eager timing adds to a batch-1 model on this GPU (Python's launch overhead). Interleaving and per-round
ratios follow research/performance.md section 5: a GPU drifts (clocks, temperature) between rounds, and
a ratio within a round cancels most of the drift.

Usage:
    python bench/gpu_agreement.py                                  # resnet18, 1x3x224x224, fp32, 5 rounds
    python bench/gpu_agreement.py --models resnet18,mobilenet_v2 --precision fp16 --rounds 7 --json out.json

Exits with status 2 and a one-line message when no NVIDIA GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


def plain_loop(step: Callable[[], Any], runs: int, warmup: int, stream: Any = None) -> float:
    """Median CUDA-event time of ``step``: the reference the profilers must match.

    ``stream`` must be the stream ``step`` enqueues on (a fresh one when ``step`` uses the current
    stream): events bracket work only on their own stream.
    """
    import torch

    stream = stream or torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(warmup):
            step()
        stream.synchronize()
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_loop(forward: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median CUDA-event time of replays of ``forward`` captured once in a CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(max(3, warmup)):  # lazy initialisation must not happen inside the capture
            forward()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            forward()
        stream.synchronize()
        return plain_loop(graph.replay, runs, warmup, stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18", help="comma-separated --model strings as hwcompress profile takes them")
    parser.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224 (default: each model's)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", help="also write every round's medians and the ratios here")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_agreement: no NVIDIA GPU visible (torch.cuda.is_available() is False); run it on a machine with one", file=sys.stderr)
        return 2
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "precision": args.precision,
               "rounds": args.rounds, "runs": args.runs, "models": {}}
    for model in [m for m in args.models.split(",") if m]:
        results["models"][model] = compare_one(model, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def compare_one(model_spec: str, args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import hwcompress_profiler_tensorrt as plugin
    import torch

    from hwcompress.measure.contract import ModelArtifact, ProfileSettings
    from hwcompress.model.export import export_onnx
    from hwcompress.model.loading import load_model, parse_input_shape

    loaded = load_model(model_spec, input_shape=parse_input_shape(args.input_shape))
    shape = tuple(loaded.input_shape)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    gpu_module = copy.deepcopy(loaded.module).eval().to(device="cuda", dtype=dtype)
    example = torch.randn(shape, device="cuda", dtype=dtype)
    settings = ProfileSettings(runs=args.runs, warmup=args.warmup, precision=args.precision, per_layer=False)
    eager = ProfileSettings(runs=args.runs, warmup=args.warmup, precision=args.precision, per_layer=False,
                            options={"cuda_graph": False})

    folder = Path(tempfile.mkdtemp(prefix="gpu-agreement-"))
    onnx_path = Path(export_onnx(loaded.module, shape, folder / "model.onnx", verify=False).path)
    artifact = ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=loaded.module, name=loaded.name)
    profiler = plugin.CudaProfiler()
    facts: dict[str, Any] = {}

    def cuda(which: ProfileSettings) -> float:
        measurement = profiler.measure(artifact, which)
        facts.update({k: measurement.facts.get(k) for k in ("cuda_graph", "rounds", "settled", "round_medians_ms")})
        return measurement.latency.median

    contenders: dict[str, Callable[[], float]] = {
        "plain-eager": lambda: plain_loop(lambda: gpu_module(example), args.runs, args.warmup),
        "plain-graph": lambda: graph_loop(lambda: gpu_module(example), args.runs, args.warmup),
        "cuda": lambda: cuda(settings),
        "cuda-eager": lambda: plugin.CudaProfiler().measure(artifact, eager).latency.median,
    }
    trt_ok, trt_reason = plugin.TensorRTProfiler().available()
    runner = None
    if trt_ok:
        from hwcompress_profiler_tensorrt.engine import (
            EngineRunner,
            engine_for,
            has_explicit_quantization,
            import_tensorrt,
            make_logger,
        )
        from hwcompress_profiler_tensorrt.options import parse_options

        trt = import_tensorrt()
        logger = make_logger(trt)
        options = parse_options(settings)
        major, minor = torch.cuda.get_device_capability()
        engine_bytes, _, _, _ = engine_for(
            trt, logger, onnx_path, shape, options, explicit_quantization=has_explicit_quantization(onnx_path),
            gpu_name=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}",
        )
        stream = torch.cuda.Stream()
        runner = EngineRunner(trt, logger, engine_bytes, shape, stream)
        contenders["plain-tensorrt"] = lambda: plain_loop(runner.launch, args.runs, args.warmup, stream)
        contenders["tensorrt"] = lambda: plugin.TensorRTProfiler().measure(artifact, settings).latency.median
    else:
        print(f"(tensorrt skipped: {trt_reason})")

    names = list(contenders)
    medians: dict[str, list[float]] = {name: [] for name in names}
    print(f"{loaded.name} {'x'.join(map(str, shape))} {args.precision} on {torch.cuda.get_device_name()}: "
          f"{args.rounds} rounds x {args.runs} runs, order rotated each round")
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            medians[name].append(contenders[name]())
        print(f"  round {round_index + 1}: " + ", ".join(f"{n} {medians[n][-1]:.4f} ms" for n in names), flush=True)

    ratios: dict[str, dict[str, float]] = {}

    def ratio_line(label: str, top: str, bottom: str) -> str:
        per_round = [a / b for a, b in zip(medians[top], medians[bottom])]
        ratios[f"{top}/{bottom}"] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}
        return (f"{label:<40} median {statistics.median(per_round):.3f}  "
                f"range {min(per_round):.3f}-{max(per_round):.3f}  (per-round ratios)")

    print("medians of round medians: " + ", ".join(f"{n} {statistics.median(medians[n]):.4f} ms" for n in names))
    print(ratio_line("cuda / plain-graph (agreement)", "cuda", "plain-graph"))
    print(ratio_line("cuda-eager / plain-eager (agreement)", "cuda-eager", "plain-eager"))
    print(ratio_line("plain-eager / plain-graph (launch overhead)", "plain-eager", "plain-graph"))
    if "tensorrt" in medians:
        print(ratio_line("tensorrt / plain-tensorrt (agreement)", "tensorrt", "plain-tensorrt"))
        print(ratio_line("tensorrt / plain-graph (speedup)", "tensorrt", "plain-graph"))
    print(f"cuda profiler facts (last round): {facts}")
    if runner is not None:
        runner.close()
    return {"shape": list(shape), "medians_ms": medians, "ratios": ratios, "cuda_facts": facts}


if __name__ == "__main__":
    sys.exit(main())
