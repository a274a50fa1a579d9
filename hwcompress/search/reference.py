"""The size-matched reference a search times its students beside (``--reference matched``, the default).

A paired measurement cancels the machine's drift only as far as the two models drift together, and a
large teacher and a small student do not: a memory-bandwidth hog on the other core slowed a 2.4 ms
resnet18 teacher 2.7x and left its 0.15 ms student as it was, so a verdict taken as the student's ratio
to the teacher fell by 63% (``bench/verdict_stability.py``, docs/benchmarks.md). Before the anchors are
measured, the search therefore builds the uniform student that the cost model puts at the budget's
share of the teacher (quantized as the students are) and measures it on its own as the teacher was;
where the measurement lands more than :data:`RESIZE` from that share (the cost model is not anchored
yet), it is sized again from the measured error, up to :data:`SIZES` sizes, and the nearest is kept. It is added as a
reference (:meth:`~hwcompress.measure.compare.PairedMeasurement.add_reference`): every
student is then timed beside whichever of the two is nearer its size.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from hwcompress.search.scoring import build_student

#: The name the size-matched reference goes by in measurements and reports.
NAME = "size-matched reference"
#: A reference measured further than this factor from the budget's share of the teacher is sized again once,
#: by the measured error (the cost model before its anchors: a uniform resnet18 at 64 px predicted at 0.29x
#: of the teacher measured 0.18x).
RESIZE = 1.25
#: At most this many sizes are tried (each measured on its own: a small model, well under a second).
SIZES = 3


def add_matched_reference(measure: Any, teacher: Any, example: Any, cost_model: Any, target_ms: float,
                          quantized: Any, saved: dict[str, Any] | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Build and measure the size-matched reference, or reuse ``saved`` (a resumed run's record).

    Args:
        measure: the search's :class:`~hwcompress.measure.compare.PairedMeasurement`.
        cost_model: the latency cost model, not yet anchored (its prediction is used as a share of the
            teacher's, so its scale does not matter).
        target_ms: the search target; the reference is the uniform student predicted at its share of the
            teacher's measured latency.
        quantized: the search's quantized students, or None for float ones.

    Returns:
        ``{"keep", "predicted_share", "measured"}`` to save, or None when the target is not under the
        teacher (nothing to match).
    """
    if saved is not None:
        keep, share = {k: int(v) for k, v in saved["keep"].items()}, float(saved["predicted_share"])
        module = build_student(teacher, example, keep)
        measured = measure.add_reference(module, NAME, _file(module, quantized), saved["measured"])
        log(f"{NAME}: a uniform student predicted at {share:.2f}x the teacher, reused as measured ({measured['median']:.3f} ms)")
        return {**saved, "keep": dict(keep), "measured": measured}
    wanted = target_ms / measure.teacher_ms
    if not 0 < wanted < 1:
        return None
    teacher_cost = cost_model.teacher_cost()
    tries: list[tuple[dict[str, int], float, Any, dict[str, Any]]] = []
    aims: list[tuple[float, float]] = []  # (the share the cost model was asked for, the share measured), in logs
    aim = wanted
    for _ in range(SIZES):  # sized by the prediction; again while the measurement puts it far from the budget
        keep = cost_model.scaled_policy(cost_model.full_policy(), teacher_cost * aim)
        if any(keep == t[0] for t in tries):
            break
        module = build_student(teacher, example, keep)
        artifact = measure.artifact(module, NAME, _file(module, quantized, f"matched-reference-{len(tries)}"))
        measured = measure.measure_alone(artifact)
        tries.append((keep, cost_model.cost(keep) / teacher_cost, artifact, measured))
        got = measured["median"] / measure.teacher_ms
        if abs(math.log(got / wanted)) <= math.log(RESIZE):
            break
        aims.append((math.log(aim), math.log(got)))
        slope = 1.0  # how the measured share moves with the asked one: from the last two tries (a secant), else 1
        if len(aims) >= 2 and aims[-1][0] != aims[-2][0]:
            slope = min(5.0, max(0.2, (aims[-1][1] - aims[-2][1]) / (aims[-1][0] - aims[-2][0])))
        aim = min(1.0, math.exp(aims[-1][0] + (math.log(wanted) - aims[-1][1]) / slope))
    keep, share, artifact, measured = min(tries, key=lambda t: abs(math.log(t[3]["median"] / measure.teacher_ms / wanted)))
    measure.add_reference(artifact.module, NAME, artifact.onnx_path, measured)
    log(f"{NAME}: a uniform student predicted at {share:.2f}x the teacher" + (" (in int8)" if quantized is not None else "")
        + f", measured at {measured['median']:.3f} ms ({measured['median'] / measure.teacher_ms:.2f}x; the budget's target is "
        f"{wanted:.2f}x" + (f", {len(tries)} sizes tried" if len(tries) > 1 else "") + "); students near its size are timed "
        "beside it instead of the teacher")
    return {"keep": dict(keep), "predicted_share": round(share, 4), "measured": measured, "sizes_tried": len(tries)}


def _file(module: Any, quantized: Any, name: str = "matched-reference") -> Any:
    """The file the reference is timed from: its int8 model when the students are quantized; None: exported in float."""
    if quantized is None:
        return None
    _, result = quantized.quantize(module, name)
    return result.path
