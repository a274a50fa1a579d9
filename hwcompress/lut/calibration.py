"""The whole-model side of a LUT: time the model whole beside its layers, and store the ratio.

A sum of separately timed layers misses what lies between them (residual adds, pooling, cache misses,
per-run overhead). So the recorder also times the whole model, and copies of it uniformly pruned to a
few widths, before, during and after its layers; the ratio between each measurement and the sum of its
layers is the calibration stored with the table and applied to every prediction (interpolated between
the widths by layer sum, :func:`hwcompress.lut.predict.calibration_ratio`). Needs no PyTorch.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import replace
from typing import Any, Sequence

from hwcompress.lut.checks import MONOTONE_SLACK, calibration_checks
from hwcompress.lut.keys import TIMING_KERNELS, TIMING_SESSION, LayerConfig, spec_record
from hwcompress.lut.recorder import Recorder, kernel_overhead
from hwcompress.lut.table import LatencyTable, _now
from hwcompress.measure.competition import watch
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
    here: bool = True,
) -> None:
    """Record ``configs``; with ``calibration``, time its whole models before, during and after. ``here``: the
    device is this machine, whose other processes' share of the CPUs meanwhile the calibration records
    (``competition``, :mod:`hwcompress.measure.competition`)."""
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
    with watch(here) as watched:  # and what other processes on this machine took meanwhile
        between()
        recorder.record(configs, passes=passes, every=max(10, len(configs) * max(1, passes) // 6), between=between)
        between()
        # Whole-model timings are repeated until the last ones agree and the widths order as they should
        # (a few extra rounds at most): a busy moment during the recording must not become the calibration.
        for _ in range(EXTRA_ROUNDS):
            if not _unsettled(points):
                break
            between()
    if (all(config.precision is None for config in calibration["configs"])
            and any(entry.kernels and entry.config.precision is None for entry in table.entries.values())):
        # Entries that count their kernels are priced net of the node profiler's cost, so the calibration
        # must be summed with it known (the full model, in the table's precision, is the probe's model).
        measure_kernel_overhead(table, profiler, settings, points[0]["artifact"])
    record = calibration_record(table, calibration["input_shape"], calibration["name"], calibration["fingerprint"], points,
                                calibration["configs"])
    if watched.result is not None:
        record["competition"] = watched.result.to_dict()
    record["checks"] = calibration_checks(record)
    table.models.append(record)


#: At most this many extra rounds of whole-model timings when the last ones disagree.
EXTRA_ROUNDS = 4
#: The last whole-model timings of one width agree when their spread (max / min) is below this.
AGREE = 1.15


def _unsettled(points: Sequence[dict[str, Any]]) -> bool:
    """Whether the whole-model timings still disagree: the last three of a width spread beyond
    :data:`AGREE`, or the medians not ordered by width."""
    for point in points:
        last = [w.median for w in point["wholes"][-3:]]
        if len(last) >= 2 and min(last) > 0 and max(last) / min(last) > AGREE:
            return True
    medians = sorted(((p["width"], statistics.median(w.median for w in p["wholes"])) for p in points), key=lambda x: x[0])
    return any(narrow > wide * MONOTONE_SLACK for (_, narrow), (_, wide) in zip(medians, medians[1:]))


def lacks_kernel_overhead(table: LatencyTable) -> bool:
    """Whether ``table`` times kernels under the node profiler and has not measured its cost yet."""
    return table.timing == TIMING_KERNELS and "kernel_overhead_ms" not in table.provenance


def may_measure_kernel_overhead(table: LatencyTable) -> bool:
    """:func:`lacks_kernel_overhead`, and measuring it now reprices no calibration: a table that prices
    entries per kernel (``kernel_counts``) with a calibration already summed without the cost (its probe
    failed) keeps its entries as timed."""
    return lacks_kernel_overhead(table) and not (table.provenance.get("kernel_counts") and table.models)


def measure_kernel_overhead(table: LatencyTable, profiler: Any, settings: ProfileSettings, artifact: Any) -> None:
    """Store what the node profiler adds to each kernel it times (``kernel_overhead_ms``,
    :func:`hwcompress.lut.recorder.kernel_overhead`, on ``artifact``, the whole model) in a table of
    kernel timings that lacks it: entries that count their kernels are priced net of it, once per kernel,
    and off-path entries (priced as timed) once. Before the calibration, whose points are summed with
    those prices. A probe that fails costs the table the term, not the recording."""
    if not may_measure_kernel_overhead(table):
        return
    try:
        overhead = kernel_overhead(profiler, artifact, replace(settings, precision=table.precision))
    except Exception as error:  # noqa: BLE001 - an optional probe: the entries are recorded without it
        warnings.warn(f"the node-profiler overhead probe failed ({type(error).__name__}: {error}); the entries "
                      "keep it", stacklevel=2)
        return
    if overhead is not None:
        table.provenance["kernel_overhead_ms"] = overhead
        table.invalidate()


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
        medians = [w.median for w in point["wholes"]]
        measured = round(statistics.median(medians), 6)  # the ratio is of the time as stored
        layer_sum, ratio = table.predictor.point_sum_and_ratio(point["specs"], measured)
        rows.append({
            "width": point["width"],
            "macs": point["macs"],
            "layer_sum_ms": round(layer_sum, 6),
            "measured_ms": measured,
            "measurements_ms": [round(m, 6) for m in medians],
            "ratio": ratio,
            # Its layers, so that predictions sum it against the table as it stands (entries recorded,
            # merged or timed again later reprice them: TablePredictor.current_calibration).
            "specs": [spec_record(spec) for spec in point["specs"]],
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


