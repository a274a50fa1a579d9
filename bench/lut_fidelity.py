"""How well does a LUT recorded on this machine predict channel-pruned models, against measuring them?

For resnet18 and mobilenet_v2 at 1x3x224x224, on ``--device`` (default ``cpu``; ``nvidia-gpu`` records
with the GPU profiler the device resolves to, ``cuda`` where TensorRT is missing), this script

1. records a LUT on this machine with the device's profiler (ONNX Runtime, one intra-op thread, on the
   CPU), as
   ``hwcompress lut record`` does: every layer over a grid of channel counts, plus the whole model once
   for the calibration term;
2. builds ``--variants`` channel-pruned variants of each model: every prunable channel group (found by
   torch-pruning's dependency graph, so residual and depthwise couplings are kept) gets a random
   preserve ratio in [0.3, 1.0], rounded to the device's channel multiple, and is removed physically;
3. predicts each variant from the LUT and measures it with ONNX Runtime in the same run;
4. prints the share of predictions within +-10 % of the measurement, the MAPE and Kendall's tau, and the
   same figures for a MACs-proportional predictor (latency = k * MACs, k least-squares fitted on the very
   variants it is scored on, which flatters it).

Clock: on a shared machine other processes preempt the timing thread, which inflates wall-clock times by
up to 2x at random (measured here: resnet18 23-46 ms wall within one minute). With one intra-op thread
and spinning off, ONNX Runtime runs the whole inference in the calling thread, so that thread's CPU time
(``time.thread_time_ns``) is the inference time without the preemption. ``--clock thread`` (default)
times the whole models that way (the variants and the calibration run); ``--clock wall`` uses the
profiler's wall clock unchanged. Layer entries always come from ONNX Runtime's per-kernel timings.

The thread clock applies to ONNX Runtime on the CPU; a GPU profiler keeps its own CUDA-event timing.

Precisions (``--precisions fp32,int8,mixed``): the LUT is then recorded with int8 entries beside the
float ones (each layer also timed as its Q/DQ model), and each variant is also measured as

* ``int8``: quantized whole (static Q/DQ, per-channel weights; ranges from random inputs, which leave
  the time unchanged), predicted with every layer ONNX Runtime runs in int8 priced from the int8 entries;
* ``mixed``: every channel group's layers put in float or int8 at random (as ONNX Runtime realizes it,
  :class:`hwcompress.slim.quantize.QdqGraph`), predicted layer by layer in the precision each runs in.

The MACs-proportional predictor knows no precision: on mixed variants it is the baseline a per-layer,
per-precision LUT must beat.

Usage::

    python bench/lut_fidelity.py                       # 30 + 30 variants, a few minutes on 2 cores
    python bench/lut_fidelity.py --variants 10 --runs 15 --lut /tmp/cpu.lut.json
    python bench/lut_fidelity.py --device nvidia-gpu --variants 10 --passes 1   # on a machine with an NVIDIA GPU
    python bench/lut_fidelity.py --precisions fp32,int8,mixed --variants 12    # quantized and mixed variants too
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATIO_RANGE = (0.3, 1.0)


class ThreadClockProfiler:
    """The ONNX Runtime profiler, timed by the calling thread's CPU time (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.description = inner.description + " (thread CPU time)"
        self.precisions = tuple(getattr(inner, "precisions", ()) or ())

    def available(self) -> tuple[bool, str]:
        return self.inner.available()

    def facts(self, settings: Any) -> dict[str, Any]:
        return {**self.inner.facts(settings), "clock": "thread CPU time (time.thread_time_ns)"}

    def measure_unit(self, artifact: Any, settings: Any) -> Any:
        """Layer entries: ONNX Runtime's own per-kernel times (not a wall or thread clock), as recorded
        by ``hwcompress lut record``."""
        return self.inner.measure_unit(artifact, settings)

    def measure(self, artifact: Any, settings: Any) -> Any:
        from hwcompress_profiler_onnxruntime import make_session, random_feed

        from hwcompress.measure.contract import LatencyStats, Measurement

        if int(settings.threads) != 1:
            raise SystemExit("--clock thread needs --threads 1 (other threads' work would not be counted)")
        session = make_session(artifact.onnx_path, settings)
        feed = random_feed(session, artifact.input_shape)
        for _ in range(int(settings.warmup)):
            session.run(None, feed)
        samples = []
        for _ in range(int(settings.runs)):
            start = time.thread_time_ns()
            session.run(None, feed)
            samples.append((time.thread_time_ns() - start) / 1e6)
        return Measurement(latency=LatencyStats.from_samples(samples), facts=self.facts(settings))


def round_channels(channels: int, ratio: float, multiple: int) -> int:
    """Kept channels for a preserve ratio: a multiple of ``multiple``, at least one multiple, at most all."""
    try:
        from hwcompress.slim.pruning import round_channels as shared

        return int(shared(channels, ratio, multiple))
    except Exception:  # the shared helper is optional here (written in parallel)
        kept = int(round(channels * ratio / multiple)) * multiple
        return max(multiple, min(channels, kept))


def prune_random(model: Any, input_shape: tuple[int, ...], rng: random.Random, multiple: int) -> tuple[Any, list[float]]:
    """Prune every prunable channel group of ``model`` to a random preserve ratio (physically).

    Uses :mod:`hwcompress.slim.pruning` (the search's own torch-pruning based surgery) when present, else
    torch-pruning's dependency graph directly.
    """
    import torch

    try:
        from hwcompress.slim import pruning
    except ImportError:
        pruning = None
    if pruning is not None:
        example = torch.zeros(*input_shape)
        groups = pruning.find_channel_groups(model, example)
        keep, ratios = {}, []
        for group in groups:
            kept = max(group.min_channels, round_channels(group.channels, rng.uniform(*RATIO_RANGE), multiple))
            keep[group.name] = kept
            ratios.append(kept / group.channels)
        return pruning.prune_channels(model, example, keep).eval(), ratios
    import torch_pruning as tp

    example = torch.randn(*input_shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    ratios = []
    for group in list(graph.get_all_groups(ignored_layers=classifier, root_module_types=(torch.nn.Conv2d, torch.nn.Linear))):
        root = group[0].dep.target.module
        channels = root.out_channels if isinstance(root, torch.nn.Conv2d) else root.out_features
        ratio = rng.uniform(*RATIO_RANGE)
        kept = round_channels(channels, ratio, multiple)
        ratios.append(kept / channels)
        if kept >= channels:
            continue
        handler = tp.prune_conv_out_channels if isinstance(root, torch.nn.Conv2d) else tp.prune_linear_out_channels
        pruning = graph.get_pruning_group(root, handler, idxs=list(range(kept, channels)))
        if graph.check_pruning_group(pruning):
            pruning.prune()
    return model.eval(), ratios


def quantized_variant(model: Any, onnx_path: Path, specs: list[Any], shape: tuple[int, ...], mode: str,
                      rng: random.Random) -> tuple[Path, list[Any], int]:
    """The variant as an int8 (``mode == "int8"``) or mixed-precision Q/DQ model: its file, its layer rows
    priced in the precision each layer runs in, and how many layers run in int8."""
    import numpy as np
    import torch

    from hwcompress.lut.keys import at_precision
    from hwcompress.slim import pruning
    from hwcompress.slim.quantize import quantize_onnx

    floating: list[str] = []
    if mode == "mixed":
        for group in pruning.find_channel_groups(model, torch.zeros(*shape)):
            if rng.random() < 0.5:
                floating += [*group.producers, *group.depthwise]
    target = onnx_path.with_suffix(f".{mode}.onnx")
    inputs = [np.random.default_rng(0).standard_normal(shape).astype(np.float32) for _ in range(4)]
    int8 = set(quantize_onnx(onnx_path, target, inputs, floating).int8_layers)
    return target, [at_precision(spec, "int8") if spec.name in int8 else spec for spec in specs], len(int8)


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def scores(predicted: list[float], measured: list[float]) -> dict[str, float]:
    errors = [(p - m) / m for p, m in zip(predicted, measured)]
    return {
        "within_10pct": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "mape": statistics.fmean(abs(e) for e in errors),
        "kendall_tau": kendall_tau(predicted, measured),
        "max_abs_err": max(abs(e) for e in errors),
        "mean_err": statistics.fmean(errors),
    }


def macs_proportional(macs: list[int], measured: list[float]) -> list[float]:
    k = sum(m * y for m, y in zip(macs, measured)) / sum(m * m for m in macs)
    return [k * m for m in macs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--device", default="cpu", help="device to record on and measure (default cpu)")
    parser.add_argument("--variants", type=int, default=30, help="pruned variants per model (default 30)")
    parser.add_argument("--runs", type=int, default=30, help="timed iterations per layer entry and per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=5, help="grid points per channel axis")
    parser.add_argument("--quantum", type=int, default=None, help="channel quantum (default: detected)")
    parser.add_argument("--passes", type=int, default=2, help="recording passes (each entry keeps its lowest median)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved (unpruned, variant) measurement rounds per variant")
    parser.add_argument("--clock", choices=["thread", "wall"], default="thread")
    parser.add_argument("--calibration", choices=["scale", "offset", "none"], default="scale")
    parser.add_argument("--cache-flush-mb", type=float, default=None,
                        help="MB streamed between timed runs of a layer while recording (default: the recorder's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lut", help="LUT file to record into / resume (default: a temporary file)")
    parser.add_argument("--precisions", default="fp32",
                        help="variants to predict and measure: fp32, int8 (quantized whole), mixed (int8 or float per group)")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args(argv)

    import torch
    import torchvision

    from hwcompress.devices import resolve_device
    from hwcompress.lut.record import record_lut
    from hwcompress.lut.table import LatencyTable
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, measuring_profiler
    from hwcompress.model.analysis import analyze
    from hwcompress.model.export import export_onnx

    torch.set_num_threads(1)
    device = resolve_device(args.device)
    settings = make_settings(device, runs=args.runs, warmup=args.warmup, threads=args.threads, per_layer=False)
    if args.cache_flush_mb is not None:
        settings = dataclasses.replace(settings, options={**settings.options, "cache_flush_mb": args.cache_flush_mb})
    profiler, _ = measuring_profiler(device)
    if args.clock == "thread" and profiler.name == "onnxruntime":
        profiler = ThreadClockProfiler(profiler)
    shape = (1, 3, 224, 224)
    names = [n for n in args.models.split(",") if n]
    modes = [m for m in args.precisions.split(",") if m]
    if set(modes) - {"fp32", "int8", "mixed"}:
        raise SystemExit("--precisions takes fp32, int8 and mixed")
    recorded = ("fp32", "int8") if {"int8", "mixed"} & set(modes) else None
    work = Path(tempfile.mkdtemp(prefix="lut-fidelity-"))
    lut_path = Path(args.lut) if args.lut else work / f"{device.name}.lut.json"
    facts = profiler.facts(settings)
    hardware = facts.get("gpu") or f"{facts.get('cpu')} ({facts.get('logical_cores')} logical cores)"
    print(f"device: {device.name} = {hardware}, {profiler.name} profiler, {facts.get('runtime')} {facts.get('runtime_version')}, "
          f"precision={settings.precision}, threads={settings.threads}, clock={args.clock if profiler.name == 'onnxruntime' else 'CUDA events'}, "
          f"runs={settings.runs}")

    started = time.time()
    for name in names:
        model = torchvision.models.get_model(name, weights=None).eval()
        t0 = time.time()
        table = record_lut(model, shape, device, profiler, settings, lut_path, model_name=name,
                           points=args.points, quantum=args.quantum, passes=args.passes, precisions=recorded)
        print(f"recorded {name}: {len(table)} entries in the LUT so far, {time.time() - t0:.0f} s", flush=True)
    table = LatencyTable.load(lut_path)
    print(f"LUT: {len(table)} entries, channel quantum {table.quantum} (multiple {device.channel_multiple}), "
          f"timing={table.timing}, recording {time.time() - started:.0f} s")
    for model in table.models:
        print(f"  calibration {model['name']} {model.get('precision', 'fp32')}: measured {model['measured_ms']:.3f} ms, layer sum {model['layer_sum_ms']:.3f} ms, "
              f"scale {model['scale']:.3f}")

    rng = random.Random(args.seed)
    results: dict[str, Any] = {}
    all_pred: list[float] = []
    all_meas: list[float] = []
    all_macs_pred: list[float] = []
    all_corr: list[float] = []
    all_macs_corr: list[float] = []
    for name, mode in [(n, m) for n in names for m in modes]:
        rows = []
        t0 = time.time()
        reference = torchvision.models.get_model(name, weights=None).eval()
        reference_path = work / f"{name}-reference.onnx"
        export_onnx(reference, shape, reference_path, verify=False)
        reference_precision = "fp32" if mode == "fp32" else "int8"
        if mode != "fp32":
            from hwcompress.slim.quantize import quantize_unit

            reference_path = quantize_unit(reference_path, work / f"{name}-reference.int8.onnx", shape)
        calibration = next(m for m in table.models if m["name"] == name and m.get("precision", "fp32") == reference_precision)
        for index in range(args.variants):
            model, ratios = prune_random(torchvision.models.get_model(name, weights=None).eval(), shape, rng, device.channel_multiple)
            analysis = analyze(model, shape)
            onnx_path = work / f"{name}-{index}.onnx"
            export_onnx(model, shape, onnx_path, verify=False)
            specs, int8_layers = analysis.layers, 0
            if mode != "fp32":
                onnx_path, specs, int8_layers = quantized_variant(model, onnx_path, specs, shape, mode, rng)
            detail = table.predict_detail(specs, calibration=args.calibration)
            # Interleaved A/B: the unpruned model beside each variant tells how much slower this
            # moment is than the recording was (other processes, clocks): the drift-corrected view.
            variant_ms, ratios_ab, refs = [], [], []
            for round_ in range(args.rounds):
                pair = [("ref", reference_path, reference), ("var", onnx_path, model)]
                if round_ % 2:
                    pair.reverse()
                got = {}
                for label, path, module in pair:
                    got[label] = profiler.measure(ModelArtifact(path, shape, module, name), settings).latency.median
                variant_ms.append(got["var"])
                refs.append(got["ref"])
                ratios_ab.append(got["var"] / got["ref"])
            onnx_path.unlink()
            measured_median = statistics.median(variant_ms)
            ref_ms = statistics.median(refs)
            coverage = detail.coverage()
            rows.append({
                "variant": index,
                "macs": analysis.macs,
                "params": analysis.params,
                "mean_ratio": statistics.fmean(ratios),
                "measured_ms": measured_median,
                "measured_rounds_ms": variant_ms,
                "reference_ms": ref_ms,
                "drift": ref_ms / calibration["measured_ms"],
                "measured_corrected_ms": statistics.median(ratios_ab) * calibration["measured_ms"],
                "predicted_ms": detail.total_ms,
                "layer_sum_ms": detail.layer_sum_ms,
                "exact": coverage["exact"],
                "interpolated": coverage["interpolated"],
                "missing": coverage["missing"],
                "int8_layers": int8_layers,
            })
        measured_ms = [r["measured_ms"] for r in rows]
        corrected_ms = [r["measured_corrected_ms"] for r in rows]
        predicted_ms = [r["predicted_ms"] for r in rows]
        macs_pred = macs_proportional([r["macs"] for r in rows], measured_ms)
        macs_pred_corrected = macs_proportional([r["macs"] for r in rows], corrected_ms)
        lut_scores = scores(predicted_ms, measured_ms)
        mac_scores = scores(macs_pred, measured_ms)
        lut_corrected = scores(predicted_ms, corrected_ms)
        mac_corrected = scores(macs_pred_corrected, corrected_ms)
        label = name if mode == "fp32" else f"{name} {mode}"
        results[label] = {"rows": rows, "lut": lut_scores, "macs_proportional": mac_scores,
                         "lut_drift_corrected": lut_corrected, "macs_proportional_drift_corrected": mac_corrected}
        all_pred += predicted_ms
        all_meas += measured_ms
        all_macs_pred += macs_pred
        all_corr += corrected_ms
        all_macs_corr += macs_pred_corrected
        drifts = [r["drift"] for r in rows]
        missing = sum(r["missing"] for r in rows)
        interpolated = sum(r["interpolated"] for r in rows)
        exact = sum(r["exact"] for r in rows)
        print(f"\n{label}: {len(rows)} variants, MACs {min(r['macs'] for r in rows) / 1e9:.3f}-{max(r['macs'] for r in rows) / 1e9:.3f} G, "
              f"measured {min(measured_ms):.2f}-{max(measured_ms):.2f} ms ({time.time() - t0:.0f} s)")
        print(f"  layers over all variants: {exact} exact, {interpolated} interpolated, {missing} missing")
        print("  as measured:")
        print_scores("LUT (calibrated)", lut_scores)
        print_scores("MACs-proportional", mac_scores)
        print(f"  drift-corrected (unpruned model measured {min(drifts):.3f}-{max(drifts):.3f}x its time during recording):")
        print_scores("LUT (calibrated)", lut_corrected)
        print_scores("MACs-proportional", mac_corrected)
    if len(names) * len(modes) > 1:
        print(f"\nall {len(all_meas)} variants (the MACs predictor fitted per model):")
        print("  as measured:")
        print_scores("LUT (calibrated)", scores(all_pred, all_meas))
        print_scores("MACs-proportional", scores(all_macs_pred, all_meas))
        print("  drift-corrected:")
        print_scores("LUT (calibrated)", scores(all_pred, all_corr))
        print_scores("MACs-proportional", scores(all_macs_corr, all_corr))
    print("\ntargets: within +-10% >= 95%, Kendall's tau >= 0.9")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "facts": facts, "results": results}, indent=2))
    return 0


def print_scores(label: str, s: dict[str, float]) -> None:
    print(f"  {label:<20} within +-10%: {100 * s['within_10pct']:5.1f}%   MAPE: {100 * s['mape']:5.2f}%   "
          f"Kendall tau: {s['kendall_tau']:.3f}   max |err|: {100 * s['max_abs_err']:5.1f}%   mean err: {100 * s['mean_err']:+5.2f}%")


if __name__ == "__main__":
    sys.exit(main())
