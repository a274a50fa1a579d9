"""The budget repair: when the kept student measures over a latency budget, trim it until it fits.

The cost model is exact at its anchors (the teacher and the smallest student, measured in the run),
but between them a per-layer sum can miss what the network pays as a whole: on an AVX-512 CPU, where
ONNX Runtime works in blocks of 16 channels, a ResNet-56 student mixing 8- and 16-channel layers paid
layout conversions its layers' timings did not show, and measured 1.186 ms where the anchored LUT said
0.807. Trimming against such a prediction does nothing (it already "fits"), so the repair:

1. measures the student (interleaved with the reference nearest its size: the teacher or the size-matched one);
2. stops when it is under the acceptance line (the budget less half the margin);
3. when the measurement and the prediction disagree by more than the noise the measurement itself
   showed (the spread of its per-round ratios, at least 3%), adds the student as an anchor of the cost
   model (a measured point of its curve), so the prediction agrees with the measurement there;
4. trims channels, a step at a time where the search's accuracy loses least per unit of latency saved
   (:meth:`~hwcompress.search.cost.CostModel.trimmed_policy`, NetAdapt's rule; compared with other
   repairs in ``bench/repair_quality.py``), until the prediction fits the search target scaled by
   whatever bias the cost model still has at this student, and measures again.

It gives up, with a note, when trimming cannot change the student any more, after ``attempts``
rounds, or after ``max_seconds``; each round is one log line.

The mirror image, the grow step: a student that measures under 95% of the budget (short searches, or
a cost model that over-predicts, left budget unused: mobilenet_v2 ended at 0.22x for a 0.6x budget)
gets channels back where they buy the most of the search's accuracy per unit of latency added
(:meth:`~hwcompress.search.cost.CostModel.grown_policy`), and is measured again; a grown student that
measures over the acceptance line is not kept, and the next try grows half as far (a small student's
time is overhead-bound, so the cost model's bias measured on it overstates the room above it). A
repaired student grows too: one trim step of a wide group can take more than the overshoot (the README's
ResNet-56 went from 0.743 ms, over a 0.741 ms budget, to 0.638), so a trimmed student that measures
under 95% of the budget grows back, to no student priced within 3% of the one that measured over the line
(priced as measured when the repair re-anchored the cost model on it, which it does when the two disagree).

A grown student is measured once more at the verdict, after fine-tuning, with more rounds; two
measurements of one student can differ by a few percent (seen: a mixed-precision mobilenet_v2 student
grown to 0.100 ms for a 0.104 ms budget measured 0.105 ms at the verdict). When the verdict puts the
grown student over the budget, the search finishes a smaller student of the grow step's chain instead
(:func:`undo_grow`): the last one that, read as the verdict read the grown one, is under the acceptance
line, or the student the grow step started from (measured under 95% of the budget); when that one's
verdict misses too, a smaller one again, down to the start. Growing was to use room, not to risk it.

Off the device (a latency predicted from the device's LUT, nothing measured), the grow step works on the
prediction alone: a student the cost model puts under 95% of the budget gets channels back, by the same
rule, up to the search target (the budget less its margin), once. The prediction is all that such a run
reports, so it is also all the grow step can trust; nothing is trimmed, since the search already kept the
student within the target by the same cost model.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from hwcompress.search.agent import Candidate
from hwcompress.search.anchors import Anchor, AnchoredLatency, monotone_anchors
from hwcompress.search.prepare import Prepared
from hwcompress.search.quantized import int8_instead
from hwcompress.search.scoring import build_student

#: The least relative disagreement between measurement and prediction that re-anchors the cost model.
MIN_DISAGREEMENT = 0.03
#: A student measuring under this share of the budget grows (the grow step).
GROW_BELOW = 0.95
ATTEMPTS = 4
MAX_SECONDS = 900.0


def _reanchor(prepared: Prepared, keep: dict[str, int], measured_ms: float, label: str) -> str | None:
    """Add the measured student as an anchor of the cost model; a note, or None when it would break the
    curve's order (then the curve is left as it was).

    A cost model whose latency is not one anchored line (``--quantize mixed``: each precision's part on
    its own line, :class:`~hwcompress.search.quantized.PrecisionAnchoredLatency`) is wrapped in an
    anchored curve over that prediction, held at the whole teacher and the smallest student where it
    already agrees with itself (identity points: two nearby repairs must not set a slope for every
    student), bent through each repaired student; the precision anchors stay in the report."""
    cost_model = prepared.cost_model
    curve = cost_model.latency_of
    wraps = getattr(curve, "wraps_prediction", False)
    if isinstance(curve, AnchoredLatency):
        raw, anchors = curve.raw, list(curve.anchors)
    else:
        raw, wraps = curve, True
        ends = [float(raw(cost_model.layers_for(policy, priced=True)))
                for policy in (cost_model.min_policy(), cost_model.full_policy())]
        anchors = [Anchor("smallest (as predicted)", ends[0], ends[0]), Anchor("teacher (as predicted)", ends[1], ends[1])]
    predicted_raw = float(raw(cost_model.layers_for(keep, priced=True)))
    if predicted_raw <= 0:
        return None
    kept, dropped = monotone_anchors([*anchors, Anchor(label, predicted_raw, measured_ms)])
    if dropped and dropped[-1].name == label:
        return None
    anchored = AnchoredLatency(raw, kept)
    anchored.wraps_prediction = wraps  # type: ignore[attr-defined]
    cost_model.set_latency(anchored)
    if wraps:  # the precision anchors stay; the repaired students map their prediction
        prepared.anchors = [a for a in prepared.anchors if "maps" not in a] + [
            {**a.to_dict(), "maps": "the per-precision anchored prediction"} for a in kept if a.name.startswith("repair")]
    else:
        prepared.anchors = [a.to_dict() for a in sorted(kept, key=lambda a: a.predicted_ms)]
    return f"cost model re-anchored on the repaired student: {measured_ms:.3f} ms measured (predicted {predicted_raw:.3f})"


def fit_to_budget(prepared: Prepared, candidate: Candidate, log: Callable[[str], None],
                  score: Callable[[dict[str, int]], float] | None = None,
                  attempts: int = ATTEMPTS, max_seconds: float = MAX_SECONDS) -> list[dict[str, Any]]:
    """Measure ``candidate`` on the device and repair it while it is over the budget, or grow it while it is
    well under (module docstring); off the device, grow it on the prediction.

    Only channel policies are repaired (a student with removed units is priced by its own cost model,
    and a trained one would lose its training). Returns one record per repair, the last one's ``keep``
    being the repaired policy (empty when the first measurement fits).
    """
    budget = prepared.budget
    if not budget.is_latency or candidate.removed_units or candidate.model is not None:
        return []
    if prepared.measure is None:
        return _grow_predicted(prepared, dict(candidate.keep), log, score)
    repairs: list[dict[str, Any]] = []
    keep = dict(candidate.keep)
    over_keep: dict[str, int] | None = None  # the last student trimmed after measuring over the line
    started = time.perf_counter()
    for attempt in range(attempts):
        measurement = prepared.measure(build_student(prepared.teacher, prepared.example, keep), "candidate")
        measured = measurement["median"]
        # Accept with half the margin to spare: the final measurement repeats this one, and a student
        # a hair under the budget flips over on the next run's noise (seen: 0.94 then 0.949 ms for 0.946).
        if measured <= budget.acceptance:
            break
        switched = int8_instead(prepared, keep, measured, log) if attempt == 0 else None
        if switched is not None:  # --quantize mixed: the float groups in int8 too measured faster
            repairs.append(switched[0])
            measurement, over_keep = switched[1], None
            measured = measurement["median"]
            if measured <= budget.acceptance:
                break
        predicted = prepared.cost_model.cost(keep)
        ratio = measurement["paired_ratio"]
        noise = max(MIN_DISAGREEMENT, (measurement["ratio_max"] - measurement["ratio_min"]) / ratio if ratio else 0.0)
        record: dict[str, Any] = {"measured_ms": measured, "predicted_ms": round(predicted, 4)}
        if abs(measured - predicted) / measured > noise:
            note = _reanchor(prepared, keep, measured, f"repair {len(repairs) + 1}")
            if note:
                log(note)
                prepared.notes.append(note)
                record["reanchored"] = True
        # What the cost model must predict for the student to measure at the target: the target scaled by
        # the model's bias at this student (none left after a re-anchoring on it).
        target = budget.target * prepared.cost_model.cost(keep) / measured
        trimmed = prepared.cost_model.trimmed_policy(keep, target, score=score)
        record.update(retarget_ms=round(target, 4), predicted_after_ms=round(prepared.cost_model.cost(trimmed), 4),
                      keep=dict(trimmed))
        if trimmed == keep:
            note = (f"the budget repair stopped: the student measures {measured:.3f} ms, over {budget.acceptance:.3f} ms, "
                    f"and the cost model finds nothing left to trim (it predicts {predicted:.3f} ms)")
            log(note)
            prepared.notes.append(note)
            break
        repairs.append(record)
        log(f"student measured {measured:.3f} ms (predicted {predicted:.3f}), over {budget.acceptance:.3f} ms (the "
            f"{budget.limit:.3f} ms budget less half the margin): trimmed to {record['predicted_after_ms']:.3f} ms predicted "
            f"(repair {len(repairs)}, {attempt + 1} of at most {attempts} measurements)")
        over_keep, keep = keep, dict(trimmed)
        if time.perf_counter() - started > max_seconds:
            note = f"the budget repair stopped after {max_seconds:.0f} s; the last repaired student is kept"
            log(note)
            prepared.notes.append(note)
            break
    else:
        return repairs
    if measured > budget.acceptance:
        return repairs  # stopped over the line (nothing left to trim, or out of time): nothing to grow
    if not repairs:
        return _grow(prepared, keep, measured, log, score, attempts)
    if time.perf_counter() - started > max_seconds:
        return repairs  # the repair took its time: no grow measurements on top
    # Trimmed to fit, and maybe past it: a trim step of a wide group can take more than the overshoot
    # (the README's ResNet-56 went from 0.743 ms to 0.638 for a 0.741 ms budget, docs/benchmarks.md). Grow
    # back, to no student priced within the least disagreement that counts of the one that measured over
    # the line (whose price is its measurement when the repair re-anchored the cost model on it).
    ceiling = math.inf if over_keep is None else prepared.cost_model.cost(over_keep) * (1 - MIN_DISAGREEMENT)
    return repairs + _grow(prepared, keep, measured, log, score, attempts, ceiling=ceiling)


def _grow(prepared: Prepared, keep: dict[str, int], measured: float, log: Callable[[str], None],
          score: Callable[[dict[str, int]], float] | None, attempts: int,
          ceiling: float = math.inf) -> list[dict[str, Any]]:
    """The grow step (module docstring): records with ``"grown": True``, the last ``keep`` kept; ``ceiling``
    caps the predicted cost it grows to (after an overshoot, the next try grows at most half as far)."""
    budget = prepared.budget
    keep = prepared.cost_model.complete(keep)  # as grown_policy returns it
    grown: list[dict[str, Any]] = []
    for attempt in range(attempts):
        if measured >= GROW_BELOW * budget.limit:
            break
        target = min(budget.target * prepared.cost_model.cost(keep) / measured, ceiling)
        larger = prepared.cost_model.grown_policy(keep, target, score=score)
        if larger == keep:
            break
        trial = prepared.measure(build_student(prepared.teacher, prepared.example, larger), "grown")["median"]
        record = {"measured_ms": measured, "predicted_ms": round(prepared.cost_model.cost(keep), 4), "grown": True,
                  "retarget_ms": round(target, 4), "predicted_after_ms": round(prepared.cost_model.cost(larger), 4),
                  "measured_after_ms": trial}
        if trial > budget.acceptance:
            # The cost model's bias is not the same at every size (small students are overhead-bound):
            # try half the step before giving up.
            ceiling = (prepared.cost_model.cost(keep) + prepared.cost_model.cost(larger)) / 2
            log(f"grown student measured {trial:.3f} ms, over {budget.acceptance:.3f} ms: trying half the step"
                if attempt + 1 < attempts else
                f"grown student measured {trial:.3f} ms, over {budget.acceptance:.3f} ms: the smaller one is kept")
            continue
        log(f"student measured {measured:.3f} ms, under {GROW_BELOW:.0%} of the {budget.limit:.3f} ms budget: grown to "
            f"{trial:.3f} ms measured (grow step {attempt + 1})")
        grown.append({**record, "keep": dict(larger)})
        keep, measured = larger, trial
    return grown


def _grow_predicted(prepared: Prepared, keep: dict[str, int], log: Callable[[str], None],
                    score: Callable[[dict[str, int]], float] | None) -> list[dict[str, Any]]:
    """The grow step on the cost model's prediction, for a device predicted from its LUT (module docstring)."""
    budget = prepared.budget
    keep = prepared.cost_model.complete(keep)  # as grown_policy returns it
    predicted = prepared.cost_model.cost(keep)
    if predicted >= GROW_BELOW * budget.limit:
        return []
    larger = prepared.cost_model.grown_policy(keep, budget.target, score=score)
    if larger == keep:
        return []
    after = prepared.cost_model.cost(larger)
    log(f"student predicted at {predicted:.3f} ms, under {GROW_BELOW:.0%} of the {budget.limit:.3f} ms budget: grown to "
        f"{after:.3f} ms predicted (nothing is measured on {prepared.descriptor.name} from here)")
    return [{"predicted_ms": round(predicted, 4), "grown": True, "source": "predicted",
             "retarget_ms": round(budget.target, 4), "predicted_after_ms": round(after, 4), "keep": dict(larger)}]


def undo_grow(document: dict[str, Any], repairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """When the measured verdict puts a grown student over the budget, what to report of the undone grow
    (with its log line, ``note``); None when the student keeps (met, not grown, or not measured).

    The verdict read the grown student ``grown_verdict_ms / grown_measured_ms`` times its grow-step
    measurement; the student finished instead is the last of the chain (the student the grow step started
    from, then each grown one) whose own grow-step measurement, read the same way, is under the acceptance
    line (the starting student when none is): ``kept_grow_steps`` of them. ``trims`` says how many of
    ``repairs`` come before the grow steps, so the finished student is ``repairs[trims + kept_grow_steps - 1]``
    (the searched student when that index is -1)."""
    verdict = document.get("verdict") or {}
    if document.get("budget_met") or verdict.get("source") != "measured" or not repairs:
        return None
    trims = len(repairs)
    while trims and repairs[trims - 1].get("grown") and "measured_after_ms" in repairs[trims - 1]:
        trims -= 1
    if trims == len(repairs) or any(r.get("grown") for r in repairs[:trims]):
        return None
    grown_ms, limit = repairs[-1]["measured_after_ms"], verdict["limit"]
    reading = verdict["value"] / grown_ms
    acceptance = limit * (1 - document.get("budget", {}).get("margin", 0.0) / 2)
    chain = [repairs[trims]["measured_ms"]] + [r["measured_after_ms"] for r in repairs[trims:-1]]
    kept = max([k for k, ms in enumerate(chain) if ms * reading <= acceptance], default=0)
    digits = 3 if round(verdict["value"], 3) != round(limit, 3) else 4  # "0.296 over 0.296" hid why it was over
    which = ("the student before the grow step" if kept == 0 else
             f"the student of grow step {kept} (of {len(chain)}), {chain[kept] * reading:.3f} ms at the verdict's reading,")
    note = (f"the grown student measured {verdict['value']:.{digits}f} ms at the verdict, over the {limit:.{digits}f} ms budget (the grow "
            f"step had measured it at {grown_ms:.3f} ms: the verdict read it {reading:.2f}x that); {which} measured at {chain[kept]:.3f} ms, "
            "is fine-tuned and measured instead")
    return {"note": note, "grown_verdict_ms": verdict["value"], "grown_measured_ms": grown_ms, "start_measured_ms": chain[0],
            "finished_measured_ms": chain[kept], "grow_steps": len(repairs) - trims, "kept_grow_steps": kept, "trims": trims}
