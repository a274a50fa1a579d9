"""The size-matched reference a search times its students beside (``--reference matched``, the default).

A paired measurement cancels the machine's drift only as far as the two models drift together, and a
large teacher and a small student do not: another process sharing the measuring core (the scheduler's
turns cut into every 2.4 ms run and few 0.15 ms ones) slowed a resnet18 teacher 2.7x and left its
0.15 ms student as it was, so a verdict taken as the student's ratio to the teacher fell by 63%
(``bench/verdict_stability.py``, docs/benchmarks.md). Before the anchors are
measured, the search therefore builds the uniform student that the cost model puts at the budget's
share of the teacher (quantized as the students are) and measures it on its own as the teacher was;
where the measurement lands more than :data:`RESIZE` from that share (the cost model is not anchored
yet), it is sized again from the measured error, up to :data:`SIZES` sizes, and the nearest is kept. It is added as a
reference (:meth:`~hwcompress.measure.compare.PairedMeasurement.add_reference`): every
student is then timed beside whichever of the two is nearer its size.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

from hwcompress.measure.compare import measure_interleaved, paired_ratios
from hwcompress.search.scoring import build_student

#: The name the size-matched reference goes by in measurements and reports.
NAME = "size-matched reference"
#: A reference measured further than this factor from the budget's share of the teacher is sized again (up to
#: :data:`SIZES` sizes), by the measured error (the cost model before its anchors: a uniform resnet18 at 64 px predicted at 0.29x
#: of the teacher measured 0.18x).
RESIZE = 1.25
#: The teacher timed beside the reference further than this factor from its own latency: the note of :func:`footing`.
FOOTING = 1.15
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
        ``{"keep", "predicted_share", "measured", "sizes_tried", "teacher_now_ms", "paired_ratio_to_teacher"}``
        and ``"note"`` when the teacher ran far from its own latency (:func:`footing`), to save; or None when
        the target is not under the teacher (nothing to match).
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
    log(f"measuring a {NAME} (a uniform student near the budget, on its own, as the teacher was)")
    tries: list[tuple[dict[str, int], float, Any, dict[str, Any]]] = []
    points: list[tuple[float, float]] = []  # (the predicted share of each try, its measured share), in logs
    aim = wanted
    for _ in range(SIZES):  # sized by the prediction; again while the measurement puts it far from the budget
        keep = cost_model.scaled_policy(cost_model.full_policy(), teacher_cost * aim)
        if any(keep == t[0] for t in tries):
            break
        module = build_student(teacher, example, keep)
        artifact = measure.artifact(module, NAME, _file(module, quantized, f"matched-reference-{len(tries)}"))
        measured = measure.measure_alone(artifact)
        predicted = cost_model.cost(keep) / teacher_cost
        tries.append((keep, predicted, artifact, measured))
        got = measured["median"] / measure.teacher_ms
        if abs(math.log(got / wanted)) <= math.log(RESIZE) or predicted <= 0 or got <= 0:
            break
        points.append((math.log(predicted), math.log(got)))
        slope = 1.0  # how the measured share moves with the predicted one: from the last two tries (a secant), else 1
        if len(points) >= 2 and points[-1][0] != points[-2][0]:
            slope = (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0])
            if slope <= 0:  # noise, or students that stop getting faster: no direction to follow
                break
        aim = min(1.0, math.exp(points[-1][0] + (math.log(wanted) - points[-1][1]) / min(5.0, max(0.2, slope))))
    keep, share, artifact, measured = min(tries, key=lambda t: abs(math.log(t[3]["median"] / measure.teacher_ms / wanted)))
    measure.add_reference(artifact.module, NAME, artifact.onnx_path, measured)
    log(f"{NAME}: a uniform student predicted at {share:.2f}x the teacher" + (" (in int8)" if quantized is not None else "")
        + f", measured at {measured['median']:.3f} ms ({measured['median'] / measure.teacher_ms:.2f}x; the budget's target is "
        f"{wanted:.2f}x" + (f", {len(tries)} sizes tried" if len(tries) > 1 else "") + "); students near its size are timed "
        "beside it instead of the teacher")
    record = {"keep": dict(keep), "predicted_share": round(share, 4), "measured": measured, "sizes_tried": len(tries)}
    return {**record, **footing(measure, artifact, log)}


def footing(measure: Any, artifact: Any, log: Callable[[str], None], rounds: int = 3) -> dict[str, Any]:
    """The teacher timed again beside the reference: whether the machine still runs it as when its own latency
    was measured (before the LUT was recorded, or by the interrupted run). The two scales of the verdicts, the
    teacher's latency and the reference's, are only on one footing when it does; a note says when it does not."""
    reference, teacher = measure_interleaved(measure.profiler, [artifact, measure.references[0].artifact], measure.settings, rounds)
    teacher_now = statistics.median(m.latency.median for m in teacher)
    ratio = statistics.median(paired_ratios(reference, teacher))
    record: dict[str, Any] = {"teacher_now_ms": teacher_now, "paired_ratio_to_teacher": ratio}
    drift = teacher_now / measure.teacher_ms
    if abs(math.log(drift)) > math.log(FOOTING):
        record["note"] = (f"the teacher ran x{drift:.2f} its own latency when the {NAME} was measured ({teacher_now:.3f} against "
                          f"{measure.teacher_ms:.3f} ms): the machine is not as it was when the budget was set, so students "
                          "timed beside the reference and beside the teacher stand on different footings; a quieter machine "
                          "(or --reference teacher) keeps one")
        log(record["note"])
    return record
def _file(module: Any, quantized: Any, name: str = "matched-reference") -> Any:
    """The file the reference is timed from: its int8 model when the students are quantized; None: exported in float."""
    if quantized is None:
        return None
    _, result = quantized.quantize(module, name)
    return result.path
