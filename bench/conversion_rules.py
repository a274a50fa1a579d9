"""Score layout-conversion rules on a finished ``bench/lut_fidelity.py`` run, without timing anything again.

The run's variants are rebuilt from its seed (the same draws, so the same networks), predicted from its
LUT under each rule, and scored against the measurements its ``--json`` holds (within +-10%, MAPE,
Kendall tau, as measured and drift-corrected; mean signed error per kind). Rules:

* ``graph``: the predictor as it is (conversions placed by the graph, none around grouped convolutions,
  those of squeeze-excitation blocks off the path credited: :mod:`hwcompress.lut.conversions`);
* ``squeeze charged``: the same, charging squeeze-excitation paths as any other (the rule before);
* ``grouped too``: charging conversions around grouped convolutions as well (the rule before that, with
  the squeeze credit kept);
* ``none``: no layout conversions.

    python bench/lut_fidelity.py --models mobilenet_v3_small,efficientnet_b0,regnet_x_400mf --input-size 96 \\
        --variants 8 --off-path --passes 2 --lut run.lut.json --json run.json
    python bench/conversion_rules.py run.json run.lut.json

``--in-situ`` also checks the conversion model itself, apart from every other term of a prediction: each
variant is exported and run under ONNX Runtime's node profiler (one thread), its ``ReorderInput`` and
``ReorderOutput`` kernel times are summed, and for each variant off the blocked path (``tpnone``) the
change against the mean of the aligned ``tp8`` variants is printed beside the change each rule predicts.

``--steps`` scores the cost model's steps of 2026-11-28 one on top of the other: the run's LUT without its
entries of grouped convolutions narrowed apart (``--off-path`` records every pair of group widths), then
with them, then with the node profiler's own cost taken off what is priced as timed, then with the
calibration's ratio read at the model's width, then with the cost taken off every blocked-path entry once
per kernel (tables recorded since; the steps before drop the counts and sum the calibration again;
docs/benchmarks.md), and last (2026-11-29) with the work between layers (squeeze-excitation multiplies,
unfused adds, pooling) priced from the table's ``non_layer_costs`` and taken out of the ratio (timed here
and now for a table recorded before the probe). A LUT recorded before then lacks the
entries and the cost: ``hwcompress lut record --off-path`` on it again adds both (seconds).

The first line of each architecture checks that ``graph`` reproduces the run's own predictions (it does
unless the predictor changed since the run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lut_fidelity as lf  # noqa: E402

from hwcompress.devices import resolve_device  # noqa: E402
from hwcompress.lut.table import LatencyTable  # noqa: E402
from hwcompress.model.analysis import analyze  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the lut_fidelity.py --json document")
    parser.add_argument("lut", type=Path, help="the LUT that run recorded (its --lut, or the temporary file it names)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--in-situ", action="store_true",
                        help="also time each variant's layout conversions under the node profiler (a minute or two)")
    parser.add_argument("--steps", action="store_true",
                        help="also score the cost model's steps one by one (grouped widths apart, the node profiler's "
                             "cost off, the ratio at the model's width, the cost off per kernel, the work between layers)")
    args = parser.parse_args()
    missing = [str(path) for path in (args.run, args.lut) if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)} (the lut_fidelity.py --json document and the LUT that run recorded)")
    run = json.loads(args.run.read_text())
    table = LatencyTable.load(args.lut)
    steps = step_tables(args.lut, tuple(run["input_shape"]), resolve_device(args.device, None).channel_multiple) if args.steps else {}
    stepped: dict[str, list[tuple[str, str, float, float, float, float]]] = {step: [] for step in steps}
    device = resolve_device(args.device, None)
    shape = tuple(run["input_shape"])
    rules = {"graph": (True, True), "squeeze charged": (True, False), "grouped too": (False, True), "none": None}
    scored: dict[str, list[tuple[str, str, float, float, float, float]]] = {rule: [] for rule in rules}
    reorders: list[tuple[str, str, float, dict[str, float]]] = []  # (model, kind, timed ms, predicted ms per rule)
    kinds = run["settings"].get("kinds", ",".join(lf.KINDS)).split(",")
    for name, kind, index, model in lf.rebuilt_variants(run, device.channel_multiple):
        specs = analyze(model, shape).layers
        row = next(r for r in run["results"][name]["rows"] if r["kind"] == kind and r["variant"] == index)
        predicted_conversions = {}
        for rule, spare in rules.items():
            table.predictor.spare_grouped_conversions, table.predictor.squeeze_credit = spare or (True, True)
            detail = table.predict_detail(specs)
            predicted_conversions[rule] = 0.0 if spare is None else detail.layout_conversion_ms
            predicted = detail.total_ms - (detail.layout_conversion_ms if spare is None else 0.0)
            scored[rule].append((name, kind, predicted, row["measured_ms"], row["measured_corrected_ms"],
                                 row["predicted_ms"]))
        table.predictor.spare_grouped_conversions, table.predictor.squeeze_credit = True, True
        for step, stepped_table in steps.items():
            stepped[step].append((name, kind, stepped_table.predict_detail(specs).total_ms, row["measured_ms"],
                                  row["measured_corrected_ms"], row["predicted_ms"]))
        if args.in_situ and kind in ("tp8", "tpnone"):
            reorders.append((name, kind, timed_reorders(model, shape), predicted_conversions))
    for name in run["results"]:
        print(name)
        for rule in rules:
            rows = [r for r in scored[rule] if r[0] == name]
            print_scores(rule, rows, kinds, width=12, mean_column=3, mean_label="mean error")
            if rule == "graph":
                drift = max(abs(r[2] / r[5] - 1) for r in rows)
                print(f"  {'':12s} the run's own predictions reproduced within {100 * drift:.2f}%")
    if steps:
        print("\ncost-model steps, each on top of the one before")
        for name in run["results"]:
            print(name)
            for step, rows in stepped.items():
                print_scores(step, [r for r in rows if r[0] == name], kinds)
    if reorders:
        print_in_situ(reorders, list(rules))
    return 0


def resum_calibrations(table: LatencyTable, shape: tuple[int, ...], multiple: int) -> None:
    """Sum each calibration point of ``table`` again under its predictor as it now prices entries (the
    calibration models rebuilt from torchvision at their widths, as ``lut record`` exports them)."""
    import torchvision

    from hwcompress.lut.record import uniform_variants

    table.invalidate()
    for model in table.models:
        if "points" not in model or model.get("precision") not in (None, table.precision):
            continue
        base = torchvision.models.get_model(model["name"].split("@")[0], weights=None).eval()
        widths = [p["width"] for p in model["points"] if p["width"] != 1.0]
        copies = {1.0: base, **dict(uniform_variants(base, shape, widths, multiple))}
        for point in model["points"]:
            specs = analyze(copies[point["width"]], shape).layers
            point["layer_sum_ms"], point["ratio"] = table.predictor.point_sum_and_ratio(specs, point["measured_ms"])
            # The step keeps these sums: a point that stores its layers would be summed again under the
            # step's own predictor switches, and a table recorded before that would not.
            point.pop("specs", None)
        model["layer_sum_ms"], model["scale"] = model["points"][0]["layer_sum_ms"], model["points"][0]["ratio"]
    table.invalidate()


STEPS = ("before", "+ grouped widths apart", "+ node profiler's cost off", "+ ratio at the model's width",
         "+ the cost off per kernel", "+ work between layers priced")


def step_tables(path: Path, shape: tuple[int, ...], multiple: int) -> dict[str, LatencyTable]:
    """The run's LUT under each step of 2026-11-28, cumulatively: without its entries of grouped
    convolutions narrowed apart (in and out widths unequal), without the node profiler's cost taken off
    what is priced as timed, with the calibration's ratio read at the blocked-path layers' sum, and with
    the cost taken off blocked-path entries once per kernel (before it, the entries' kernel counts are
    dropped and the calibration summed again; a table recorded without counts is the same either way);
    then (2026-11-29) with the work between layers priced apart from the ratio (:mod:`hwcompress.lut.nonlayer`)."""
    tables = {}
    for index, step in enumerate(STEPS):
        table = LatencyTable.load(path)
        if index < 4 and any(e.kernels for e in table.entries.values()):
            for entry in table.entries.values():
                entry.kernels = None
            resum_calibrations(table, shape, multiple)
        if index == 0:
            for key in [k for k, e in table.entries.items() if e.config.grouped and e.config.cin != e.config.cout]:
                del table.entries[key]
            table.invalidate()
        if index <= 1:
            table.predictor.net_off_path = False  # per-kernel pricing, with which the calibration was summed, stays
        table.predictor.ratio_at_width = index >= 3
        table.predictor.price_non_layer = index >= 5
        if index == 5 and "non_layer_costs" not in table.provenance:
            # A table recorded before the probe (2026-11-29): its costs timed now, on this machine.
            from hwcompress.measure.contract import ProfileSettings
            from hwcompress.measure.resolve import resolve_timing

            profiler = resolve_timing(resolve_device("cpu", None)).profiler
            table.provenance["non_layer_costs"] = profiler.non_layer_costs(ProfileSettings(threads=1))
            table.invalidate()
            print("note: the run's LUT has no non_layer_costs (recorded before 2026-11-29); the last step times them here, now")
        tables[step] = table
    return tables


def print_scores(label: str, rows: list[tuple[str, str, float, float, float, float]], kinds: list[str], width: int = 28,
                 mean_column: int = 4, mean_label: str = "mean error, drift-corrected") -> None:
    """One line: within +-10% / MAPE / Kendall tau as measured and drift-corrected, and each kind's mean
    signed error against ``mean_column`` of the rows ``(model, kind, predicted, measured, corrected, run's)``."""
    parts = []
    for name, column in (("as measured", 3), ("drift-corrected", 4)):
        got = lf.scores([r[2] for r in rows], [r[column] for r in rows])
        parts.append(f"{name} {100 * got['within_10pct']:5.1f}% / {100 * got['mape']:4.1f}% / {got['kendall_tau']:.3f}")
    means = ", ".join(f"{k} {100 * lf.scores([r[2] for r in rows if r[1] == k], [r[mean_column] for r in rows if r[1] == k])['mean_err']:+.1f}%"
                      for k in kinds)
    print(f"  {label:{width}s} {'; '.join(parts)}  ({mean_label}: {means})")


def timed_reorders(model: torch.nn.Module, shape: tuple[int, ...], runs: int = 20) -> float:
    """The summed median kernel times (ms) of the layout conversions ONNX Runtime runs in ``model``."""
    import statistics
    import tempfile

    from hwcompress_profiler_onnxruntime import BOUNDARY_OPS, _kernel_events

    from hwcompress.measure.contract import ProfileSettings
    from hwcompress.model.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="conversion-rules-") as folder:
        path = Path(folder) / "variant.onnx"
        export_onnx(model, shape, path, verify=False)
        events = _kernel_events(path, shape, ProfileSettings(threads=1), runs + 5)
    per_node: dict[str, list[float]] = {}
    for node, event_args, ms in events:
        if event_args.get("op_name") in BOUNDARY_OPS:  # ReorderInput, ReorderOutput
            per_node.setdefault(node, []).append(ms)
    return sum(statistics.median(times[-runs:]) for times in per_node.values())


def print_in_situ(reorders: list[tuple[str, str, float, dict[str, float]]], rules: list[str]) -> None:
    """Per architecture: each misaligned variant's timed change in conversion time against the aligned
    variants' mean, beside each rule's predicted change, and each rule's mean absolute error."""
    print("\nlayout conversions in situ (ms; change against the aligned tp8 variants' mean)")
    for name in dict.fromkeys(r[0] for r in reorders):
        aligned = [r[2] for r in reorders if r[0] == name and r[1] == "tp8"]
        off = [r for r in reorders if r[0] == name and r[1] == "tpnone"]
        if not aligned or not off:
            continue
        baseline = sum(aligned) / len(aligned)
        print(f"{name}: aligned variants {baseline:.3f} ms of conversions")
        errors: dict[str, list[float]] = {rule: [] for rule in rules}
        for index, (_, _, timed, predicted) in enumerate(off):
            change = timed - baseline
            print(f"  tpnone {index}: timed {change:+.3f}; " + ", ".join(f"{rule} {predicted[rule]:+.3f}" for rule in rules))
            for rule in rules:
                errors[rule].append(abs(predicted[rule] - change))
        print("  mean absolute error: " + ", ".join(f"{rule} {sum(e) / len(e):.3f}" for rule, e in errors.items()))


if __name__ == "__main__":
    raise SystemExit(main())
