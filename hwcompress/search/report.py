"""What a search tells people: summary.md, the closing table, policy.json, the plots.

The result document itself (schema ``hwcompress.search/1``) is assembled by
:mod:`hwcompress.search.finish`; everything here renders it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from hwcompress.errors import UserError
from hwcompress.files import write_atomic, write_json
from hwcompress.plots import PLOTS_HINT, has_matplotlib, search_plots

RESULT_SCHEMA = "hwcompress.search/1"
POLICY_FORMAT = "hwcompress.policy/1"


def policy_document(keep: dict[str, int], removed_units: list[str], precision: dict[str, str] | None = None,
                    quantize: str | None = None) -> dict[str, Any]:
    """What ``policy.json`` holds and ``--policy`` reads back (``quantize``: the run's --quantize mode;
    ``precision``: a mixed-precision student's group precisions, re-applied with ``--quantize mixed``)."""
    document: dict[str, Any] = {"format": POLICY_FORMAT, "keep": dict(keep), "removed_units": list(removed_units)}
    if quantize:
        document["quantize"] = quantize
    if precision:
        document["precision"] = dict(precision)
    return document


def load_policy(path: str | Path) -> dict[str, Any]:
    """Read a ``policy.json`` written by a search (one-line errors for anything else)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"policy file {path} not found") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read policy file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT or not isinstance(data.get("keep"), dict):
        raise UserError(f"{path} is not a hwcompress policy (expected format {POLICY_FORMAT!r} with a 'keep' map)")
    try:
        keep = {str(k): int(v) for k, v in data["keep"].items()}
    except (TypeError, ValueError):
        raise UserError(f"policy file {path}: every 'keep' value must be a whole number of channels") from None
    if any(v < 1 for v in keep.values()):
        raise UserError(f"policy file {path}: every group keeps at least one channel")
    precision = data.get("precision") or {}
    if not isinstance(precision, dict) or any(p not in ("fp32", "int8") for p in precision.values()):
        raise UserError(f"policy file {path}: 'precision' must map group names to fp32 or int8")
    quantize = data.get("quantize")
    if quantize not in (None, "int8", "mixed"):
        raise UserError(f"policy file {path}: 'quantize' must be int8 or mixed")
    return {"keep": keep, "removed_units": [str(u) for u in data.get("removed_units", [])],
            "precision": {str(k): str(v) for k, v in precision.items()}, "quantize": quantize}


def write_plots(document: dict[str, Any], history: list[dict[str, Any]], out: Path) -> list[str]:
    """The search folder's plots; skipped with a note when matplotlib is missing."""
    if not has_matplotlib():
        document["notes"].append(f"plots skipped: matplotlib is not installed ({PLOTS_HINT})")
        return []
    return search_plots(document, history, out)


def write_report(document: dict[str, Any], history: list[dict[str, Any]], out: Path, plots: bool = True) -> None:
    """history.json, the plots (unless ``plots`` is False: ``--no-plots``), summary.md, and result.json
    last: a result.json in the folder means everything beside it is complete."""
    artifacts = document["artifacts"]
    write_json(history, out / "history.json")
    artifacts["history"] = "history.json"
    artifacts["plots"] = write_plots(document, history, out) if plots else []
    if not plots:
        document["notes"].append("plots not written (--no-plots)")
    artifacts["summary"] = "summary.md"
    write_atomic(out / "summary.md", summary_markdown(document))
    write_json(document, out / "result.json")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def verdict_text(doc: dict[str, Any]) -> str:
    """One sentence: met or not, by which number, measured where."""
    verdict = doc["verdict"]
    met = "met" if doc["budget_met"] else f"NOT met (over by {verdict['over_by_percent']:.1f}%)"
    how = {
        "measured": f"measured on {doc['device']['name']}" + (f" ({verdict['host']})" if verdict.get("host") else ""),
        "predicted": f"predicted from the device's LUT, not measured: this machine is not {doc['device']['name']}",
        "counted": "counted exactly",
    }[verdict["source"]]
    return f"budget {met}: {verdict['text']} ({how})"


def _teacher_predicted(teacher: dict[str, Any], ms: Callable[[float | None], str] = _ms) -> str:
    """The teacher's predicted latency; in a --quantize int8 run, the whole teacher's in int8 (so labelled)."""
    if teacher.get("predicted_latency_ms") is None and teacher.get("predicted_latency_ms_int8") is not None:
        return f"{ms(teacher['predicted_latency_ms_int8'])} (in int8)"
    return ms(teacher.get("predicted_latency_ms"))


def _best(doc: dict[str, Any]) -> str:
    """Which student the result is: an episode's, the whole teacher in int8, or a re-applied policy's."""
    if doc.get("best_episode") is not None:
        return f"episode {doc['best_episode']}"
    if doc.get("kept_whole_int8"):
        return "none of them; the whole teacher in int8 was kept"
    return "a re-applied policy" if not doc.get("episodes") else "none recorded"


def summary_markdown(doc: dict[str, Any]) -> str:
    t, s = doc["teacher"], doc["student"]
    lines = [
        f"# hwcompress search: {doc['agent']} on {doc['device']['name']}",
        "",
        f"Budget: {doc['budget_text']}. **{verdict_text(doc)[0].upper() + verdict_text(doc)[1:]}.**",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| latency, measured | {_ms(t['latency_ms'])} | {_ms(s['latency_ms'])} |",
        f"| latency, predicted by the cost model | {_teacher_predicted(t)} | {_ms(s['predicted_latency_ms'])} |",
        f"| test accuracy | {100 * (t['accuracy'] or 0):.2f}% | {100 * s['accuracy']:.2f}% (before fine-tuning {100 * s['accuracy_before_finetune']:.2f}%) |",
        f"| MACs | {t['macs']:,} | {s['macs']:,} |",
        f"| parameters | {t['params']:,} | {s['params']:,} |",
        "",
        f"{doc['episodes']} episodes in {doc['search_seconds']:.0f} s (best: {_best(doc)}); total {doc['total_seconds']:.0f} s."
        + (" **Interrupted**: this is the best student so far, not fine-tuned." if doc["interrupted"] else "")
        + (f" Each scored student was distilled from the teacher for {steps} step{'s' * (steps != 1)} before its accuracy counted "
           "(`--reward-finetune-steps`)." if (steps := (doc.get("scoring") or {}).get("finetune_steps")) else ""),
    ]
    if s.get("latency"):
        latency = s["latency"]
        beside = latency.get("reference", "teacher")  # results written before size-matched references: the teacher
        ratio = latency.get("paired_ratio", latency.get("paired_ratio_to_teacher"))
        scale = latency.get("reference_ms", latency["teacher_reference_ms"])
        lines += ["", f"The student's latency is the median of {latency['rounds']} rounds interleaved with the {beside}: "
                  f"{ratio:.3f} x the {beside}'s own latency {scale:.3f} ms (round ratios {latency['ratio_min']:.3f}-"
                  f"{latency['ratio_max']:.3f})" + ("; the reference is a uniform student near the budget, measured on its own "
                                                    "before the anchors, because other processes' load slows a large teacher and a small "
                                                    "student by different factors" if beside != "teacher" else "") + "."]
        if "interval_ms" in latency:
            low, high = latency["interval_ms"]
            lines[-1] += (f" Its {latency['interval_coverage']:.0%} confidence interval (order statistics of the round ratios) "
                          f"is {low:.3f}-{high:.3f} ms")
            if latency.get("extra_rounds"):
                lines[-1] += f"; {latency['extra_rounds']} rounds were added because the interval held the budget"
            if latency.get("slow_spell"):
                spell = latency["slow_spell"]
                slowdowns = spell.get("reference_slowdowns", spell.get("teacher_slowdowns"))
                lines[-1] += (f"; the machine had a slow spell (the {beside} ran x{slowdowns[0]:.2f} its own latency), so "
                              f"it was measured {spell['tries']} times, a pause apart, and the try whose {beside} ran fastest kept")
            if latency.get("decided") is False:
                lines[-1] += ": the verdict is inside this machine's noise, and another measurement may say otherwise"
            lines[-1] += "."
    files = [f"`{v}`" for v in doc["artifacts"].values() if isinstance(v, str)]
    if files:
        lines += ["", "Files: " + ", ".join(files) + ", plots: " + ", ".join(f"`{p}`" for p in doc["artifacts"].get("plots", []))]
    for move in doc.get("precision_exchanges") or []:
        back = (f"the time it freed came back as {move['channels_added']} channels" if move["channels_added"]
                else "no channels fitted in the time it freed")
        lines.append(f"\nPrecision exchange: `{move['group']}` went from float to int8 and {back}; validation accuracy "
                     f"{move['accuracy_before']:.2%} -> {move['accuracy_after']:.2%} at {move['predicted_after_ms']:.3f} ms predicted.")
    numbers = {True: 0, False: 0}  # repairs and grow steps counted apart (a trimmed student may grow back)
    for repair in doc.get("budget_repairs") or []:
        numbers[bool(repair.get("grown"))] += 1
        number = numbers[bool(repair.get("grown"))]
        if repair.get("grown") and repair.get("source") == "predicted":
            lines.append(f"\nGrow step {number}: the student was predicted at {repair['predicted_ms']:.3f} ms, under 95% of "
                         f"the budget; channels came back where they buy the most validation accuracy per millisecond, up "
                         f"to {repair['predicted_after_ms']:.3f} ms predicted (nothing was measured on the device).")
            continue
        if repair.get("to_int8"):
            lines.append(f"\nRepair {number}: the mixed-precision student measured {repair['measured_ms']:.3f} ms (predicted "
                         f"{repair['predicted_ms']:.3f}), over the budget less half the margin; with its "
                         f"{len(repair['float_groups'])} float groups in int8 too it measured {repair['measured_after_ms']:.3f} ms, "
                         "and went on in int8.")
            continue
        if repair.get("grown"):
            lines.append(f"\nGrow step {number}: the student measured {repair['measured_ms']:.3f} ms, under 95% of the "
                         f"budget; channels came back where they buy the most validation accuracy per millisecond, and "
                         f"it measured {repair['measured_after_ms']:.3f} ms.")
            continue
        lines.append(f"\nRepair {number}: the student measured {repair['measured_ms']:.3f} ms (predicted {repair['predicted_ms']:.3f}), "
                     "over the budget less half the margin"
                     + ("; the cost model was re-anchored on that measurement" if repair.get("reanchored") else "")
                     + f"; trimmed where it loses the least validation accuracy to {repair['predicted_after_ms']:.3f} ms "
                     "predicted, and measured again.")
    undone = doc.get("grow_undone")
    if undone:
        lines.append(f"\nGrow undone: the grown student measured {undone['grown_verdict_ms']:.3f} ms at the verdict, over the "
                     f"budget, so " + (f"the student of grow step {undone['kept_grow_steps']}" if undone.get("kept_grow_steps") else
                                   f"the {_before_growing(doc, undone)}student from before the grow step")
                     + f" ({undone.get('finished_measured_ms', undone['start_measured_ms']):.3f} ms when the grow step measured it) "
                     "was fine-tuned and measured instead; the numbers above are that student's.")
    for note in doc.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def _before_growing(doc: dict[str, Any], undone: dict[str, Any]) -> str:
    """What the student the grow step started from was: repaired (trimmed), moved to int8 only, or the searched one."""
    before = (doc.get("budget_repairs") or [])[:undone.get("trims") or 0]
    if not before:
        return ""
    return "int8 " if all(r.get("to_int8") for r in before) else "repaired "


def print_summary(doc: dict[str, Any], console: Any, out: Path | None) -> None:
    """The closing table and verdict on the console."""
    from rich.table import Table

    t, s = doc["teacher"], doc["student"]
    table = Table(title=f"{doc['agent']} on {doc['device']['name']}: budget {doc['budget_text']}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table.add_row("latency ms (measured)", ms(t["latency_ms"]), ms(s["latency_ms"]))
    table.add_row("latency ms (predicted)", _teacher_predicted(t, ms), ms(s["predicted_latency_ms"]))
    table.add_row("test accuracy", f"{100 * (t['accuracy'] or 0):.2f}%", f"{100 * s['accuracy']:.2f}%")
    table.add_row("accuracy before fine-tune", "", f"{100 * s['accuracy_before_finetune']:.2f}%")
    table.add_row("MACs", f"{t['macs']:,}", f"{s['macs']:,}")
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}")
    console.print(table)
    colour = "green" if doc["budget_met"] else "red"
    from rich.markup import escape

    line = f"[{colour}]{escape(verdict_text(doc))}[/{colour}]"
    if doc["verdict"]["source"] == "predicted" and out is not None:
        line += f"; on the device run `hwcompress profile --device {doc['device']['name']} -m {out}/student.onnx`"
    if out is not None:
        plots = ", plots" if doc["artifacts"].get("plots") else ""
        fp32 = ", student_fp32.onnx" if doc["artifacts"].get("onnx_fp32") else ""
        line += f"; results in {out}/ (result.json, summary.md, student.onnx{fp32}, student.pt{plots})"
    console.print(line)
