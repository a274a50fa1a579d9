"""Compare models on one device: measured in interleaved rounds, quoted as paired ratios.

A shared machine's speed wanders by 10% and more within minutes, so two models profiled one after the
other can swap places. Measuring them in rounds, each round timing every model once (the order
rotating from round to round so that none is always first), and taking the ratio of each round's
medians cancels what the machine does between rounds; the median of the per-round ratios, with their
range, is the comparison. The search's budget verdict uses the same rounds (student against teacher).

On a device that is not this machine, both models are predicted from its LUT instead, and the ratio is
a ratio of predictions (``source: "lut"``).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress.profiler import Measurement, ModelArtifact, ProfileSettings

COMPARE_SCHEMA = "hwcompress.compare/1"


def measure_interleaved(profiler: Any, artifacts: Sequence[ModelArtifact], settings: ProfileSettings,
                        rounds: int) -> list[list[Measurement]]:
    """Measure every artifact once per round, the starting model rotating each round.

    Returns:
        One list per artifact with its ``rounds`` measurements, in round order.
    """
    count = len(artifacts)
    results: list[list[Measurement]] = [[] for _ in artifacts]
    whole = replace(settings, per_layer=False)
    for round_index in range(rounds):
        for offset in range(count):
            index = (round_index + offset) % count
            results[index].append(profiler.measure(artifacts[index], whole))
    return results


def paired_ratios(results: Sequence[Measurement], reference: Sequence[Measurement]) -> list[float]:
    """Per round, the model's median over the reference's median."""
    return [m.latency.median / r.latency.median for m, r in zip(results, reference)]


def compare_models(
    models: Sequence[str],
    *,
    device: str | None = "cpu",
    device_file: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    lut: str | None = None,
    rounds: int = 5,
    **setting_overrides: Any,
) -> dict[str, Any]:
    """Compare the latency of ``models`` on a device; the first is the reference.

    Args:
        models: two or more ``--model`` strings (torchvision name, ``pkg.module:factory``, checkpoint,
            ``.onnx`` file, ``embedded``).
        device, device_file: the device, as for ``hwcompress profile``.
        input_shape: the shape every model is run at (default: each model's usual shape; they must agree).
        lut: predict from this LUT instead of measuring.
        rounds: interleaved measurement rounds (each times every model once).
        **setting_overrides: ``runs``, ``warmup``, ``threads``, ``precision``.

    Returns:
        The ``hwcompress.compare/1`` document.

    Raises:
        UserError: fewer than two models, rounds < 1, shapes that differ, or a device that is neither
            this machine nor has a LUT.
    """
    from hwcompress.analysis import analyze, analyze_onnx
    from hwcompress.devices import resolve_device
    from hwcompress.export import export_onnx
    from hwcompress.models import load_model
    from hwcompress.profiling import choose_profiler, make_settings, profile_model

    if len(models) < 2:
        raise UserError("give at least two models to compare (the first is the reference)")
    if rounds < 1:
        raise UserError("--rounds must be at least 1")
    descriptor = resolve_device(device, device_file)
    settings = make_settings(descriptor, per_layer=False, **setting_overrides)
    local, _ = descriptor.is_local()
    loaded = [load_model(spec, input_shape=input_shape) for spec in models]
    shapes = {tuple(input_shape or m.input_shape) for m in loaded}
    if len(shapes) > 1:
        listed = ", ".join(f"{m.name} {'x'.join(map(str, input_shape or m.input_shape))}" for m in loaded)
        raise UserError(f"the models take different input shapes ({listed}); give one with --input-shape")
    shape = shapes.pop()

    rows: list[dict[str, Any]] = []
    if lut is not None or not local:
        reports = [profile_model(m, device=device, device_file=device_file, input_shape=shape, lut=lut, per_layer=False,
                                 **setting_overrides) for m in loaded]
        reference = reports[0].latency.median
        for model, report in zip(loaded, reports):
            ratio = report.latency.median / reference
            rows.append({"name": model.name, "latency_ms": report.latency.median, "ratio": ratio,
                         "ratio_min": ratio, "ratio_max": ratio, "macs": report.analysis.macs, "params": report.analysis.params})
        source, facts, profiler_name, notes = "lut", reports[0].facts, "lut", list(reports[0].notes)
    else:
        profiler, fallback_note = choose_profiler(descriptor)
        with tempfile.TemporaryDirectory(prefix="hwcompress-compare-") as folder:
            artifacts = []
            for index, model in enumerate(loaded):
                path = model.onnx_path
                if model.module is not None:
                    path = Path(export_onnx(model.module, shape, Path(folder) / f"model{index}.onnx").path)
                artifacts.append(ModelArtifact(onnx_path=path, input_shape=shape, module=model.module, name=model.name))
            results = measure_interleaved(profiler, artifacts, settings, rounds)
        analyses = [analyze(m.module, shape) if m.module is not None else analyze_onnx(m.onnx_path, shape) for m in loaded]
        for model, analysis, measured in zip(loaded, analyses, results):
            ratios = paired_ratios(measured, results[0])
            rows.append({"name": model.name, "latency_ms": statistics.median(m.latency.median for m in measured),
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "round_medians_ms": [m.latency.median for m in measured],
                         "macs": analysis.macs, "params": analysis.params})
        source, facts, profiler_name = "measured", results[0][-1].facts, profiler.name
        notes = [fallback_note] if fallback_note else []
        for result in results:
            notes.extend(n for m in result for n in m.notes if n not in notes)
    return {
        "schema": COMPARE_SCHEMA,
        "device": {**descriptor.to_dict(), "facts": facts},
        "profiler": profiler_name,
        "source": source,
        "input_shape": list(shape),
        "rounds": rounds if source == "measured" else 0,
        "settings": settings.to_dict(),
        "reference": rows[0]["name"],
        "models": rows,
        "notes": notes,
    }
