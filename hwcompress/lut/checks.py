"""The checks a LUT's calibration record must pass (:func:`calibration_checks`): stored with it when it is
recorded, and evaluated again on the record as predictions read it (summed against the table as it stands,
:meth:`hwcompress.lut.predict.TablePredictor.current_calibration`). Imports nothing of the LUT."""

from __future__ import annotations

from typing import Any

from hwcompress.measure.competition import BUSY_CORES

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
    full model but not its half-width copy is a recording, not a network, going wrong), and other processes
    on the recording machine must not have kept half a core or more busy on average meanwhile.
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
    busy = (record.get("competition") or {}).get("other_cpu_cores")
    if busy is not None and busy >= BUSY_CORES:
        problems.append(f"other processes kept {busy:.1f} of the machine's {record['competition'].get('cores')} cores busy on "
                        "average during the recording")
    ratios = [r["ratio"] for r in rows if r.get("ratio", 0) > 0]
    if len(ratios) >= 2 and max(ratios) / min(ratios) > RATIO_SPREAD:
        problems.append(f"calibration ratios across widths range {min(ratios):.2f}-{max(ratios):.2f} (measured / sum of layers)")
    return problems
