"""How well does a LUT recorded on this machine predict channel-pruned models, against measuring them?

For ``--models`` (torchvision architectures with random weights; default resnet18 and mobilenet_v2, and
held-out ones the project was never tuned on, e.g. mobilenet_v3_small, efficientnet_b0, regnet_x_400mf)
at 1x3x``--input-size``x``--input-size`` (default 224), on ``--device`` (default ``cpu``; ``nvidia-gpu``
records with the GPU profiler the device resolves to, ``cuda`` where TensorRT is missing), this script

1. records a LUT on this machine with the device's profiler (ONNX Runtime, one intra-op thread, on the
   CPU), as
   ``hwcompress lut record`` does: every layer over a grid of channel counts, plus the whole model once
   for the calibration term;
2. builds ``--variants`` channel-pruned variants of each model per kind (``--kinds``, default all three):

   * ``project``: the project's own pruning: every prunable channel group (found by torch-pruning's
     dependency graph, so residual and depthwise couplings are kept) gets a random preserve ratio in
     [0.3, 1.0], rounded to the device's channel multiple, and is removed physically;
   * ``tp8`` and ``tpnone``: pruned directly with torch-pruning, as a user would:
     ``tp.pruner.MetaPruner`` with ``MagnitudeImportance(p=2)``, the classifier ignored, a
     ``pruning_ratio`` drawn from [0.1, 0.6], global or per-layer pruning drawn at random, ``round_to=8``
     or ``round_to=None`` (counts wherever the ratio lands: misaligned for the runtime's channel blocks);

3. predicts each variant from the LUT and measures it with ONNX Runtime in the same run, in
   ``--rounds`` rounds interleaved with a reference model: the calibration copy (the unpruned model or
   one of its uniformly pruned copies, as the recorder built them) nearest the variant's predicted
   latency. The drift-corrected view scales the variant by how much slower its reference ran than it
   did during the recording. A large model's drift is not a small one's (``bench/drift_by_size.py``),
   so the reference is matched in size; ``--reference unpruned`` is the view before 2026-11-28, and
   ``--reference both`` times both in the same rounds;
4. prints, per architecture and kind and for all kinds together, the share of predictions within +-10 %
   of the measurement, the MAPE, the mean signed error and Kendall's tau, and the same figures for a
   MACs-proportional predictor (latency = k * MACs, k least-squares fitted on the very variants it is
   scored on, which flatters it); and how many variants have layers the LUT cannot vouch for, as
   ``hwcompress profile --lut`` names them (:meth:`PredictionDetail.coverage`): convolutions off the
   runtime's blocked path (channel counts between its blocks), layers outside the recorded channel grid,
   layers missing from the LUT.

An architecture that cannot be built, analysed or recorded, or a kind of pruning one does not take, is
reported in one line and the others go on. The goal (issue #12) is printed first: >= 95 % within +-10 %
and tau >= 0.9 on every architecture, misaligned variants included.

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

    python bench/lut_fidelity.py                       # 30 variants x 3 kinds x 2 models
    python bench/lut_fidelity.py --kinds project       # the project's own variants only (the script before kinds)
    python bench/lut_fidelity.py --models mobilenet_v3_small,efficientnet_b0,regnet_x_400mf --input-size 96 --variants 8
    python bench/lut_fidelity.py --variants 10 --runs 15 --lut /tmp/cpu.lut.json
    python bench/lut_fidelity.py --device nvidia-gpu --variants 10 --passes 1   # on a machine with an NVIDIA GPU
    python bench/lut_fidelity.py --precisions fp32,int8,mixed --variants 12    # quantized and mixed variants too
    python bench/lut_fidelity.py --models mobilenet_v3_small --input-size 64 --variants 4 --reference both  # both drift corrections
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

RATIO_RANGE = (0.3, 1.0)
TP_RATIO_RANGE = (0.1, 0.6)
KINDS = ("project", "tp8", "tpnone")
REFERENCES = ("nearest", "unpruned", "both")
GOAL = ("goal (issue #12): >= 95% of predictions within +-10% of the measurement and Kendall tau >= 0.9 on every "
        "architecture, misaligned variants included")


class ThreadClockProfiler:
    """The ONNX Runtime profiler, timed by the calling thread's CPU time (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.description = inner.description + " (thread CPU time)"
        self.precisions = tuple(getattr(inner, "precisions", ()) or ())

    def __getattr__(self, name: str) -> Any:
        # Everything else is the inner profiler's: its layout-conversion probe (``lut record --off-path``)
        # above all, which this wrapper hid until 2026-11-27, so the bench's LUTs had no conversion rates.
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

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
        if settings.per_layer:
            # Per-node times (the recording's node-profiler probe sets them against the whole-model median):
            # the inner profiler's, with its own median, so that both are on one clock.
            return self.inner.measure(artifact, settings)
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

    if len(a) < 2:
        return float("nan")
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


def prune_torch_pruning(model: Any, input_shape: tuple[int, ...], rng: random.Random,
                        round_to: int | None) -> tuple[Any, dict[str, Any]]:
    """Prune ``model`` in place as a torch-pruning user would, not through :mod:`hwcompress.slim.pruning`.

    ``tp.pruner.MetaPruner`` with ``tp.importance.MagnitudeImportance(p=2)``, the classifier (the last
    Linear) in ``ignored_layers``, a ``pruning_ratio`` drawn from ``TP_RATIO_RANGE``, global or per-layer
    pruning drawn at random, and ``round_to`` as given (8, or None: channel counts wherever the ratio
    lands). Returns the pruned model and what was drawn.
    """
    import torch
    import torch_pruning as tp

    ratio = rng.uniform(*TP_RATIO_RANGE)
    global_pruning = rng.random() < 0.5
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(*input_shape), importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=global_pruning, pruning_ratio=ratio, ignored_layers=classifier, round_to=round_to,
    )
    pruner.step()
    return model.eval(), {"pruning_ratio": ratio, "global_pruning": global_pruning, "round_to": round_to}


def rebuilt_variants(run: dict[str, Any], multiple: int) -> Iterator[tuple[str, str, int, Any]]:
    """A finished run's float variants (its ``--json`` document), rebuilt from its seed in the order it drew
    them (the project's variants share one generator, each other kind has its own): ``(architecture, kind,
    index, model)``. What the scripts that score a run again without timing it (``conversion_rules.py``,
    ``recording_agreement.py``) predict."""
    import torch

    seed, variants = run["settings"].get("seed", 0), run["settings"]["variants"]
    shape = tuple(run["input_shape"])
    rng = random.Random(seed)
    kind_rngs = {kind: random.Random(f"{seed}:{kind}") for kind in KINDS if kind != "project"}
    kinds = run["settings"].get("kinds", ",".join(KINDS)).split(",")
    for name in run["results"]:
        for kind in kinds:
            kind_rng = rng if kind == "project" else kind_rngs[kind]
            for index in range(variants):
                torch.manual_seed(zlib.crc32(f"{seed}:{name}:fp32:{kind}:{index}".encode()))  # the random weights
                yield name, kind, index, build_variant(name, kind, shape, kind_rng, multiple)[0]


def build_variant(name: str, kind: str, input_shape: tuple[int, ...], rng: random.Random,
                  multiple: int) -> tuple[Any, dict[str, Any]]:
    """A channel-pruned variant of torchvision's ``name`` (random weights) of ``kind`` (see ``KINDS``):
    the model and what was drawn for it."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    if kind == "project":
        model, ratios = prune_random(model, input_shape, rng, multiple)
        return model, {"mean_ratio": statistics.fmean(ratios) if ratios else 1.0}
    if kind in ("tp8", "tpnone"):
        return prune_torch_pruning(model, input_shape, rng, 8 if kind == "tp8" else None)
    raise ValueError(f"unknown variant kind {kind!r} (known: {', '.join(KINDS)})")


REFERENCE_WORDS = {"nearest": "each variant beside the calibration copy nearest its predicted latency",
                   "unpruned": "each variant beside the unpruned model",
                   "both": "each variant beside the calibration copy nearest its predicted latency, and the unpruned model"}


def drift_references(name: str, calibration: dict[str, Any], shape: tuple[int, ...], mode: str, which: str,
                     multiple: int, work: Path, symmetric: bool = False) -> list[tuple[float, Path, Any, float]]:
    """The models a variant may be measured beside for the drift-corrected view, each as ``(width, ONNX
    file, module, its time when the LUT was recorded)``: the calibration's copies (the unpruned model and
    its uniformly pruned copies, built and quantized by the recorder's own :func:`calibration_models` and
    :func:`point_at_precision`) or, with ``which == "unpruned"`` or a calibration without copies, the
    unpruned model alone."""
    import torchvision

    from hwcompress.lut.record import calibration_models, point_at_precision
    from hwcompress.slim.quantize import INT8

    base = torchvision.models.get_model(name, weights=None).eval()
    recorded = {float(p["width"]): float(p["measured_ms"]) for p in calibration.get("points", [])
                if isinstance(p, dict) and "width" in p and p.get("measured_ms")}
    if which == "unpruned" or len(recorded) < 2:
        recorded = {1.0: float(calibration["measured_ms"])}
    folder = work / f"{name}-references"  # one per architecture: a quantized copy is kept where it exists
    folder.mkdir(exist_ok=True)
    points = calibration_models(base, shape, [w for w in recorded if w < 1], multiple, folder, name)
    if mode != "fp32":
        points = [point_at_precision(point, INT8, symmetric) for point in points]
    return [(p["width"], p["artifact"].onnx_path, p["artifact"].module, recorded[p["width"]]) for p in points]


def nearest_reference(references: list[tuple[float, Path, Any, float]], predicted_ms: float) -> tuple[float, Path, Any, float]:
    """The reference whose recorded time is nearest ``predicted_ms`` (by ratio)."""
    return min(references, key=lambda r: abs(math.log(max(predicted_ms, 1e-9) / r[3])))


def unvouched(row: dict[str, Any]) -> bool:
    """Whether the LUT cannot vouch for a variant's prediction: some of its layers run off the runtime's
    blocked path, lie outside the recorded channel grid, or are missing from the LUT (as ``hwcompress
    profile --lut`` reports them)."""
    return bool(row["between_blocks"] or row["extrapolated"] or row["missing"])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores of the LUT and of the MACs-proportional predictor (fitted on ``rows``) over ``rows``, as
    measured and drift-corrected, and how many variants the LUT cannot vouch for."""
    measured = [r["measured_ms"] for r in rows]
    corrected = [r["measured_corrected_ms"] for r in rows]
    predicted = [r["predicted_ms"] for r in rows]
    macs = [r["macs"] for r in rows]
    vouched = [r for r in rows if not unvouched(r)]
    rounds = min(len(r["measured_rounds_ms"]) for r in rows)
    return {
        "variants": len(rows),
        "lut": scores(predicted, measured),
        "macs_proportional": scores(macs_proportional(macs, measured), measured),
        "lut_drift_corrected": scores(predicted, corrected),
        "macs_proportional_drift_corrected": scores(macs_proportional(macs, corrected), corrected),
        "unvouched_variants": len(rows) - len(vouched),
        "off_blocked_path_variants": sum(bool(r["between_blocks"]) for r in rows),
        "outside_grid_variants": sum(bool(r["extrapolated"]) for r in rows),
        "missing_layer_variants": sum(bool(r["missing"]) for r in rows),
        # How well the measurement agrees with itself: Kendall's tau of the variants' times between two of
        # their measurement rounds, each pair of rounds (the ceiling for any predictor's tau here).
        "rounds_kendall_tau": [kendall_tau([r["measured_rounds_ms"][i] for r in rows], [r["measured_rounds_ms"][j] for r in rows])
                               for i in range(rounds) for j in range(i + 1, rounds)],
        "lut_forward_order_drift_corrected": scores([r["predicted_forward_order_ms"] for r in rows], corrected),
        "lut_without_conversions_drift_corrected": scores([r["predicted_without_conversions_ms"] for r in rows], corrected),
        "lut_vouched_only": scores([r["predicted_ms"] for r in vouched], [r["measured_ms"] for r in vouched]) if vouched else None,
        "lut_vouched_only_drift_corrected": (scores([r["predicted_ms"] for r in vouched], [r["measured_corrected_ms"] for r in vouched])
                                             if vouched else None),
    }


def print_summary(kind: str, rows: list[dict[str, Any]], s: dict[str, Any]) -> None:
    """The table lines of one kind (or all kinds) of one architecture."""
    for predictor, key in (("LUT (calibrated)", "lut"), ("MACs-proportional", "macs_proportional")):
        measured, corrected = s[key], s[f"{key}_drift_corrected"]
        print(f"  {kind if key == 'lut' else '':<9} {s['variants'] if key == 'lut' else '':>3}  {predictor:<18}"
              f"{format_scores(measured)}  |{format_scores(corrected)}  |")
    layers = {k: sum(r[k] for r in rows) for k in ("exact", "interpolated", "extrapolated", "missing", "between_blocks")}
    vouched, vouched_corrected = s["lut_vouched_only"], s["lut_vouched_only_drift_corrected"]
    print(f"  {'':<9} {'':>3}  layers: {layers['exact']} exact, {layers['interpolated']} interpolated "
          f"({layers['extrapolated']} outside the grid), {layers['missing']} missing, {layers['between_blocks']} off the blocked "
          "path")
    print(f"  {'':<9} {'':>3}  LUT cannot vouch for {s['unvouched_variants']}/{s['variants']} variants ({s['off_blocked_path_variants']} off "
          f"the blocked path, {s['outside_grid_variants']} outside the grid, {s['missing_layer_variants']} missing layers)"
          + (f"; the LUT on the other {s['variants'] - s['unvouched_variants']}: within +-10% {100 * vouched['within_10pct']:.1f}% "
             f"as measured, {100 * vouched_corrected['within_10pct']:.1f}% drift-corrected (MAPE {100 * vouched['mape']:.2f}% / "
             f"{100 * vouched_corrected['mape']:.2f}%)" if vouched and s["unvouched_variants"] else ""))
    if s["rounds_kendall_tau"]:
        print(f"  {'':<9} {'':>3}  the measurement against itself: Kendall tau between measurement rounds "
              f"{min(s['rounds_kendall_tau']):.3f}-{max(s['rounds_kendall_tau']):.3f}")


def format_scores(s: dict[str, float]) -> str:
    return (f" {100 * s['within_10pct']:7.1f}% {100 * s['mape']:6.2f}% {100 * s['mean_err']:+7.2f}% "
            f"{s['kendall_tau']:6.3f} {100 * s['max_abs_err']:6.1f}%")


_COLUMNS = f"{'within10':>9}{'MAPE':>8}{'mean err':>9}{'tau':>7}{'max err':>8}  |"
TABLE_HEADER = (f"  {'':<9} {'':>3}  {'':<18}{'as measured':<{len(_COLUMNS)}}drift-corrected (a reference model beside each variant)\n"
                f"  {'kind':<9} {'n':>3}  {'predictor':<18}{_COLUMNS}{_COLUMNS}")


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2",
                        help="torchvision architectures, random weights (held out: mobilenet_v3_small,efficientnet_b0,regnet_x_400mf)")
    parser.add_argument("--input-size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--off-path", action="store_true",
                        help="record the LUT with off-path entries too (lut record --off-path): prices counts off the "
                             "runtime's alignment, as the tpnone variants have")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="variant kinds: project (hwcompress's own pruning), tp8 / tpnone (torch-pruning MetaPruner, "
                             "round_to 8 / None); default all three")
    parser.add_argument("--device", default="cpu", help="device to record on and measure (default cpu)")
    parser.add_argument("--variants", type=int, default=30, help="pruned variants per model and kind (default 30)")
    parser.add_argument("--runs", type=int, default=30, help="timed iterations per layer entry and per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=5, help="grid points per channel axis")
    parser.add_argument("--quantum", type=int, default=None, help="channel quantum (default: detected)")
    parser.add_argument("--passes", type=int, default=2, help="recording passes (each entry keeps its lowest median)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved (reference, variant) measurement rounds per variant")
    parser.add_argument("--reference", choices=REFERENCES, default="nearest",
                        help="the model measured beside each variant for the drift-corrected view: the calibration copy "
                             "nearest the variant's predicted latency (default), the unpruned model (before 2026-11-28), "
                             "or both in the same rounds (the view uses the nearest; the JSON rows keep both corrections)")
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
    from hwcompress.lut.record import record_lut, symmetric_table
    from hwcompress.lut.table import LatencyTable
    from hwcompress.measure.contract import ModelArtifact
    from hwcompress.measure.resolve import make_settings, measuring_profiler
    from hwcompress.model.analysis import analyze
    from hwcompress.model.export import export_onnx

    names = [n for n in args.models.split(",") if n]
    modes = [m for m in args.precisions.split(",") if m]
    kinds = [k for k in args.kinds.split(",") if k]
    if set(modes) - {"fp32", "int8", "mixed"}:
        raise SystemExit("--precisions takes fp32, int8 and mixed")
    if not kinds or set(kinds) - set(KINDS):
        raise SystemExit(f"--kinds takes {', '.join(KINDS)}")
    if args.input_size < 32:
        raise SystemExit("--input-size must be at least 32")
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    settings = make_settings(device, runs=args.runs, warmup=args.warmup, threads=args.threads, per_layer=False)
    if args.cache_flush_mb is not None:
        settings = dataclasses.replace(settings, options={**settings.options, "cache_flush_mb": args.cache_flush_mb})
    profiler, _ = measuring_profiler(device)
    if args.clock == "thread" and profiler.name == "onnxruntime":
        profiler = ThreadClockProfiler(profiler)
    size = args.input_size
    shape = (1, 3, size, size)
    recorded = ("fp32", "int8") if {"int8", "mixed"} & set(modes) else None
    work = Path(tempfile.mkdtemp(prefix="lut-fidelity-"))
    lut_path = Path(args.lut) if args.lut else work / f"{device.name}.lut.json"
    facts = profiler.facts(settings)
    hardware = facts.get("gpu") or f"{facts.get('cpu')} ({facts.get('logical_cores')} logical cores)"
    print(GOAL)
    print(f"device: {device.name} = {hardware}, {profiler.name} profiler, {facts.get('runtime')} {facts.get('runtime_version')}, "
          f"precision={settings.precision}, threads={settings.threads}, clock={args.clock if profiler.name == 'onnxruntime' else 'CUDA events'}, "
          f"runs={settings.runs}")
    print(f"input 1x3x{size}x{size}; {args.variants} variants per model and kind; kinds: {', '.join(kinds)} "
          f"(project: hwcompress's pruning, preserve ratios {RATIO_RANGE}; tp8/tpnone: torch-pruning MetaPruner, "
          f"pruning_ratio in {TP_RATIO_RANGE}, global or per layer at random, round_to 8 / None)", flush=True)

    def calibration_name(name: str) -> str:
        return name if size == 224 else f"{name}@{size}px"

    started = time.time()
    failures: list[str] = []
    recording_s: dict[str, float] = {}
    usable: list[str] = []
    for name in names:
        t0 = time.time()
        try:
            model = torchvision.models.get_model(name, weights=None).eval()
            table = record_lut(model, shape, device, profiler, settings, lut_path, model_name=calibration_name(name),
                               points=args.points, quantum=args.quantum, passes=args.passes, precisions=recorded,
                               off_path=args.off_path)
        except Exception as error:  # an architecture that cannot be built, analysed or recorded: the others go on
            failures.append(f"{name}: not recorded ({first_line(error)})")
            print(f"skipped {name}: could not be built, analysed or recorded ({first_line(error)})", flush=True)
            continue
        recording_s[name] = time.time() - t0
        usable.append(name)
        print(f"recorded {name}: {len(table)} entries in the LUT so far, {recording_s[name]:.0f} s", flush=True)
    if not usable:
        print("no architecture could be recorded")
        return 1
    table = LatencyTable.load(lut_path)
    layout = table.provenance.get("facts") or {}
    print(f"LUT: {len(table)} entries, channel quantum {table.quantum} (multiple {device.channel_multiple}), "
          f"channel block {layout.get('channel_block')} / alignment {layout.get('channel_alignment')}, "
          f"timing={table.timing}, recording {time.time() - started:.0f} s")
    for model in map(table.predictor.current_calibration, table.models):  # as predictions read them
        if "measured_ms" in model:
            print(f"  calibration {model['name']} {model.get('precision', 'fp32')}: measured {model['measured_ms']:.3f} ms, "
                  f"layer sum {model['layer_sum_ms']:.3f} ms, scale {model['scale']:.3f}")

    rng = random.Random(args.seed)  # the project's variants draw from it as before this script had kinds
    kind_rngs = {kind: random.Random(f"{args.seed}:{kind}") for kind in KINDS if kind != "project"}
    results: dict[str, Any] = {}
    all_pred: list[float] = []
    all_meas: list[float] = []
    all_macs_pred: list[float] = []
    all_corr: list[float] = []
    all_macs_corr: list[float] = []
    for name, mode in [(n, m) for n in usable for m in modes]:
        t0 = time.time()
        label = name if mode == "fp32" else f"{name} {mode}"
        reference_precision = "fp32" if mode == "fp32" else "int8"
        try:
            calibration = next(m for m in table.models if m["name"] == calibration_name(name)
                               and m.get("precision", "fp32") == reference_precision)
            references = drift_references(name, calibration, shape, mode, args.reference, device.channel_multiple, work,
                                          symmetric_table(table))
        except Exception as error:
            failures.append(f"{label}: no reference ({first_line(error)})")
            print(f"\nskipped {label}: its reference models could not be exported or its calibration is not in the LUT ({first_line(error)})")
            continue
        rows: list[dict[str, Any]] = []
        for kind in kinds:
            kind_rng = rng if kind == "project" else kind_rngs[kind]
            kind_rows: list[dict[str, Any]] = []
            try:
                for index in range(args.variants):
                    torch.manual_seed(zlib.crc32(f"{args.seed}:{name}:{mode}:{kind}:{index}".encode()))  # the random weights
                    model, drawn = build_variant(name, kind, shape, kind_rng, device.channel_multiple)
                    analysis = analyze(model, shape)
                    onnx_path = work / f"{name}-{kind}-{index}.onnx"
                    export_onnx(model, shape, onnx_path, verify=False)
                    specs, int8_layers, float_path = analysis.layers, 0, onnx_path
                    if mode != "fp32":
                        onnx_path, specs, int8_layers = quantized_variant(model, onnx_path, specs, shape, mode, kind_rng)
                    detail = table.predict_detail(specs, calibration=args.calibration)
                    # The same prediction with layout conversions placed in forward order (as before the
                    # rows knew which layer feeds which): the graph's worth, on the same measurements.
                    forward = table.predict_detail([dataclasses.replace(s, sources=None) for s in specs],
                                                   calibration=args.calibration)
                    # Interleaved A/B: a calibration model beside each variant tells how much slower this
                    # moment is than the recording was (other processes, clocks): the drift-corrected view.
                    # The copy nearest the variant's latency, since the machine's drift is not one factor:
                    # the unpruned efficientnet_b0 at 96 px (21 MB of weights) spread 1.20x over 25
                    # interleaved measurements while its 0.3-wide copy spread 1.05x, their logs correlating
                    # 0.25 (docs/benchmarks.md).
                    # With --reference both, the unpruned model is timed in the same rounds too, so that both
                    # corrections apply to the same measurements of the variant.
                    ref_width, reference_path, reference, ref_recorded_ms = nearest_reference(references, detail.total_ms)
                    unpruned = references[0] if args.reference == "both" and ref_width != references[0][0] else None
                    variant_ms, ratios_ab, refs, ratios_unpruned = [], [], [], []
                    for round_ in range(args.rounds):
                        pair = [("ref", reference_path, reference), ("var", onnx_path, model)]
                        if unpruned is not None:
                            pair.append(("unpruned", unpruned[1], unpruned[2]))
                        pair = pair[round_ % len(pair):] + pair[:round_ % len(pair)]
                        got = {}
                        for which, path, module in pair:
                            got[which] = profiler.measure(ModelArtifact(path, shape, module, name), settings).latency.median
                        variant_ms.append(got["var"])
                        refs.append(got["ref"])
                        ratios_ab.append(got["var"] / got["ref"])
                        ratios_unpruned.append(got["var"] / got.get("unpruned", got["ref"]))
                    for path in {onnx_path, float_path}:
                        path.unlink(missing_ok=True)
                    ref_ms = statistics.median(refs)
                    coverage = detail.coverage()
                    kind_rows.append({
                        "kind": kind,
                        "variant": index,
                        **drawn,
                        "macs": analysis.macs,
                        "params": analysis.params,
                        "measured_ms": statistics.median(variant_ms),
                        "measured_rounds_ms": variant_ms,
                        "reference_width": ref_width,
                        "reference_ms": ref_ms,
                        "drift": ref_ms / ref_recorded_ms,
                        "measured_corrected_ms": statistics.median(ratios_ab) * ref_recorded_ms,
                        **({"measured_corrected_unpruned_ms": statistics.median(ratios_unpruned) * references[0][3]}
                           if args.reference == "both" else {}),
                        "predicted_ms": detail.total_ms,
                        "predicted_forward_order_ms": forward.total_ms,
                        # Conversions are added on top of the calibrated sum: without them, the rest.
                        "predicted_without_conversions_ms": detail.total_ms - detail.layout_conversion_ms,
                        "layout_conversion_ms": detail.layout_conversion_ms,
                        "layer_sum_ms": detail.layer_sum_ms,
                        "exact": coverage["exact"],
                        "interpolated": coverage["interpolated"],
                        "extrapolated": coverage["extrapolated"],
                        "missing": coverage["missing"],
                        "between_blocks": coverage["between_blocks"],
                        "between_blocks_layers": coverage["between_blocks_layers"],
                        "int8_layers": int8_layers,
                    })
            except Exception as error:  # a kind of pruning this architecture does not take: the other kinds go on
                failures.append(f"{label} {kind}: failed at variant {len(kind_rows)} ({first_line(error)})")
                print(f"\nskipped {label} {kind}: variant {len(kind_rows)} could not be pruned, analysed or measured "
                      f"({first_line(error)})", flush=True)
                continue
            rows += kind_rows
        if not rows:
            continue
        measured_ms = [r["measured_ms"] for r in rows]
        drifts = [r["drift"] for r in rows]
        result = {"input_shape": list(shape), "rows": rows, **summarize(rows), "kinds": {}}
        print(f"\n{label} (1x3x{size}x{size}): {len(rows)} variants, MACs {min(r['macs'] for r in rows) / 1e9:.3f}-"
              f"{max(r['macs'] for r in rows) / 1e9:.3f} G, measured {min(measured_ms):.2f}-{max(measured_ms):.2f} ms "
              f"({time.time() - t0:.0f} s); the reference models measured {min(drifts):.3f}-{max(drifts):.3f}x their "
              f"times during recording ({REFERENCE_WORDS[args.reference]})")
        print(TABLE_HEADER)
        for kind in kinds:
            kind_rows = [r for r in rows if r["kind"] == kind]
            if kind_rows:
                result["kinds"][kind] = summarize(kind_rows)
                print_summary(kind, kind_rows, result["kinds"][kind])
        if len(result["kinds"]) > 1:
            print_summary("all kinds", rows, result)
        results[label] = result
        all_pred += [r["predicted_ms"] for r in rows]
        all_meas += measured_ms
        all_macs_pred += macs_proportional([r["macs"] for r in rows], measured_ms)
        corrected = [r["measured_corrected_ms"] for r in rows]
        all_corr += corrected
        all_macs_corr += macs_proportional([r["macs"] for r in rows], corrected)
    if len(results) > 1:
        print(f"\nall {len(all_meas)} variants (the MACs predictor fitted per model):")
        print("  as measured:")
        print_scores("LUT (calibrated)", scores(all_pred, all_meas))
        print_scores("MACs-proportional", scores(all_macs_pred, all_meas))
        print("  drift-corrected:")
        print_scores("LUT (calibrated)", scores(all_pred, all_corr))
        print_scores("MACs-proportional", scores(all_macs_corr, all_corr))
    print(f"\n{GOAL}; the LUT, all kinds together:")
    for label, result in results.items():
        verdicts = []
        for view in ("lut", "lut_drift_corrected"):
            s = result[view]
            met = s["within_10pct"] >= 0.95 and s["kendall_tau"] >= 0.9
            verdicts.append(f"{'as measured' if view == 'lut' else 'drift-corrected'} {100 * s['within_10pct']:.1f}% / "
                            f"tau {s['kendall_tau']:.3f} ({'met' if met else 'NOT met'})")
        print(f"  {label:<24} {'; '.join(verdicts)}")
    print("\nlayout conversions placed by the graph, in forward order, or left out (drift-corrected, the same "
          "measurements; within +-10% / MAPE / tau):")
    for label, result in results.items():
        views = [(name, result[key]) for name, key in (("graph", "lut_drift_corrected"),
                                                       ("forward order", "lut_forward_order_drift_corrected"),
                                                       ("none", "lut_without_conversions_drift_corrected"))]
        print(f"  {label:<24} " + ";  ".join(f"{name} {100 * v['within_10pct']:.1f}% / {100 * v['mape']:.1f}% / "
                                              f"{v['kendall_tau']:.3f}" for name, v in views))
    for failure in failures:
        print(f"  not measured: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "facts": facts, "goal": GOAL, "input_shape": list(shape),
                                               "recording_s": recording_s, "failures": failures, "results": results}, indent=2))
    return 0

def print_scores(label: str, s: dict[str, float]) -> None:
    print(f"  {label:<20} within +-10%: {100 * s['within_10pct']:5.1f}%   MAPE: {100 * s['mape']:5.2f}%   "
          f"Kendall tau: {s['kendall_tau']:.3f}   max |err|: {100 * s['max_abs_err']:5.1f}%   mean err: {100 * s['mean_err']:+5.2f}%")


if __name__ == "__main__":
    sys.exit(main())
