"""``hwcompress lut``: record a latency lookup table on a device, inspect it, merge several.

Predicting from a table is ``hwcompress profile --device NAME --lut FILE``; see docs/devices.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import click
from rich.markup import escape

from hwcompress.cli.common import console, device_options, emit_json, fmt_count, parse_input_shape, timing_options
from hwcompress.devices import resolve_device
from hwcompress.errors import UserError
from hwcompress.files import check_writable
from hwcompress.lut.keys import TRANSITIONS
from hwcompress.lut.plan import load_plan, record_plan
from hwcompress.lut.table import LatencyTable
from hwcompress.measure.contract import ProfileSettings
from hwcompress.measure.resolve import check_precisions, make_settings, measuring_profiler
from hwcompress.model.loading import load_model


@click.group()
def lut():
    """Latency lookup tables (LUTs) recorded ON a device, for devices that cannot run the search.

    \b
    A LUT holds each layer's latency over a grid of channel counts, measured on the device, plus a
    whole-model calibration; `hwcompress profile --lut FILE` and the search predict from it anywhere.

    \b
    Examples:
      hwcompress lut record --device rpi5 --model resnet18 --out rpi5.lut.json    # on the Pi
      hwcompress lut record --device pi5-lab --model resnet18 --out pi5.lut.json  # from here, over ssh
      hwcompress lut plan -d android-phone -m mobilenet_v2 --out plan/   # no PyTorch on the device:
      hwcompress lut record --plan plan/ --out phone.lut.json            #   export here, time there
      hwcompress lut show rpi5.lut.json
      hwcompress lut merge a.lut.json b.lut.json --out all.lut.json
      hwcompress profile --device rpi5 --lut rpi5.lut.json --model resnet18       # anywhere
    """


@lut.command()
@device_options("; this machine, or a device reached over ssh/adb ([transport])")
@click.option("--model", "-m", default="resnet18", show_default=True,
              help="torchvision name, pkg.module:factory, checkpoint (.pt, trusted files only) or 'embedded'.")
@click.option("--input-shape", help="Input shape, e.g. 1,3,224,224 (default: the model's usual size); its batch is the LUT's.")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file for a torchvision/factory model.")
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="The LUT file; an existing one recorded here with the same settings is resumed and extended "
                   "(with its --runs and --warmup).")
@click.option("--plan", "plan", type=click.Path(), help="Time a plan folder made by `hwcompress lut plan` (no PyTorch needed here).")
@click.option("--profiler", "profiler_name", help="Measuring profiler (default: the device's; onnxruntime when that one is missing).")
@timing_options("Timed iterations per layer configuration")
@click.option("--points", type=int, default=5, show_default=True, help="Grid points per channel axis (1: only the model's own channel counts).")
@click.option("--min-ratio", type=float, default=0.2, show_default=True, help="Smallest preserve ratio the grid covers.")
@click.option("--quantum", type=int, help="The runtime's channel step (default: detected once per LUT).")
@click.option("--passes", type=int, default=1, show_default=True,
              help="Passes over the grid; each configuration keeps its lowest median (2 on busy or throttling machines).")
@click.option("--calibration-widths", default="0.75,0.5,0.3", show_default=True,
              help="Uniform preserve ratios of pruned copies timed whole beside the model for the calibration ('' = the model only).")
@click.option("--no-calibration", is_flag=True, help="Do not time the whole model (predictions are then plain sums of layers).")
@click.option("--precisions", help="Also record every configuration in these precisions, e.g. fp32,int8 (int8: each layer as a "
                                   "Q/DQ model; what `hwcompress search --quantize` predicts from). Default: --precision only.")
@click.option("--off-path", is_flag=True,
              help="Also time every convolution one input channel off the runtime's alignment (ONNX Runtime: multiples of 4), "
                   "which it runs off its blocked path: for `profile --lut` on models pruned to arbitrary counts (about "
                   "doubles the convolutions' entries; searches never need it).")
@click.option("--overwrite", is_flag=True, help="Start a new LUT even if --out exists.")
@click.option("--json", "json_target", metavar="FILE", help="Write the LUT's summary as JSON to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary table.")
def record(device, device_file, model, input_shape, weights, out, plan, profiler_name, threads, runs, warmup, precision,
           points, min_ratio, quantum, passes, calibration_widths, no_calibration, precisions, off_path, overwrite, json_target,
           quiet):
    """Time every layer of a model over a grid of channel counts, on this device, into a LUT.

    Run it ON the device (a Raspberry Pi, a Jetson, a phone under Termux, this laptop), or from here for
    a device with a [transport] (ssh, adb): the layers are exported here and timed there, spread over
    the hosts of a pool; the LUT is written here. Identical
    layer configurations are timed once; the whole model (and uniformly pruned copies) is timed too,
    for the calibration term. Interrupted runs keep what they measured: run the same command again
    to continue.

    Devices without a usable PyTorch (a phone under Termux) time a plan exported elsewhere with
    `hwcompress lut plan`: `hwcompress lut record --plan DIR --out FILE` needs only ONNX Runtime.

    \b
    Examples:
      hwcompress lut record --model resnet18 --out cpu.lut.json                 # this CPU
      hwcompress lut record -d rpi5 -m mobilenet_v2 --out rpi5.lut.json --passes 2
      hwcompress lut record -d jetson -m mypkg.nets:build --input-shape 1,3,128,128 --out jetson.lut.json
      hwcompress lut record --plan phone-plan/ --out phone.lut.json             # on the phone
      hwcompress lut record -d pi5-lab -m mobilenet_v2 --out pi5.lut.json       # from here, over ssh
      hwcompress lut record -m embedded --precisions fp32,int8 --out cpu.lut.json   # int8 entries too
    """
    manifest = None
    if plan and off_path:
        raise UserError("--off-path adds to the grid recorded from a model here; a plan's grid was fixed when it was "
                        "exported (drop --off-path, or record from the model)")
    if plan:
        _, manifest = load_plan(plan)
    descriptor = resolve_device(device or (None if device_file else (manifest or {}).get("device", "cpu")), device_file)
    if passes < 1:
        raise UserError(f"--passes must be at least 1 (got {passes})")
    widths = grid_options(points, min_ratio, quantum, calibration_widths)
    settings = make_settings(descriptor, threads=threads, runs=runs, warmup=warmup, precision=precision, per_layer=False)
    existing = existing_lut(out) if os.path.isfile(out) else None  # a file that is not a LUT is never resumed or replaced
    if existing is not None and not overwrite:
        settings = resumed_settings(existing, settings, runs=runs, warmup=warmup)
    wanted = [p.strip() for p in (precisions or "").split(",") if p.strip()] or None
    if wanted and plan:
        raise UserError("--precisions applies to recording a model; a plan records the precisions it was made with")
    if wanted and any(p not in ("fp32", "fp16", "int8") for p in wanted):
        raise UserError(f"--precisions takes fp32, fp16 and int8, comma-separated (got {precisions!r})")
    profiler, notes = measuring_profiler(descriptor, profiler_name)
    check_precisions(profiler, descriptor.name, [settings.precision, *(wanted or [])])
    err = console(stderr=True)
    for note in notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    if plan:
        label = f"plan {manifest.get('model')}"

        def run(progress):
            return record_plan(plan, descriptor, profiler, settings, out, passes=passes, progress=progress, overwrite=overwrite)
    else:
        from hwcompress.lut.record import record_lut  # PyTorch: not needed to time a plan

        loaded = load_model(model, weights=weights, input_shape=parse_input_shape(input_shape))
        if loaded.module is None:
            raise UserError(f"a LUT is recorded from a PyTorch model (its layers); {model} is an ONNX file: pass the PyTorch model")
        shape = tuple(loaded.input_shape)
        label = loaded.name

        def run(progress):
            return record_lut(
                loaded.module, shape, descriptor, profiler, settings, out, model_name=loaded.name,
                points=points, min_ratio=min_ratio, quantum=quantum, passes=passes, widths=widths,
                calibrate=not no_calibration, overwrite=overwrite, progress=progress, precisions=wanted,
                off_path=off_path,
            )

    if quiet:
        table = run(None)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("[dim]{task.fields[label]}"))
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task(f"{label} on {descriptor.name}", total=None, label="")

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, label=label[:60])

            table = run(progress)
    for line in getattr(profiler, "dropped", []):  # a pool host that went away mid-recording (also warned then)
        err.print(f"[yellow]note:[/] {escape(line)}")
    summary = table.summary()
    if json_target:
        emit_json(summary, json_target)
    if not quiet and json_target != "-":
        print_summary(summary)
        shape_hint = f" --input-shape {input_shape}" if input_shape else ""
        if manifest is not None:
            shape_hint = " --input-shape " + ",".join(str(d) for d in manifest.get("input_shape", []))
        err.print(f"wrote {out}: predict with `hwcompress profile {descriptor.option} --lut {out} "
                  f"--model {(manifest or {}).get('model', model)}{shape_hint}`")


@lut.command()
@click.option("--device", "-d", default="cpu", show_default=True, help="The device the plan is for (its channel multiple shapes the grid).")
@click.option("--device-file", type=click.Path(dir_okay=False), help="A device TOML file instead of a catalog name.")
@click.option("--model", "-m", default="resnet18", show_default=True, help="torchvision name, pkg.module:factory, checkpoint or 'embedded'.")
@click.option("--input-shape", help="Input shape, e.g. 1,3,224,224 (default: the model's usual size).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file for a torchvision/factory model.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="The plan folder to write (copy it to the device): a new or empty one, or an earlier plan to replace.")
@click.option("--points", type=int, default=5, show_default=True, help="Grid points per channel axis.")
@click.option("--min-ratio", type=float, default=0.2, show_default=True, help="Smallest preserve ratio the grid covers.")
@click.option("--quantum", type=int, help="The device runtime's channel step, if known (else the device detects it).")
@click.option("--calibration-widths", default="0.75,0.5,0.3", show_default=True, help="Uniformly pruned copies for the calibration.")
@click.option("--no-calibration", is_flag=True, help="Do not export the whole models for the calibration.")
def plan(device, device_file, model, input_shape, weights, out, points, min_ratio, quantum, calibration_widths, no_calibration):
    """Export a model's layers (grid included) as ONNX files, to be timed on a device without PyTorch.

    \b
    Examples (a phone under Termux has ONNX Runtime but no usable PyTorch):
      hwcompress lut plan --device android-phone --model mobilenet_v2 --out phone-plan/   # workstation
      adb push phone-plan /sdcard/Download/phone-plan                                     # or any copy
      hwcompress lut record --plan phone-plan --out phone.lut.json                        # on the phone
    """
    from hwcompress.lut.record import check_plan_folder, export_plan  # PyTorch: not needed to time a plan

    descriptor = resolve_device(None if device_file and device == "cpu" else device, device_file)
    widths = grid_options(points, min_ratio, quantum, calibration_widths)
    check_plan_folder(out)  # before the model is loaded: a refusal costs a second
    loaded = load_model(model, weights=weights, input_shape=parse_input_shape(input_shape))
    if loaded.module is None:
        raise UserError(f"a LUT plan is made from a PyTorch model (its layers); {model} is an ONNX file")
    manifest = export_plan(
        loaded.module, tuple(loaded.input_shape), descriptor, out, model_name=loaded.name, points=points,
        min_ratio=min_ratio, quantum=quantum, widths=widths, calibrate=not no_calibration,
    )
    units = len(json.loads(manifest.read_text())["units"])
    click.echo(f"wrote {out}: {units} layer configurations of {loaded.name} for {descriptor.name}; on the device run "
               f"`hwcompress lut record --plan {out} --out {descriptor.name}.lut.json`", err=True)


def grid_options(points: int, min_ratio: float, quantum: int | None, calibration_widths: str) -> tuple[float, ...]:
    """Check the grid options `lut record` and `lut plan` share; return the calibration widths."""
    if points < 1:
        raise UserError(f"--points must be at least 1 (got {points})")
    if quantum is not None and quantum < 1:
        raise UserError(f"--quantum must be at least 1 channel (got {quantum}); give the runtime's channel step, "
                        "or leave it out to detect it")
    if not 0 < min_ratio <= 1:
        raise UserError(f"--min-ratio must be in (0, 1] (got {min_ratio})")
    try:
        widths = tuple(float(w) for w in calibration_widths.split(",") if w.strip())
    except ValueError:
        raise UserError(f"malformed --calibration-widths {calibration_widths!r}; expected numbers like 0.75,0.5,0.3") from None
    if any(not 0 < w < 1 for w in widths):
        raise UserError(f"--calibration-widths must lie strictly between 0 and 1 (got {calibration_widths!r})")
    return widths


def resumed_settings(table: LatencyTable, settings: ProfileSettings, **given: int | None) -> ProfileSettings:
    """``settings`` for recording into the existing LUT ``table``: its entries keep the runs and warm-up they
    were timed with, so new ones are timed alike. A --runs or --warmup given otherwise is refused (like
    another --threads): the table would claim settings half its entries were not timed with."""
    recorded, out = table.provenance, table.where()
    for name, value in given.items():
        before = recorded.get(name)
        if isinstance(before, bool) or not isinstance(before, int):  # a table recorded before it was stored
            continue
        if value is not None and value != before:
            raise UserError(f"LUT {out} was recorded with --{name} {before}, this recording asks for {value}, and "
                            f"its entries would not be timed again; drop --{name} to extend it as recorded, "
                            "record into another file (--out), or pass --overwrite to start afresh")
        settings = replace(settings, **{name: before})
    return settings


@lut.command()
@click.argument("file")  # checked by LatencyTable.load: one-line errors
@click.option("--json", "json_target", metavar="FILE", help="Write the summary as JSON to FILE ('-' for stdout).")
@click.option("--entries", is_flag=True, help="Also list every entry.")
def show(file, json_target, entries):
    """Summarise a LUT: provenance, entries per op, calibration.

    \b
    Examples:
      hwcompress lut show rpi5.lut.json
      hwcompress lut show rpi5.lut.json --json - | jq .provenance
    """
    table = LatencyTable.load(file)
    summary = table.summary()
    if entries:
        summary["entry_list"] = [e.to_dict() for e in table.entries.values()]
    if json_target:
        emit_json(summary, json_target)
        if json_target == "-":
            return
    print_summary(summary)
    if entries:
        from rich.table import Table

        listing = Table(title="entries")
        for column in ("op", "batch", "in", "cin -> cout", "k/s/p/g", "fused", "median ms", "p90", "runs"):
            listing.add_column(column, justify="right" if column in ("median ms", "p90", "runs") else "left")
        for e in sorted(summary["entry_list"], key=lambda e: (e["op"], e["in_hw"], e["cin"], e["cout"])):
            listing.add_row(
                e["op"], str(e["batch"]), "x".join(map(str, e["in_hw"])) or "-", f"{e['cin']} -> {e['cout']}",
                f"{'x'.join(map(str, e['kernel'])) or '-'}/{'x'.join(map(str, e['stride'])) or '-'}/{'x'.join(map(str, e['padding'])) or '-'}/{e['groups']}",
                "+".join(e["fused"]) or "-", f"{e['median']:.4f}", f"{e['p90']:.4f}", str(e["runs"]),
            )
        console().print(listing)


@lut.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="The merged LUT file: a new file, one of FILES (which then takes the others in), or an existing LUT "
                   "with --overwrite. A file that is not a LUT is never replaced.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it is an existing LUT that is not one of FILES.")
def merge(files, out, overwrite):
    """Combine LUTs recorded on the same device with the same runtime and settings.

    Where two tables timed the same configuration, the one with more runs wins (the later file on a
    tie); calibrations of every recorded model are kept. Tables from another device, runtime
    version, precision, batch or thread count are refused.

    --out may name one of FILES: every file is read before anything is written, and the table is
    replaced in one step by the merge, which holds all it held. An existing LUT that is not one of
    FILES is replaced only with --overwrite; a file that is not a LUT, never.

    \b
    Examples:
      hwcompress lut merge resnet18.lut.json mobilenet_v2.lut.json --out rpi5.lut.json
      hwcompress lut merge rpi5.lut.json efficientnet_b0.lut.json --out rpi5.lut.json   # extend rpi5.lut.json
    """
    if len(files) < 2:
        raise UserError("`hwcompress lut merge` needs at least two LUT files")
    tables = [LatencyTable.load(f) for f in files]  # every file read (and checked to mix) before --out is written
    merged = tables[0]
    for other in tables[1:]:
        merged.merge(other)
    merged.provenance["merged_from"] = list(files)
    replaced = check_merge_out(out, files, overwrite)
    merged.save(out)
    note = {"input": f" (it was one of the {len(files)} files: it now holds their merge)", "lut": " (replacing the LUT there)"}
    models = merged.calibrated_models()
    records = f" ({len(merged.models)} whole-model records)" if len(merged.models) != models else ""
    click.echo(f"wrote {out}{note.get(replaced, '')}: {len(merged)} entries, {models} calibrated model(s){records} "
               f"from {len(files)} files", err=True)


def check_merge_out(out: str, files: tuple[str, ...], overwrite: bool) -> str | None:
    """Refuse a `lut merge --out` that would replace a file it must not (before anything is written).

    A new path, or one written through (``/dev/stdout``, a FIFO: :mod:`hwcompress.files`), is fine
    (None). An existing file must be one of ``files`` (``"input"``: the merge holds all it held) or a
    LUT this hwcompress reads, and then ``overwrite`` must be given (``"lut"``); anything else is a
    :class:`UserError` naming it, as `lut record` refuses an --out it cannot extend.
    """
    path = check_writable(out, "--out")  # a folder, a parent that is not one, no permission
    if not path.is_file():  # missing, or not a regular file (written through, never replaced)
        return None
    if any(_same_file(path, f) for f in files):
        return "input"
    existing_lut(out)
    if not overwrite:
        raise UserError(f"--out {out} is an existing LUT that is not one of the files merged; pass --overwrite to replace it, "
                        "add it to the files to merge it in, or give another --out")
    return "lut"


def existing_lut(out: str) -> LatencyTable:
    """The LUT at ``out`` (an existing regular file); a UserError where it is not one this hwcompress reads,
    which `lut record` and `lut merge` then neither extend nor replace."""
    try:
        return LatencyTable.load(out)
    except UserError as error:
        raise UserError(f"--out {out} exists and is not a hwcompress LUT this hwcompress reads ({str(error)[:160]}); it "
                        "is not replaced: give another --out") from None


def _same_file(path: os.PathLike[str], other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # a missing input: LatencyTable.load names it
        return False


def print_summary(summary: dict) -> None:
    """Render :meth:`hwcompress.lut.table.LatencyTable.summary` as rich tables."""
    from rich.table import Table

    out = console()
    p = summary["provenance"]
    head = Table(title=f"LUT {summary['file']}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("device", f"{p.get('device')} (recorded on {p.get('host', '?')}, {p.get('machine', '?')})")
    head.add_row("runtime", f"{p.get('runtime')} {p.get('runtime_version')} via the {p.get('profiler')} profiler")
    base = p.get("precision")
    held = summary.get("precision_entries") or {base: summary["entries"]}
    head.add_row("settings", f"{'base precision' if len(held) > 1 else 'precision'} {base}, batch {p.get('batch')}, "
                             f"threads {p.get('threads')}, runs {p.get('runs', '?')}, warmup {p.get('warmup', '?')}")
    head.add_row("precisions", ", ".join(f"{name}{' (base)' if name == base else ''} {n} entr{'y' if n == 1 else 'ies'}"
                                         for name, n in held.items()))
    clocks = p.get("clocks") or {}
    head.add_row("clocks", ", ".join(f"{k}={v}" for k, v in clocks.items()) or "not readable")
    head.add_row("recorded", f"{p.get('date')} (updated {p.get('updated', p.get('date'))}) by {p.get('recorder')}")
    flush = f", cache flush {p.get('cache_flush_mb'):g} MB between runs" if p.get("cache_flush_mb") else ""
    if flush and p.get("off_path_cache_flush_mb") == 0:
        flush += " (none for layers off the runtime's blocked path)"
    head.add_row("timing", f"{p.get('timing')}{flush}")
    head.add_row("channel quantum", f"{p.get('channel_quantum')} ({p.get('channel_quantum_source', 'given')}; device multiple "
                                    f"{p.get('channel_multiple')}): prune to multiples of it")
    head.add_row("entries", f"{summary['entries']} in {summary['families']} layer shapes: "
                            + ", ".join(f"{op} {n}" for op, n in summary["ops"].items()))
    conversions = p.get("layout_conversions") or {}
    if conversions.get("to_plain") and conversions.get("to_blocked"):
        head.add_row("layout conversions", "around layers off the blocked path, per million elements: to NCHW "
                     f"{1e6 * conversions['to_plain']['ms_per_element']:.3f} ms, back {1e6 * conversions['to_blocked']['ms_per_element']:.3f} ms")
    between = p.get("non_layer_costs") or {}
    if isinstance(between, dict) and any(isinstance(v, dict) for v in between.values()):
        head.add_row("between layers", "priced apart from the layers (per node us / per 1000 channels us / per million elements ms): "
                     + ", ".join(f"{kind} {1e3 * fit.get('intercept_ms', 0):.2f} / {1e6 * fit.get('per_channel_ms', 0):.2f} / "
                                 f"{1e6 * fit.get('per_element_ms', 0):.3f}" for kind, fit in between.items() if isinstance(fit, dict)))
    if p.get("kernel_overhead_ms"):
        counted = summary.get("entries_priced_per_kernel") or 0
        where = [f"each kernel of {counted} entries"] if counted else []
        where += ["off-path entries once"] if summary.get("off_path_priced_net") else []
        used = f" (taken off {'; '.join(where)})" if summary.get("kernel_overhead_applied_ms") and where else ""
        head.add_row("node profiler", f"{1e3 * float(p['kernel_overhead_ms']):.2f} us per kernel timed{used}")
    if p.get("merged_from"):
        head.add_row("merged from", ", ".join(map(str, p["merged_from"])))
    out.print(head)
    if summary["models"]:
        models = Table(title="calibration (whole model measured vs sum of its layers)")
        for column in ("model", "precision", "input", "MACs", "measured ms", "layer sum ms", "scale", "by width"):
            models.add_column(column, justify="right" if column.endswith(("ms", "scale", "MACs")) else "left")
        for m in summary["models"]:
            widths = " ".join(f"{w['width']:.2f}:x{w['ratio']:.3f}" for w in m.get("points") or [])
            models.add_row(
                str(m["name"]), precision_label(m, base), "x".join(map(str, m.get("input_shape") or [])),
                fmt_count(m.get("macs")),
                f"{m['measured_ms']:.3f}", f"{m['layer_sum_ms']:.3f}", f"{m['scale']:.3f}", widths or "-",
            )
        out.print(models)
        for m in summary["models"]:
            if m.get("precision") == TRANSITIONS:
                rate = m.get("ms_per_element")
                rate = f": {1e6 * float(rate):.3f} ms per million elements" if rate is not None else ""
                out.print(f"[dim]{escape(str(m['name']))} transitions: the model timed with float and int8 layers mixed, "
                          f"for what a change of precision costs per element crossing it{rate}[/dim]")
        for m in summary["models"]:
            for problem in m.get("checks") or []:
                out.print(f"[yellow]warning:[/] {escape(str(m['name']))}"
                          f"{' (' + m['precision'] + ')' if m.get('precision') else ''}: {escape(problem)}. "
                          "The recording was disturbed or the machine is busy: record again with --passes 2 "
                          "(and --overwrite) on a quieter machine")
    else:
        out.print("[dim]no calibration recorded: predictions are plain sums of layers[/dim]")


def precision_label(model: dict, base: str | None) -> str:
    """A calibration row's precision in `lut show`: the table's base where the record names none, and a
    ``transitions`` record (the mixed-precision model) as such."""
    precision = model.get("precision") or base or "?"
    return "transitions (mixed)" if precision == TRANSITIONS else str(precision)
