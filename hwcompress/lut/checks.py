"""The checks a LUT's calibration record must pass (:func:`calibration_checks`): stored with it when it is
recorded, and evaluated again on the record as predictions read it (summed against the table as it stands,
:meth:`hwcompress.lut.predict.TablePredictor.current_calibration`); and how a prediction reads the
record's ratio (:func:`calibration_ratio`, stored as :func:`ratio_digits` keeps it). Imports nothing of the LUT."""

from __future__ import annotations

from typing import Any

from hwcompress.measure.competition import WAITED

#: A narrower copy may measure this much slower than a wider one before the curve counts as non-monotone
#: (an int8 network's curve is nearly flat on a CPU: its widths measure within noise of each other).
MONOTONE_SLACK = 1.10
#: Whole-model timings of one width spread beyond this factor over the whole recording are reported
#: (1.3-1.8x is common on a shared 2-vCPU machine under load, where the median of them still serves).
SPREAD = 2.0
#: Calibration ratios (measured / layer sum) across widths further apart than this factor are suspect.
RATIO_SPREAD = 2.0


def calibration_checks(record: dict[str, Any]) -> list[str]:
    """What is wrong with a calibration, one sentence each (empty: nothing found).

    Checked: a narrower copy must not measure slower than a wider one (beyond 10%), the whole-model
    timings of one width must agree (spread within 2x over the whole recording), and the calibration
    ratios of the widths must lie within a factor of 2 of each other (a sum of layers that explains the
    full model but not its half-width copy is a recording, not a network, going wrong), and the recording must
    not have waited 5% of its time or more for a CPU held by other processes (``competition``).
    """
    rows = sorted(record.get("points") or [], key=lambda r: r["width"])
    problems = []
    for narrow, wide in zip(rows, rows[1:]):
        if narrow["measured_ms"] > wide["measured_ms"] * MONOTONE_SLACK:
            problems.append(f"the copy at width {narrow['width']:g} measured slower ({narrow['measured_ms']:.3f} ms) than the one "
                            f"at {wide['width']:g} ({wide['measured_ms']:.3f} ms)")
    for row in rows:
        times = [t for t in row.get("measurements_ms") or [] if t > 0]
        if len(times) >= 2 and max(times) / min(times) > SPREAD:
            problems.append(f"whole-model timings at width {row['width']:g} varied {max(times) / min(times):.1f}x during the recording")
    waited = (record.get("competition") or {}).get("waited_share")
    if waited is not None and waited >= WAITED:
        others = record["competition"].get("other_cpu_cores")
        problems.append(f"the recording waited {waited:.0%} of its time for a CPU held by other processes"
                        + (f" (they kept {others:.1f} of {record['competition'].get('cores')} cores busy)" if others is not None else ""))
    ratios = [r["ratio"] for r in rows if r.get("ratio", 0) > 0]
    if len(ratios) >= 2 and max(ratios) / min(ratios) > RATIO_SPREAD:
        problems.append(f"calibration ratios across widths range {min(ratios):.2f}-{max(ratios):.2f} (measured / sum of layers)")
    return problems


def ratio_digits(ratio: float) -> float:
    """A calibration scale as stored: ten significant digits. Six decimals (as times are kept) shifted a
    scale of 0.4 by up to 1.2e-6 of itself, so a calibrated prediction of the calibrating model itself
    no longer equalled its measurement."""
    return float(f"{ratio:.10g}")


def calibration_ratio(model: dict[str, Any], layer_sum: float) -> float:
    """measured / layer sum for a model whose layers sum to ``layer_sum``: interpolated between the
    recorded calibration points (full model and uniformly pruned copies) by layer sum, held constant
    beyond them; the full model's ``scale`` when only it was measured.

    Points the table prices at the same layer sum (a copy whose narrower layers still fill the same
    channel blocks: the test LUT's tiny model at 16x16, at width 1 and 0.5, on a CPU with 16-channel
    blocks) cannot be told apart by it, so the first recorded of them (the full model) stands for all:
    sorted by ratio as well, the tie went to the lower ratio, and the calibrating model itself was
    priced at its half-width copy's measurement (0.0106 ms for 0.0125 measured; a red CI run)."""
    first: dict[float, float] = {}
    for p in model.get("points", []):  # recorded order: the full model first
        if isinstance(p, dict) and float(p.get("layer_sum_ms", 0)) > 0:
            first.setdefault(float(p["layer_sum_ms"]), float(p["ratio"]))
    points = sorted(first.items())
    if len(points) < 2:
        return float(model["scale"])
    if layer_sum <= points[0][0]:
        return points[0][1]
    if layer_sum >= points[-1][0]:
        return points[-1][1]
    for (x0, r0), (x1, r1) in zip(points, points[1:]):
        if x0 <= layer_sum <= x1:
            t = 0.0 if x1 == x0 else (layer_sum - x0) / (x1 - x0)
            return r0 + t * (r1 - r0)
    return float(model["scale"])
