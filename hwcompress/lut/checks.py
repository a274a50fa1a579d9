"""The checks a LUT's calibration record must pass (:func:`calibration_checks`): stored with it when it is
recorded, and evaluated again on the record as predictions read it (summed against the table as it stands,
:meth:`hwcompress.lut.predict.TablePredictor.current_calibration`). Imports nothing of the LUT."""

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
