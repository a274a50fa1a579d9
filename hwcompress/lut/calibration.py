"""The whole-model side of a LUT: time the model whole beside its layers, and store the ratio.

A sum of separately timed layers misses what lies between them (residual adds, pooling, cache misses,
per-run overhead). So the recorder also times the whole model, and copies of it uniformly pruned to a
few widths, before, during and after its layers; the ratio between each measurement and the sum of its
layers is the calibration stored with the table and applied to every prediction (interpolated between
the widths by layer sum, :func:`hwcompress.lut.predict.calibration_ratio`). Needs no PyTorch.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Sequence

from hwcompress.lut.keys import TIMING_SESSION, LayerConfig
from hwcompress.lut.recorder import Recorder
from hwcompress.lut.table import LatencyTable, _now
from hwcompress.measure.contract import ProfileSettings

#: Uniform preserve ratios of the pruned copies the calibration measures beside the full model.
CALIBRATION_WIDTHS = (0.75, 0.5, 0.3)


def record_with_calibration(
    table: LatencyTable,
    recorder: "Recorder",
    profiler: Any,
    settings: ProfileSettings,
    configs: Sequence[tuple[LayerConfig, Any]],
    passes: int,
    calibration: dict[str, Any] | None,
) -> None:
    """Record ``configs``; with ``calibration``, time its whole models before, during and after."""
    if table.timing == TIMING_SESSION and not table.provenance.get("session_overhead_ms"):
        table.provenance["session_overhead_ms"] = round(recorder.session_overhead(), 6)
    if calibration is None:
        recorder.record(configs, passes=passes)
        return
    whole_settings = replace(settings, per_layer=False)
    points = [dict(point, wholes=[]) for point in calibration["points"]]

    def between() -> None:
        for point in points:
            point["wholes"].append(profiler.measure(point["artifact"], whole_settings).latency)

    # The whole model (at each calibration width) is timed before, during and after its layers, so
    # that the calibration sees the same conditions (load, temperature, clocks) as the entries do.
    between()
    recorder.record(configs, passes=passes, every=max(10, len(configs) * max(1, passes) // 6), between=between)
    between()
    table.models.append(
        calibration_record(table, calibration["input_shape"], calibration["name"], calibration["fingerprint"], points, calibration["configs"])
    )


def calibration_record(
    table: LatencyTable,
    input_shape: Sequence[int],
    name: str,
    fingerprint: str,
    points: Sequence[dict[str, Any]],
    configs: Sequence[LayerConfig],
) -> dict[str, Any]:
    """The calibration of one model: measured whole-model medians against the sums of the layers.

    Each point (the full model first, then uniformly pruned copies) brings its analysed layers
    (``specs``), ``macs`` and whole-model timings (``wholes``); it gets the median of those medians and
    its layer sum as the table predicts it. ``scale`` is the full model's ratio; predictions
    interpolate the ratio between points by layer sum (:func:`calibration_ratio`).
    """
    rows = []
    for point in points:
        layer_sum = table.predict_detail(list(point["specs"]), calibration="none").layer_sum_ms
        medians = [w.median for w in point["wholes"]]
        measured = statistics.median(medians)
        rows.append({
            "width": point["width"],
            "macs": point["macs"],
            "layer_sum_ms": round(layer_sum, 6),
            "measured_ms": round(measured, 6),
            "measurements_ms": [round(m, 6) for m in medians],
            "ratio": round(measured / layer_sum, 6) if layer_sum > 0 else 1.0,
        })
    full = rows[0]
    closest = min(points[0]["wholes"], key=lambda w: abs(w.median - full["measured_ms"]))
    return {
        "name": name,
        "input_shape": list(input_shape),
        "fingerprint": fingerprint,
        "families": sorted({c.family() for c in configs}),
        "layers": len(configs),
        "macs": full["macs"],
        "measured_ms": full["measured_ms"],
        "measured": {k: round(v, 6) if isinstance(v, float) else v for k, v in closest.to_dict().items()},
        "layer_sum_ms": full["layer_sum_ms"],
        "scale": full["ratio"],
        "offset_ms": round(full["measured_ms"] - full["layer_sum_ms"], 6),
        "points": rows,
        "date": _now(),
    }


