"""Quantized students in the search (``--quantize``): built by ONNX Runtime's quantizer, scored and
measured as ONNX Runtime runs them.

Every int8 student is the Q/DQ model :func:`hwcompress.slim.quantize.quantize_onnx` writes from the
pruned float student (activation ranges calibrated on the first training images, per-channel
weights), so what the search scores, what the repair measures and what the user deploys are the same
kind of file.

**Scoring in the loop: ONNX Runtime itself.** Both ways were measured on the embedded ResNet-56 and 12
pruned students of it (``bench/quantized_scoring.py``; 2-core Xeon, one thread, 269 validation
images): exporting, quantizing and running the student in ONNX Runtime took 1.37-2.62 s (median 1.99),
a fake-quantized PyTorch copy (:mod:`hwcompress.slim.fake_quant`: the same per-channel weight
rounding, uint8 activations at the same points) 2.62-3.45 s (median 3.11): ONNX Runtime's int8 kernels
run the validation split faster than PyTorch's float ones on one thread. The fake-quant copy agreed
with ONNX Runtime's top-1 on 98.1-100% of the images (median 99.6%), its accuracy within 0.37 points,
Kendall tau 0.941 over the 13 models: a fair stand-in, but the runtime is exact and was the cheaper.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx

from hwcompress.errors import UserError
from hwcompress.search.anchors import Anchor, AnchoredLatency, anchor_latency, monotone_anchors
from hwcompress.search.precision import ALL_FLOAT, FLOAT, LOW, PrecisionPlan
from hwcompress.search.scoring import build_student, recalibrate_batchnorm, short_finetune
from hwcompress.slim.pruning import prune_channels
from hwcompress.slim.quantize import (
    CALIBRATION_IMAGES,
    QdqGraph,
    QuantizeResult,
    calibration_inputs,
    onnx_accuracy,
    quantize_module,
)

SCORING_NOTE = ("quantized students are scored by ONNX Runtime on their Q/DQ int8 model, as deployed (a "
                "fake-quantized PyTorch copy was the slower and less exact scorer: bench/quantized_scoring.py)")

LAYER_OPS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")


def candidate_precision(candidate: Any) -> dict[str, str]:
    """A candidate's group precision map (``{}``: every layer at the mode's default, int8)."""
    extra = getattr(candidate, "extra", None) or {}
    return dict(extra.get("precision") or {})


def measured_int8_teacher(anchors: Sequence[Mapping[str, Any]]) -> float | None:
    """The whole teacher in int8 as measured while anchoring (ms), or None where it was not."""
    return next((float(a["measured_ms"]) for a in anchors if a.get("name") == "teacher int8"), None)


def prefer_whole_int8(prepared: Any, best: Any, score: Callable[..., float], log: Callable[[str], None]) -> Any:
    """The whole teacher in int8 instead of the searched ``best`` when it measured under the budget's
    acceptance line while anchoring and scores at least as well: pruning on top of int8 is then what
    loses accuracy for nothing (int8 students need not get faster with fewer channels: on the 32x32
    ResNet-56 the smallest measured 1.112 ms, the whole int8 teacher 1.032 ms). ``best`` otherwise."""
    if prepared.quantized is None or not prepared.budget.is_latency or best.removed_units or best.model is not None:
        return best
    measured = measured_int8_teacher(prepared.anchors)
    if measured is None or measured > prepared.budget.acceptance:
        return best
    full = prepared.cost_model.full_policy()
    if best.keep == full and not candidate_precision(best):
        return best
    accuracy = score(full, {})
    if best.accuracy is not None and accuracy < best.accuracy:
        return best
    note = (f"the whole teacher in int8 measured {measured:.3f} ms while anchoring, under the budget, and scores "
            f"{accuracy:.2%} (the searched student: {'-' if best.accuracy is None else f'{best.accuracy:.2%}'}): kept unpruned")
    log(note)
    prepared.notes.append(note)
    return type(best)(full, [], None, accuracy, prepared.cost_model.cost(full), None, None, {"whole_int8": True})


def exchange_precisions(prepared: Any, best: Any, score: Callable[..., float],
                        log: Callable[[str], None]) -> tuple[Any, list[dict[str, Any]]]:
    """``--quantize mixed``: put float groups of the searched ``best`` in int8 where the time that frees,
    given back as channels, buys validation accuracy; the precision move of NetAdapt's local step, after
    the search and before the budget repair.

    A search that keeps a few groups in float pays for them with channels elsewhere (the clamp holds the
    joint cost), and in 30 episodes the agent has tried few of the 2^groups precision maps: on resnet18 at
    64 px, where int8 runs a layer in a third of its float time, mixed students kept 3-4 layers in float
    at 2.5-2.7x fewer parameters and lost to the all-int8 search by 5 points at a budget the int8
    teacher nearly meets. A trial puts one float group in int8 and grows channels back up to the
    student's predicted cost, capped at the search target (:meth:`~hwcompress.search.cost.CostModel.grown_policy`,
    the cheapest channels first; a group whose int8 layers cost more than its float ones at these widths
    is not tried), and is scored as the runtime runs it. The best trial replaces the student when it
    scores higher. Lazy greedy: after a move, the trials scored at the earlier student are scored again,
    best first, and a trial scored at the current student that does not gain is dropped; the exchange
    ends when none is left. That is at most one score per remaining group per move, usually about one
    per float group. One record per move is returned.

    The trials are compared at equal *predicted* cost, and int8 students are predicted less well than
    float ones (docs/benchmarks.md): the repair that follows measures the exchanged student and trims it
    if it runs over.
    """
    quantized = prepared.quantized
    if (quantized is None or not quantized.plan.choosable or not prepared.budget.is_latency or best.removed_units
            or best.model is not None):
        return best, []
    precision = candidate_precision(best)
    groups = quantized.plan.group_precision(precision)
    floating = [g for g in quantized.plan.choosable if groups.get(g) == FLOAT]
    if not floating:
        return best, []
    keep = prepared.cost_model.complete(best.keep)
    current = score(keep, precision)
    moves: list[dict[str, Any]] = []

    def trial(group: str) -> tuple[float, dict[str, str], dict[str, int]] | None:
        """``group`` in int8 with channels grown back to the student's predicted cost, scored (None: no cheaper)."""
        target = min(prepared.cost_model.at_precision(precision).cost(keep), prepared.budget.target)
        changed = {**precision, group: LOW}
        moved = prepared.cost_model.at_precision(changed)
        grown = moved.grown_policy(keep, target)
        if moved.cost(grown) > target * (1 + 1e-9):  # int8 is not always the cheaper (a few channels)
            return None
        return score(grown, changed), changed, grown

    # Lazy greedy: a trial scored at an earlier student is scored again only when it would win.
    trials = {group: trial(group) for group in floating}
    fresh = set(trials)
    while True:
        trials = {g: t for g, t in trials.items() if t is not None}
        if not trials:
            break
        group = max(trials, key=lambda g: trials[g][0])  # the first on ties
        if group not in fresh:
            trials[group] = trial(group)
            fresh.add(group)
            continue
        accuracy, changed, grown = trials.pop(group)
        if accuracy <= current:
            continue  # scored at this student and no gain: dropped; the stale ones may still gain
        before, predicted = prepared.cost_model.at_precision(precision).cost(keep), prepared.cost_model.at_precision(changed).cost(grown)
        moves.append({"group": group, "to": LOW, "accuracy_before": round(current, 6), "accuracy_after": round(accuracy, 6),
                      "predicted_before_ms": round(before, 4), "predicted_after_ms": round(predicted, 4),
                      "channels_added": sum(grown[g] - keep[g] for g in grown)})
        log(f"precision exchange: {group} to int8 with {moves[-1]['channels_added']} channels given back, validation "
            f"accuracy {current:.2%} -> {accuracy:.2%} at {predicted:.3f} ms predicted")
        precision, keep, current, fresh = changed, grown, accuracy, set()  # the other trials are stale now
    if not moves:
        return best, []
    extra = {**best.extra, "precision": dict(precision)}
    return type(best)(keep, [], best.episode, current, prepared.cost_model.at_precision(precision).cost(keep),
                      best.reward, None, extra), moves


#: The int8 copy replaces a mixed student over its budget that it does not fit when the mixed student's
#: measurement is off its prediction by this much more than the copy's (relative): the changes of precision
#: are then what the cost model misprices, and trimming channels at that precision follows a wrong price.
PRICED_WORSE = 0.03


def int8_instead(prepared: Any, keep: Mapping[str, int], measured_ms: float,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``--quantize mixed``, a student with float groups that measured over the budget's acceptance line:
    the same channels with every group in int8, measured. The search goes on with it (its precision
    becomes the student's; returns the repair record, with ``"to_int8": True``, and its measurement) when
    it is faster and either fits under the line (no channel lost) or is the better predicted of the two
    (the mixed student's measured/predicted over the copy's by more than :data:`PRICED_WORSE`); else the
    precision is left as it was, the repair trims the mixed student, and None is returned.

    Trimming channels cannot take away what changes of precision cost between float and int8 layers
    (a dequantize and a quantize, and the fusions the runtime loses there), and the cost model prices
    them least well at small widths: a resnet18 student at 64 px with 3 of 21 layers in float measured
    0.175 ms against 0.105 predicted, and four trims, each re-anchored on the last measurement, brought it
    to 0.137 ms for a 0.111 ms budget that the smallest all-int8 student (0.104 ms) met. A mixed student
    that its prediction prices as well as its int8 copy's is trimmed as before: its float groups were
    chosen for their accuracy."""
    quantized = prepared.quantized
    if quantized is None or not quantized.plan.choosable:
        return None
    precision = dict(quantized.precision)
    groups = quantized.plan.group_precision(precision)
    floating = [g for g in quantized.plan.choosable if groups.get(g) == FLOAT]
    if not floating:
        return None
    cost_model = prepared.cost_model
    prepared.cost_model, quantized.precision = cost_model.at_precision({}), {}
    measurement = prepared.measure(build_student(prepared.teacher, prepared.example, dict(keep)), "candidate-int8")
    after = measurement["median"]
    predicted, predicted_after = cost_model.cost(keep), prepared.cost_model.cost(keep)
    # measured over predicted, of the mixed student and of its int8 copy (0 where nothing was predicted)
    bias, bias_after = (measured_ms / predicted if predicted > 0 else 0.0), (after / predicted_after if predicted_after > 0 else 0.0)
    fits = after <= prepared.budget.acceptance
    mispriced = predicted > 0 and predicted_after > 0 and bias > (1 + PRICED_WORSE) * bias_after
    moved = ", ".join(floating)
    if after >= measured_ms or not (fits or mispriced):
        prepared.cost_model, quantized.precision = cost_model, precision
        why = (f"no faster than {measured_ms:.3f}" if after >= measured_ms else
               f"over the budget too and no better predicted ({bias_after:.2f}x its prediction, the mixed student {bias:.2f}x)")
        note = f"the mixed-precision student with its float groups ({moved}) in int8 too measured {after:.3f} ms, {why}: kept as it was"
        log(note)
        prepared.notes.append(note)
        return None
    why = "under the budget" if fits else f"{bias_after:.2f}x its prediction where the mixed student ran {bias:.2f}x its own"
    note = (f"the mixed-precision student measured {measured_ms:.3f} ms (predicted {predicted:.3f}), over the budget; with "
            f"its float groups ({moved}) in int8 too it measured {after:.3f} ms, {why}, so it goes on in int8")
    log(note)
    prepared.notes.append(note)
    record = {"measured_ms": measured_ms, "predicted_ms": round(predicted, 4), "to_int8": True,
              "float_groups": floating, "measured_after_ms": after, "predicted_after_ms": round(predicted_after, 4),
              "keep": dict(keep), "precision": {}}
    return record, measurement


def settle_precision(prepared: Any, best: Any, score: Callable[..., float], log: Callable[[str], None],
                     interrupted: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    """After the search: the precision exchange (:func:`exchange_precisions`; skipped after an interrupt,
    as fine-tuning is), then the whole int8 teacher where it fits and scores higher
    (:func:`prefer_whole_int8`). The exchange's records are returned only when its student is kept."""
    exchanged, moves = (best, []) if interrupted else exchange_precisions(prepared, best, score, log)
    kept = prefer_whole_int8(prepared, exchanged, score, log)
    return kept, (moves if kept is exchanged else [])


class QuantizedStudents:
    """Builds, scores and measures the int8 students of one search.

    Args:
        plan: which layers may run in int8 (:class:`~hwcompress.search.precision.PrecisionPlan`).
        input_shape: the students' input shape.
        calibration: model inputs the quantizer calibrates activation ranges on.

    Attributes:
        precision: the group precision map of the student being finished (set by
            :meth:`hwcompress.search.prepare.Prepared.use_precision`); measurements and scores without
            one use it.
    """

    def __init__(self, plan: PrecisionPlan, input_shape: Sequence[int], calibration: Sequence[Any],
                 reduce_range: bool = False, symmetric: bool = False) -> None:
        self.plan = plan
        #: 7-bit weights (:func:`~hwcompress.slim.quantize.reduced_weight_range`: an x86-64 device without VNNI).
        self.reduce_range = reduce_range
        #: Symmetric Q/DQ, signed activations with zero point 0 (:func:`~hwcompress.slim.quantize.symmetric_int8`:
        #: TensorRT); the int8 layers are then read off the Q/DQ graph, not off ONNX Runtime's CPU kernels.
        self.symmetric = symmetric
        self.input_shape = tuple(int(d) for d in input_shape)
        self.calibration = list(calibration)
        self.precision: dict[str, str] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="hwcompress-quantized-")
        self.teacher_result: QuantizeResult | None = None

    @classmethod
    def for_teacher(cls, mode: str, teacher: Any, input_shape: Sequence[int], train_set: Any, groups: Sequence[Any],
                    images: int = CALIBRATION_IMAGES, reduce_range: bool = False,
                    symmetric: bool = False) -> "QuantizedStudents":
        """Quantize the teacher once to learn which of its layers the runtime runs in int8.

        Raises:
            UserError: no layer of the model runs in int8 here.
        """
        calibration = calibration_inputs(train_set, images, input_shape)
        students = cls(PrecisionPlan(mode, []), input_shape, calibration, reduce_range, symmetric)
        _, result = students.quantize(teacher, "teacher", {}, check=True)
        if not result.int8_layers:
            listed = ", ".join(f"{k} ({v})" for k, v in list(result.float_layers.items())[:3])
            who = "the quantizer quantized" if symmetric else "ONNX Runtime runs"
            raise UserError(f"--quantize {mode}: {who} none of this model's layers in int8 ({listed}); drop --quantize")
        graph = QdqGraph(onnx.load(str(students.folder / "teacher_fp32.onnx")))
        students.plan = PrecisionPlan.build(mode, groups, result.int8_layers, result.float_layers, graph.realized)
        students.teacher_result = result
        return students

    @property
    def folder(self) -> Path:
        return Path(self._folder.name)

    def quantize(self, module: Any, name: str, precision: Mapping[str, str] | None = None,
                 folder: str | Path | None = None, check: bool = False) -> tuple[Path, QuantizeResult]:
        """``module`` exported to ``{name}_fp32.onnx`` and quantized to ``{name}.onnx`` (in ``folder``, else
        a temporary one), the layers that ``precision`` keeps in float left out."""
        precision = self.precision if precision is None else precision
        floating = self.plan.float_layers_for(precision) if self.plan.int8_layers else []
        return quantize_module(module, self.input_shape, folder or self.folder, self.calibration, floating,
                               name=name, check=check, reduce_range=self.reduce_range, symmetric=self.symmetric)

    def accuracy(self, module: Any, dataset: Any, precision: Mapping[str, str] | None = None,
                 limit: int | None = None) -> float:
        """Top-1 accuracy of ``module`` quantized, as ONNX Runtime runs it."""
        _, result = self.quantize(module, "scored", precision)
        return onnx_accuracy(result.path, dataset, limit)

    def scorer(self, teacher: Any, example: Any, groups: Sequence[Any], train_set: Any, val_set: Any,
               bn_calibration: int, finetune_steps: int = 0, seed: int = 0) -> Callable[..., float]:
        """The search's accuracy of a policy for quantized students, memoised: the teacher pruned to
        ``keep``, distilled in float for ``finetune_steps`` (0: no training), BatchNorm re-estimated,
        quantized with ``precision`` (default :attr:`precision`) and scored by ONNX Runtime on ``val_set``."""
        cache: dict[tuple, float] = {}

        def score(keep: dict[str, int], precision: Mapping[str, str] | None = None) -> float:
            chosen = dict(self.precision if precision is None else precision)
            key = (*(keep.get(g.name, g.channels) for g in groups), *sorted(chosen.items()))
            if key not in cache:
                student = prune_channels(teacher, example, keep)
                short_finetune(student, teacher, train_set, finetune_steps, seed)
                recalibrate_batchnorm(student, train_set, bn_calibration)
                cache[key] = self.accuracy(student, val_set, chosen)
            return cache[key]

        return score

    def anchor(self, cost_model: Any, measure: "QuantizedMeasurement", teacher: Any, example: Any,
               target_ms: float | None, log: Callable[[str], None], table: Any = None,
               middle: bool = True) -> tuple[list[Anchor], str]:
        """Anchor the latency cost model on quantized students measured now: the int8 teacher and the
        smallest int8 student (what the cost model's base view prices). For ``mixed`` also the float
        teacher and the smallest float student, and each precision's part of a prediction follows its
        own anchored line (:class:`PrecisionAnchoredLatency`). ``middle``: as
        :func:`~hwcompress.search.anchors.anchor_latency`'s (a uniform int8 student at ``target_ms``)."""
        saved = self.precision
        self.precision = {}
        try:
            int8_teacher = measure(teacher, "teacher-int8")["median"]
            used, note = anchor_latency(cost_model, lambda keep, name: measure(prune_channels(teacher, example, keep), name)["median"],
                                        int8_teacher, target_ms, log, middle)
        finally:
            self.precision = saved
        used = [Anchor(f"{a.name} int8", a.predicted_ms, a.measured_ms) for a in used]
        if self.plan.choosable and table is not None:
            raw = getattr(cost_model.latency_of, "raw", cost_model.latency_of)
            floating = cost_model.at_precision(ALL_FLOAT)
            smallest = measure.paired(prune_channels(teacher, example, cost_model.min_policy()), "smallest-fp32")["median"]
            candidates = [Anchor("teacher fp32", float(raw(floating.layers_for(cost_model.full_policy(), priced=True))),
                                 float(measure.teacher_ms)),
                          Anchor("smallest fp32", float(raw(floating.layers_for(cost_model.min_policy(), priced=True))),
                                 float(smallest))]
            used = self.install_anchors(cost_model, table, [*used, *candidates])
            note += (f"; float part on the fp32 teacher {measure.teacher_ms:.3f} ms and smallest student {smallest:.3f} ms "
                     f"(predicted {candidates[0].predicted_ms:.3f}, {candidates[1].predicted_ms:.3f})")
        return used, note + " (students quantized to int8)"

    def install_anchors(self, cost_model: Any, table: Any, anchors: Sequence[Anchor]) -> list[Anchor]:
        """Install measured anchors (named ``... int8`` and ``... fp32``) in ``cost_model``; a resumed run
        passes the ones it saved. Returns those kept (each precision's in order)."""
        raw = getattr(cost_model.latency_of, "raw", cost_model.latency_of)
        curves, kept_all = {}, []
        for precision in (LOW, "fp32"):
            mine = [a for a in anchors if a.name.endswith(f" {precision}")]
            kept, _ = monotone_anchors(mine)
            if not kept and mine:
                kept = mine[:1]
            if kept:
                curves[precision] = AnchoredLatency(raw, kept)
                kept_all += sorted(kept, key=lambda a: a.predicted_ms)
        if len(curves) == 2:
            cost_model.set_latency(PrecisionAnchoredLatency(raw, table, curves))
        elif curves:
            cost_model.set_latency(next(iter(curves.values())))
        return kept_all

    def layer_rows(self, cost_model: Any, keep: Mapping[str, int], precision: Mapping[str, str],
                   result: QuantizeResult | None) -> list[dict[str, Any]]:
        """Each conv/linear layer of the student: kept input and output channels and its precision
        (as ONNX Runtime runs it when ``result`` says)."""
        planned = self.plan.layer_precisions(precision)
        rows = []
        for spec in cost_model.layers_for(keep):
            if spec.op not in LAYER_OPS:
                continue
            chosen = planned.get(spec.name, "fp32")
            if result is not None and result.int8_layers:
                chosen = LOW if spec.name in result.int8_layers else "fp32"
            row = {"layer": spec.name, "op": spec.op, "cin": spec.cin, "cout": spec.cout, "precision": chosen}
            why = (result.float_layers if result is not None else self.plan.float_layers).get(spec.name)
            if chosen != LOW and why:
                row["reason"] = why
            rows.append(row)
        return rows


class PrecisionAnchoredLatency:
    """A latency function for students in several precisions: the LUT's prediction split by precision,
    each part mapped through its own precision's anchored line.

    An anchored line is ``c + s * predicted`` between two measured students of one precision (the
    teacher and the smallest student): ``s`` scales what shrinks with the layers, ``c`` is what does
    not. A student whose predicted parts are ``x_p`` (summing to ``X``) costs
    ``sum_p (x_p / X) * c_p + s_p * x_p`` (plus its precision changes, scaled by the mean slope): exactly
    each precision's line for a student all in that precision. One curve for all (the teacher in fp32,
    the int8 students) was tried first and bent the float students' prices through int8 points: on the
    embedded ResNet-56 it priced the smallest float student at 1.59 ms where it measured 1.32, and
    refused a budget the int8 search met.
    """

    def __init__(self, raw: Callable[[list[Any]], float], table: Any, curves: Mapping[str, AnchoredLatency]) -> None:
        self.raw = raw
        self.table = table
        self.curves = dict(curves)

    def _line(self, precision: str, at: float) -> tuple[float, float]:
        curve = self.curves.get(precision) or next(iter(self.curves.values()))
        step = max(abs(at) * 1e-3, 1e-6)
        slope = (curve.map(at + step) - curve.map(at)) / step
        return curve.map(at) - slope * at, slope

    def __call__(self, rows: list[Any]) -> float:
        detail = self.table.predict_detail(list(rows))
        parts = dict(detail.precision_ms) or {self.table.precision: detail.total_ms}
        whole = sum(parts.values())
        if whole <= 0:
            return 0.0
        total = slopes = 0.0
        for precision, part in parts.items():
            intercept, slope = self._line(precision, whole)
            total += part / whole * intercept + slope * part
            slopes += slope * part / whole
        return total + max(detail.total_ms - whole, 0.0) * slopes


class QuantizedMeasurement:
    """A :class:`~hwcompress.measure.compare.PairedMeasurement` whose students are quantized first.

    Called like the paired measurement (``measure(module, name, rounds=None)``), so the anchors, the
    budget repair and the verdict measure int8 students without knowing it; ``onnx_path`` measures a
    quantized file built beforehand (the deployed ``student.onnx``). Everything else (the teacher's
    reference, ``teacher_ms``) is the paired measurement's: the budget stays the float teacher's.
    """

    def __init__(self, paired: Any, students: QuantizedStudents) -> None:
        self.paired = paired
        self.students = students

    def __call__(self, module: Any, name: str, rounds: int | None = None, onnx_path: str | Path | None = None,
                 **until: Any) -> dict[str, Any]:
        if onnx_path is None:
            _, result = self.students.quantize(module, name)
            onnx_path = result.path
        measured = self.paired(module, name, rounds, onnx_path=onnx_path, **until)
        measured["precision"] = "int8 (Q/DQ)"
        return measured

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.paired, attribute)
