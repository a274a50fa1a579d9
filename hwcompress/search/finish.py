"""The end of a search: build the kept student, fine-tune it by distillation, measure it on the device,
and assemble the ``hwcompress.search/1`` document (written with its artifacts when there is a folder).

With ``--quantize`` the fine-tuned float student is quantized (:mod:`hwcompress.search.quantized`):
``student.onnx`` is the deployable Q/DQ int8 model, ``student_fp32.onnx`` its float original; the
accuracies before and after fine-tuning are the int8 model's as ONNX Runtime runs it (the float ones
are reported beside them), and the verdict times the int8 file.
"""

from __future__ import annotations

import copy
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hwcompress import __version__
from hwcompress.files import write_atomic
from hwcompress.measure.competition import Competition
from hwcompress.model.analysis import analyze
from hwcompress.model.data import has_label_list
from hwcompress.model.export import export_onnx
from hwcompress.model.training import evaluate
from hwcompress.search.agent import Candidate
from hwcompress.search.config import VERDICT_ROUNDS
from hwcompress.search.prepare import Prepared
from hwcompress.search.quantized import SCORING_NOTE, candidate_precision
from hwcompress.search.report import RESULT_SCHEMA, policy_document, write_report
from hwcompress.search.scoring import build_student, recalibrate_batchnorm
from hwcompress.slim.distill import distill
from hwcompress.slim.quantize import onnx_accuracy
from hwcompress.slim.reconstruct import reconstruct_least_squares


@dataclass
class Finished:
    """The kept student and the result document."""

    student: Any
    document: dict[str, Any]


#: The learning rate of a second fine-tuning, after a first one at distill's default lowered the
#: validation accuracy: a pruned student far from its teacher's optimum can be thrown out by the first
#: steps at 0.05 (the README's student: 89.2% -> 15.6% after 2 epochs at 0.05, 96.3% at 0.01).
RETRY_LR = 0.01


def finetune(student: Any, prepared: Prepared, notes: list[str], progress: bool) -> dict[str, Any]:
    """Distil ``student`` from the teacher for ``--finetune-epochs``; when the validation split says it
    made the student worse, once more from the untuned weights at :data:`RETRY_LR`, and undone if that
    does not help either (seen: 0.1 epoch, one step at the initial learning rate, 95% -> 50%)."""
    config = prepared.config
    untuned = copy.deepcopy(student.state_dict())
    val_before = evaluate(student, prepared.splits.val)
    info = distill(student, prepared.teacher, prepared.splits.train, epochs=config.finetune_epochs,
                   seed=config.seed, progress=progress, description="fine-tune (KD)")
    val_after = evaluate(student, prepared.splits.val)
    info.update(val_accuracy_before=val_before, val_accuracy_after=val_after, kept="fine-tuned")
    if val_after >= val_before:
        return info
    first = val_after
    student.load_state_dict(untuned)
    retry = distill(student, prepared.teacher, prepared.splits.train, epochs=config.finetune_epochs, lr=RETRY_LR,
                    seed=config.seed, progress=progress, description=f"fine-tune (KD, lr {RETRY_LR:g})")
    val_after = evaluate(student, prepared.splits.val)
    info.update(retry, val_accuracy_first_try=first, retry_lr=RETRY_LR, val_accuracy_after=val_after,
                kept=f"fine-tuned at lr {RETRY_LR:g}")
    if val_after >= val_before:
        notes.append(f"fine-tuning at the default rate lowered the validation accuracy ({100 * val_before:.2f}% -> "
                     f"{100 * first:.2f}%); at lr {RETRY_LR:g} it reached {100 * val_after:.2f}%, kept")
        return info
    student.load_state_dict(untuned)
    info["kept"] = "before fine-tuning"
    notes.append(f"fine-tuning lowered the validation accuracy ({100 * val_before:.2f}% -> {100 * first:.2f}%, and "
                 f"{100 * val_after:.2f}% at lr {RETRY_LR:g}); the student is the one before fine-tuning "
                 "(give more --finetune-epochs)")
    return info


def save_student(student: Any, input_shape: tuple[int, ...], policy: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the student three ways: a full module (hwcompress / torch.load), TorchScript (plain
    PyTorch, no hwcompress needed) and the policy (to re-apply with ``--policy``)."""
    files = {}
    bundle = {"model": student, "input_shape": list(input_shape), "policy": policy, "format": "hwcompress.student/1"}
    write_atomic(out / "student.pt", lambda tmp: torch.save(bundle, tmp))
    files["weights"] = "student.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(copy.deepcopy(student).eval(), torch.zeros(*input_shape))
        write_atomic(out / "student.ts", lambda tmp: scripted.save(str(tmp)))
        files["torchscript"] = "student.ts"
    except Exception:  # TorchScript is a convenience; the .pt and .onnx files are the contract
        pass
    import json

    write_atomic(out / "policy.json", json.dumps(policy, indent=1) + "\n")
    files["policy"] = "policy.json"
    return files


def _verdict(prepared: Prepared, measured: dict[str, Any] | None, predicted: float | None,
             counted: float | None) -> dict[str, Any]:
    """The number that decides ``budget_met``, where it came from, and how far over it is."""
    budget = prepared.budget
    if not budget.is_latency:
        value, source = counted, "counted"
    elif measured is not None:
        value, source = measured["median"], "measured"
    else:
        value, source = predicted, "predicted"
    facts = (measured or {}).get("facts") or {}
    text = f"{budget.format(value)} against {budget.format(budget.limit)}"
    noise: dict[str, Any] = {}
    if source == "measured":
        text = (f"{budget.format(value)} (median of {measured['rounds']} rounds interleaved with the "
                f"{measured.get('reference', 'teacher')}) "
                f"against {budget.format(budget.limit)}")
        if "decided" in measured:
            low, high = measured["interval_ms"]
            noise = {"decided": measured["decided"], "interval_ms": [low, high], "interval_coverage": measured["interval_coverage"]}
            if not measured["decided"]:
                text += (f"; within this machine's noise: the {measured['interval_coverage']:.0%} interval of the median, "
                         f"{low:.3f}-{high:.3f} ms, holds the budget")
    return {"source": source, "value": value, "limit": budget.limit, "met": budget.met_by(value),
            "over_by_percent": budget.over_by_percent(value), "text": text, **noise,
            "profiler": (measured or {}).get("profiler"), "host": facts.get("host")}


def finish(prepared: Prepared, candidate: Candidate, history: list[dict[str, Any]], *, out: Path | None,
           started: float, search_seconds: float, interrupted: bool, log: Callable[[str], None], progress: bool,
           extra: dict[str, Any] | None = None, notes: list[str] | None = None) -> Finished:
    """Build ``candidate``'s student, fine-tune it, measure it on the device, report.

    The candidate's trained network (N2N's) is fine-tuned as it is; otherwise the student is cut from
    the teacher (and refitted by least squares with ``--reconstruct``).
    """
    config = prepared.config
    notes = notes if notes is not None else prepared.notes
    if candidate.model is not None:
        student = copy.deepcopy(candidate.model)
    else:
        student = build_student(prepared.teacher, prepared.example, candidate.keep, candidate.removed_units)
        if config.reconstruct:
            train = prepared.splits.train
            calibration = torch.stack([train[i][0] for i in range(min(256, len(train)))])
            reconstruct_least_squares(student, prepared.teacher, calibration)
    recalibrate_batchnorm(student, prepared.splits.train, config.bn_calibration)
    accuracy_before = evaluate(student, prepared.splits.test)
    quantized, precision = prepared.quantized, candidate_precision(candidate)
    float_accuracy: dict[str, Any] = {}
    if quantized is not None:  # the int8 student's accuracy as ONNX Runtime runs it, not its float stand-in's
        float_accuracy["accuracy_float_before_finetune"] = accuracy_before
        accuracy_before = quantized.accuracy(student, prepared.splits.test, precision)
    finetune_info: dict[str, Any] = {}
    if config.finetune_epochs > 0 and not interrupted:
        log(f"fine-tuning the student by distillation for {config.finetune_epochs:g} epoch{'s' * (config.finetune_epochs != 1)}")
        finetune_info = finetune(student, prepared, notes, progress)
    accuracy_after = evaluate(student, prepared.splits.test)
    student.eval()
    shape = prepared.input_shape
    student_analysis = analyze(student, shape)
    deployed = None
    if quantized is not None:
        _, deployed = quantized.quantize(student, "student", precision, folder=out, check=True)
        float_accuracy["accuracy_float"] = accuracy_after
        accuracy_after = onnx_accuracy(deployed.path, prepared.splits.test)
        log(f"quantized the student: {len(deployed.int8_layers)} layers in int8, test accuracy "
            f"{100 * accuracy_after:.2f}% as ONNX Runtime runs it ({100 * float_accuracy['accuracy_float']:.2f}% in float)")

    measured = None
    if prepared.measure is not None:
        most = prepared.config.verdict_rounds
        more = f", up to {most} while the budget is inside the noise" if prepared.budget.is_latency and most > VERDICT_ROUNDS else ""
        beside = "the teacher" if prepared.matched_reference is None else "the reference nearest its size"
        log(f"measuring the student on {prepared.descriptor.name} ({VERDICT_ROUNDS} rounds interleaved with {beside}{more})")
        # The verdict gets more rounds than the search's checks: it is the number the user is told.
        deployed_file = {"onnx_path": deployed.path} if deployed is not None else {}
        until = {"decide_ms": prepared.budget.limit, "max_rounds": most} if prepared.budget.is_latency else {}
        measured = prepared.measure(student, "student", rounds=VERDICT_ROUNDS, **deployed_file, **until)
        # What other processes here got in the way meanwhile, as the measurement recorded it.
        busy = Competition.from_dict(measured["competition"]).note("the student's verdict was measured") \
            if measured.get("competition") else None
        if busy:
            notes.append(busy + " (its ratio to the reference beside it holds better than either time)")
    budget = prepared.budget
    cost_model = prepared.cost_model
    predicted_cost = cost_model.cost(candidate.keep) if not candidate.removed_units else candidate.cost
    predicted_latency = predicted_cost if budget.is_latency else None
    counted = None
    if not budget.is_latency:
        counted = student_analysis.macs if budget.metric == "macs" else student_analysis.params
    verdict = _verdict(prepared, measured, predicted_latency, counted)

    policy = policy_document(candidate.keep, candidate.removed_units, precision, prepared.config.quantize)
    artifacts: dict[str, Any] = {}
    if out is not None:
        if deployed is None:
            export_onnx(student, shape, out / "student.onnx")
        else:
            artifacts["onnx_fp32"] = "student_fp32.onnx"
        artifacts["onnx"] = "student.onnx"
        artifacts.update(save_student(student, shape, policy, out))
    policy_rows = [
        {"group": g.name, "channels": g.channels, "kept": candidate.keep.get(g.name, g.channels),
         "ratio": round(candidate.keep.get(g.name, g.channels) / g.channels, 4)}
        for g in prepared.groups
    ]
    quantization: dict[str, Any] = {}
    if quantized is not None:
        groups = quantized.plan.group_precision(precision)
        for row in policy_rows:
            row["precision"] = groups.get(row["group"], "fp32")
        quantization = {"quantization": {
            "mode": config.quantize, "format": "ONNX Q/DQ, opset 17, "
            + ("symmetric int8 activations (zero point 0)" if quantized.symmetric else "uint8 activations")
            + ", int8 per-channel weights"
            + (" in 7 bits (reduce_range: no VNNI on this x86-64 CPU)" if quantized.reduce_range else ""),
            "reduce_range": quantized.reduce_range, "symmetric": quantized.symmetric,
            "calibration_images": deployed.calibration_images, "int8_layers": len(deployed.int8_layers),
            "float_layers": deployed.float_layers, "scoring": SCORING_NOTE},
            "layers": quantized.layer_rows(cost_model, candidate.keep, precision, deployed)}
    teacher_measured = prepared.teacher_measured
    all_int8 = quantized is not None and not quantized.plan.choosable
    document = {
        "schema": RESULT_SCHEMA,
        "agent": config.agent,
        "device": {**prepared.descriptor.to_dict(), "facts": (teacher_measured or {}).get("facts", {})},
        "budget": budget.to_dict(),
        "budget_text": str(budget),
        "teacher": {
            "latency_ms": teacher_measured["median"] if teacher_measured else None,
            "latency": teacher_measured and {k: v for k, v in teacher_measured.items() if k != "facts"},
            # A --quantize int8 cost model prices int8 students (fitted on them in context): the float
            # teacher it measured has no prediction of its own there; the whole teacher in int8 has.
            "predicted_latency_ms": cost_model.teacher_cost() if budget.is_latency and not all_int8 else None,
            **({"predicted_latency_ms_int8": cost_model.cost(cost_model.full_policy())} if budget.is_latency and all_int8 else {}),
            "accuracy": prepared.teacher_meta.get("test_accuracy"),
            "val_accuracy": prepared.teacher_meta.get("val_accuracy"),
            "macs": sum(layer.macs for layer in prepared.layers),
            "params": sum(p.numel() for p in prepared.teacher.parameters()),
            **({"trained_here": prepared.teacher_meta["trained"]} if "trained" in prepared.teacher_meta else {}),
        },
        "student": {
            "latency_ms": measured["median"] if measured else None,
            "latency": measured and {k: v for k, v in measured.items() if k != "facts"},
            "predicted_latency_ms": predicted_latency,
            "predicted_cost": predicted_cost,
            "accuracy": accuracy_after,
            "accuracy_before_finetune": accuracy_before,
            "val_accuracy_during_search": candidate.accuracy,
            "macs": student_analysis.macs,
            "params": student_analysis.params,
            "removed_units": list(candidate.removed_units),
            **float_accuracy,
        },
        "budget_met": bool(verdict["met"]),
        "verdict": verdict,
        "reachable": {"teacher": prepared.bounds.get("teacher"), "smallest_student": prepared.bounds.get("smallest")},
        "cost_model_anchors": prepared.anchors,
        # The uniform student near the budget that students near its size were timed beside (None: the teacher alone).
        "matched_reference": prepared.matched_reference and {
            "predicted_share": prepared.matched_reference["predicted_share"],
            "measured_ms": prepared.matched_reference["measured"]["median"],
            "round_medians_ms": prepared.matched_reference["measured"].get("round_medians_ms"),
            "sizes_tried": prepared.matched_reference.get("sizes_tried"),
            "teacher_now_ms": prepared.matched_reference.get("teacher_now_ms"),
            "paired_ratio_to_teacher": prepared.matched_reference.get("paired_ratio_to_teacher"),
            "keep": prepared.matched_reference["keep"]},
        # Every paired measurement of the run taken again after a slow spell of the machine (anchors, repairs, verdict).
        "slow_spells": list(getattr(prepared.measure, "spells", None) or []),
        "cost_model_context": ({k: v for k, v in prepared.context.to_dict().items() if k != "lines"}
                               | {"layers": prepared.context.layers}
                               if prepared.context is not None else None),
        "lut": prepared.lut_path,  # the table the latency cost model predicted from (None: MACs or parameters)
        "budget_margin": {"value": verdict["value"], "source": verdict["source"],
                          "over_by": max(0.0, verdict["value"] - budget.limit),
                          "over_by_percent": verdict["over_by_percent"]},
        "policy": policy_rows,
        "episodes": len(history),
        "best_episode": candidate.episode,
        **({"kept_whole_int8": True} if candidate.extra.get("whole_int8") else {}),
        "search_seconds": round(search_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "episodes_per_second": round(len(history) / search_seconds, 4) if search_seconds else None,
        "scoring": {"val_images": len(prepared.val_set), "bn_calibration_images": min(config.bn_calibration, len(prepared.splits.train)),
                    "val_subset": _subset_kind(prepared.val_set, prepared.splits.val),
                    "finetune_steps": config.reward_finetune_steps, "racing": prepared.racing,
                    **({} if prepared.quantized is not None else
                       {"precision": prepared.scoring_precision[0], "precision_reason": prepared.scoring_precision[1]})},
        "finetune": {k: v for k, v in finetune_info.items() if isinstance(v, (int, float, str))},
        "interrupted": interrupted,
        "config": config.to_dict(),
        "notes": notes,
        "versions": {"hwcompress": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "artifacts": artifacts,
        **quantization,
        **(extra or {}),
    }
    if out is not None:
        write_report(document, history, out, plots=config.plots)
    return Finished(student, document)


def _subset_kind(scored: Any, val: Any) -> str:
    """How the reward's validation images were chosen (``--val-limit``): all of them, a stratified
    subset, or the first N where the split has no label list to stratify by."""
    if len(scored) >= len(val):
        return "all"
    return "stratified" if has_label_list(val) else "first"
