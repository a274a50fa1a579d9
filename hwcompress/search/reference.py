"""The size-matched reference a search times its students beside (``--reference matched``, the default).

A paired measurement cancels the machine's drift only as far as the two models drift together, and a
large teacher and a small student do not: a memory-bandwidth hog on the other core slowed a 2.4 ms
resnet18 teacher 2.7x and left its 0.15 ms student as it was, so a verdict taken as the student's ratio
to the teacher fell by 63% (``bench/verdict_stability.py``, docs/benchmarks.md). Before the anchors are
measured, the search therefore builds the uniform student that the cost model puts at the budget's
share of the teacher (quantized as the students are), measures it on its own as the teacher was, and
adds it as a reference (:meth:`~hwcompress.measure.compare.PairedMeasurement.add_reference`): every
student is then timed beside whichever of the two is nearer its size.
"""

from __future__ import annotations

from typing import Any, Callable

from hwcompress.search.scoring import build_student

#: The name the size-matched reference goes by in measurements and reports.
NAME = "size-matched reference"


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
    else:
        share = target_ms / measure.teacher_ms
        if not 0 < share < 1:
            return None
        teacher_cost = cost_model.teacher_cost()
        keep = cost_model.scaled_policy(cost_model.full_policy(), teacher_cost * share)
        share = cost_model.cost(keep) / teacher_cost
    module = build_student(teacher, example, keep)
    onnx_path = None
    if quantized is not None:
        _, result = quantized.quantize(module, "matched-reference")
        onnx_path = result.path
    measured = measure.add_reference(module, NAME, onnx_path, None if saved is None else saved["measured"])
    log(f"{NAME}: a uniform student predicted at {share:.2f}x the teacher"
        + (" (in int8)" if quantized is not None else "") + f", {'reused' if saved else 'measured'} at {measured['median']:.3f} ms; "
        "students near its size are timed beside it instead of the teacher")
    return {"keep": dict(keep), "predicted_share": round(share, 4), "measured": measured}
