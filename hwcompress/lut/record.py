"""Recording a model's LUT from its PyTorch module: here on this device, or as a plan for another one.

For every layer of a model the recorder times a tiny model made of that layer *as the runtime executes
it inside the network* (Conv2d with the BatchNorm and activation that follow it, which runtimes fold
into one kernel; depthwise convolutions with their groups; Linear), over a grid of channel counts
(:mod:`hwcompress.lut.units`), so that channel-pruned variants are predicted by interpolation, then the
whole model and uniformly pruned copies of it for the calibration (:mod:`hwcompress.lut.calibration`).
Recording is resumable: entries already in the file are kept. :func:`ensure_lut` is the search's
cached table of a local device; :func:`export_plan` writes everything a device without PyTorch times
with :func:`hwcompress.lut.plan.record_plan`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import statistics
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from hwcompress import __version__
from hwcompress.devices import user_data_dir
from hwcompress.errors import UserError
from hwcompress.files import write_json
from hwcompress.lut.calibration import (
    CALIBRATION_WIDTHS,
    lacks_kernel_overhead,
    measure_kernel_overhead,
    record_with_calibration,
)
from hwcompress.lut.keys import TRANSITIONS, at_precision, spec_record
from hwcompress.lut.nonlayer import valid_non_layer_rates
from hwcompress.lut.plan import PLAN_SCHEMA
from hwcompress.lut.predict import ratio_digits, transition_elements
from hwcompress.lut.recorder import (
    ProgressCallback,
    Recorder,
    new_provenance,
    open_table,
    quantum_probe_configs,
    symmetric_table,
    timing_precision,
    unit_timer,
)
from hwcompress.lut.table import LatencyTable, _now
from hwcompress.lut.units import build_unit, grid_configs, model_fingerprint, model_units
from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.model.analysis import analyze
from hwcompress.model.export import export_onnx
from hwcompress.slim import pruning
from hwcompress.slim.quantize import INT8, quantize_onnx, quantize_unit


def record_lut(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    out_path: str | os.PathLike[str] | None,
    *,
    model_name: str | None = None,
    points: int = 5,
    min_ratio: float = 0.2,
    quantum: int | None = None,
    passes: int = 1,
    widths: Sequence[float] = CALIBRATION_WIDTHS,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    calibrate: bool = True,
    save_every_s: float = 5.0,
    precisions: Sequence[str] | None = None,
    off_path: bool = False,
) -> LatencyTable:
    """Record (or complete) the LUT of ``model_module`` on this device; resumable.

    ``off_path``: also time every convolution one input channel off the runtime's alignment (the
    ``channel_block``/``channel_alignment`` facts its profiler reports), so that models pruned to
    arbitrary counts are priced as the runtime runs them (:func:`hwcompress.lut.units.grid_configs`);
    a runtime that reports no alignment rule has nothing to add.

    Every layer is timed over a grid of channel counts (``points`` per axis between ``min_ratio`` and
    the full count, on multiples of the device's channel multiple and of the runtime's channel
    quantum), identical configurations once; then the whole model once, for the calibration. Entries
    already in ``out_path`` are kept and not re-measured, so an interrupted run continues where it
    stopped, and a table recorded for one model grows when another is recorded into it.

    Args:
        model_module: the ``torch.nn.Module``.
        input_shape: e.g. ``(1, 3, 224, 224)``; its batch is the table's batch.
        descriptor: the device (a :class:`~hwcompress.devices.DeviceDescriptor`): this machine, or one
            reached over a ``[transport]`` (the units are exported here and timed there).
        profiler: a measuring profiler (:func:`hwcompress.measure.resolve.measuring_profiler`); a remote
            pool's (``workers`` > 1) gets the grid spread over its hosts.
        settings: measurement settings (threads, precision, runs, warmup).
        out_path: the LUT file (created, or resumed); None records in memory only.
        model_name: name stored with the calibration (default: the module's class name).
        points: grid points per channel axis (1 records only the model's own configurations).
        min_ratio: the smallest preserve ratio the grid covers.
        quantum: the runtime's channel step; None detects it (once per table).
        passes: passes over the configurations; each keeps the lowest median (see :meth:`Recorder.record`).
        widths: uniform preserve ratios of the pruned copies measured for the calibration besides
            the full model (``()``: the full model only).
        progress: ``progress(done, total, label)`` after each configuration.
        overwrite: start a new table even if ``out_path`` exists.
        calibrate: also time the whole model (the calibration term); skipped when already recorded.
        save_every_s: how often to save while recording.
        precisions: record every configuration (and the calibration models) in each of these
            precisions (default: the settings' own). An ``int8`` configuration is timed as the layer's
            Q/DQ model (:func:`hwcompress.slim.quantize.quantize_unit`), so the table predicts the
            layers of int8 and mixed-precision students beside the float ones.

    Returns:
        The table (also saved at ``out_path``).
    """

    input_shape = tuple(int(d) for d in input_shape)
    table = open_table(out_path, descriptor, profiler, settings, input_shape[0], overwrite=overwrite)
    if INT8 in (precisions or ()) and table.precision != INT8 and INT8 not in getattr(profiler, "precisions", ()):
        raise UserError(f"the {profiler.name!r} profiler declares no int8 path (its precisions: "
                        f"{', '.join(getattr(profiler, 'precisions', ())) or 'not declared'}); record int8 entries with onnxruntime")
    other = sorted(set(precisions or ()) - {table.precision, INT8})
    if other:
        raise UserError(f"LUT entries in {', '.join(other)} are recorded as a table of their own (--precision {other[0]}); "
                        f"beside a {table.precision} table's entries only int8 can be recorded")
    units = model_units(model_module, input_shape)
    multiple = int(getattr(descriptor, "channel_multiple", 8) or 8)
    recorder = Recorder(table, profiler, settings, out_path, progress, save_every_s)
    try:
        if quantum is not None:
            table.provenance["channel_quantum"] = int(quantum)
            table.provenance["channel_quantum_source"] = "given"
        elif "channel_quantum_source" not in table.provenance:
            detected, probe = recorder.detect_quantum(input_shape[0], multiple)
            table.provenance.update(channel_quantum=detected, channel_quantum_source="detected", quantum_probe=probe)
        table.invalidate()
        block, alignment = table.predictor.layout
        rule = (block, int(alignment)) if off_path and int(alignment or 1) > 1 else None
        configs = grid_configs(units, multiple, table.quantum, points, min_ratio, off_path=rule)
        fingerprint = model_fingerprint(units)
        name = model_name or type(model_module).__name__
        base = table.precision
        exported: list[dict[str, Any]] = []
        calibrated = {m.get("precision", base) for m in table.models if m.get("fingerprint") == fingerprint}
        if rule and lacks_kernel_overhead(table):
            # Off-path entries are priced net of it whether or not a calibration is recorded (which also
            # measures it, for entries that count their kernels). The full model is exported once: the
            # calibration's own copy where one follows.
            if calibrate and any(p not in calibrated for p in dict.fromkeys(precisions or [base])):
                exported = calibration_models(model_module, input_shape, widths, multiple, Path(recorder._tmp.name), name)
                whole = exported[0]
            else:
                whole = calibration_models(model_module, input_shape, (), multiple, Path(recorder._tmp.name), name)[0]
            measure_kernel_overhead(table, profiler, settings, whole["artifact"])
        for precision in dict.fromkeys(precisions or [base]):
            at = None if precision == base else precision
            calibration = None
            if calibrate and precision not in calibrated:
                if not exported:
                    exported = calibration_models(model_module, input_shape, widths, multiple, Path(recorder._tmp.name), name)
                calibration = {
                    "name": name, "input_shape": input_shape, "fingerprint": fingerprint,
                    "configs": [u.config.with_precision(at) for u in units],
                    "points": [point_at_precision(point, at, symmetric_table(table)) for point in exported],
                }
            record_with_calibration(table, recorder, profiler, replace(settings, precision=timing_precision(table, precision)),
                                    [(config.with_precision(at), template) for config, template in configs], passes, calibration,
                                    here=not getattr(descriptor, "remote", False))
            if calibration is not None and at is not None:
                table.models[-1]["precision"] = precision
            if precision == INT8 and calibrate and exported and not any(
                    m.get("fingerprint") == fingerprint and m.get("precision") == TRANSITIONS for m in table.models):
                record_transitions(table, profiler, settings, model_module, exported[0], name, fingerprint,
                                   sorted({u.config.family() for u in units}))
        if rule:  # the device's optional probes for networks off the blocked path, each stored once
            # What leaving and re-entering the blocked layout around an off-path layer costs (warm), and
            # what the work between layers costs (hwcompress.lut.nonlayer).
            _store_probe(table, profiler, settings, "layout_conversions", valid_conversion_rates,
                         "the layout-conversion probe", "conversion rates", "rates per direction")
            _store_probe(table, profiler, settings, "non_layer_costs", valid_non_layer_rates, "the non-layer probe",
                         "its costs (the calibration's ratio carries that work)", "costs per kind")
        if len(table.precisions) > 1:
            table.provenance["precisions"] = table.precisions
        if out_path is not None:
            table.save(out_path)
    finally:
        recorder.close()
    return table


def calibration_models(module: Any, input_shape: tuple[int, ...], widths: Sequence[float], multiple: int,
                       folder: Path, name: str) -> list[dict[str, Any]]:
    """The calibration's whole models: the model and its uniformly pruned copies, exported to ``folder``."""
    points = []
    for width, variant in [(1.0, module)] + uniform_variants(module, input_shape, widths, multiple):
        onnx_path = folder / f"model-{width:.2f}.onnx"
        export_onnx(variant, input_shape, onnx_path, verify=False)
        analysis = analyze(variant, input_shape)
        artifact = ModelArtifact(onnx_path=onnx_path, input_shape=input_shape, module=variant, name=name)
        points.append({"width": width, "artifact": artifact, "specs": analysis.layers, "macs": analysis.macs})
    return points


def record_transitions(table: LatencyTable, profiler: Any, settings: ProfileSettings, module: Any, point: dict[str, Any],
                       name: str, fingerprint: str, families: Sequence[str], rounds: int = 3) -> None:
    """Measure what a change of precision costs per element crossing it, into a ``transitions`` record.

    The model with every other channel group's layers in float (as ONNX Runtime realizes it) is timed
    in rounds beside the model in fp32 and in int8; the mixed model's measurement, corrected by how much
    faster or slower the machine runs now than when those two were calibrated, less its prediction
    without transitions, divided by the elements crossing a change of precision
    (:func:`hwcompress.lut.predict.transition_elements`), is the rate every mixed prediction adds.
    """
    import numpy as np

    artifact = point["artifact"]
    example = torch.zeros(*artifact.input_shape)
    try:
        groups = pruning.find_channel_groups(module, example)
    except Exception:  # a model torch-pruning cannot trace: no transition term
        return
    floating = [layer for index, g in enumerate(groups) if index % 2 == 0 for layer in [*g.producers, *g.depthwise]]
    if not floating:
        return
    inputs = [np.random.default_rng(0).standard_normal(artifact.input_shape).astype(np.float32) for _ in range(4)]
    mixed_path = artifact.onnx_path.with_suffix(".mixed.onnx")
    symmetric = symmetric_table(table)
    int8 = set(quantize_onnx(artifact.onnx_path, mixed_path, inputs, floating, symmetric=symmetric).int8_layers)
    specs = [at_precision(spec, INT8) if spec.name in int8 else spec for spec in point["specs"]]
    whole = replace(settings, per_layer=False)
    references = {None: point, INT8: point_at_precision(point, INT8, symmetric)}
    calibrated = {p: next((m for m in reversed(table.models) if m.get("fingerprint") == fingerprint
                           and (None if m.get("precision", table.precision) == table.precision else m.get("precision")) == p), None)
                  for p in references}
    if any(m is None for m in calibrated.values()):
        return
    mixed_times, drifts = [], []
    for _ in range(rounds):
        mixed_times.append(profiler.measure(dataclasses.replace(artifact, onnx_path=mixed_path), whole).latency.median)
        for precision, reference in references.items():
            now = profiler.measure(reference["artifact"], whole).latency.median
            drifts.append(now / float(calibrated[precision]["measured_ms"]))
    measured = round(statistics.median(mixed_times) / statistics.median(drifts), 6)
    # without the transition term: this record is what gives it
    predicted = table.predict_detail(specs, transitions=False).total_ms
    precision_of = {spec.name: getattr(spec, "precision", None) for spec in specs}
    elements = transition_elements(specs, precision_of)
    rate = max(measured - predicted, 0.0) / elements if elements else 0.0
    table.models.append({
        "name": name, "precision": TRANSITIONS, "fingerprint": fingerprint, "families": list(families),
        "input_shape": list(artifact.input_shape), "measured_ms": measured, "layer_sum_ms": round(predicted, 6),
        "scale": ratio_digits(measured / predicted) if predicted > 0 else 1.0, "float_layers": len(specs) - len(int8),
        "transition_elements": elements, "ms_per_element": rate, "date": _now(),
        # The mixed model's layers, so that predictions take the rate against the table as it stands
        # (TablePredictor.current_transition_rate), as calibrations are summed again.
        "specs": [spec_record(spec) for spec in specs],
    })


def _store_probe(table: LatencyTable, profiler: Any, settings: ProfileSettings, method: str, valid: Any, probe: str,
                 lacking: str, expected: str) -> None:
    """Call the profiler's optional ``method`` (a probe of the device) where the table lacks its answer, and
    store what ``valid`` accepts under the same name. A probe that fails or answers nonsense costs the
    table that record, not the recording (its entries are already in)."""
    call = getattr(profiler, method, None)
    if not callable(call) or method in table.provenance:
        return
    try:
        measured = call(settings)
    except Exception as error:  # noqa: BLE001 - optional probe
        warnings.warn(f"{probe} failed ({type(error).__name__}: {error}); the LUT is saved without {lacking}", stacklevel=3)
        return
    if measured and valid(measured):
        table.provenance[method] = measured
        table.invalidate()
    elif measured:
        warnings.warn(f"{probe} answered {measured!r}, not {expected}; the LUT is saved without {lacking}", stacklevel=3)


def valid_conversion_rates(rates: Any) -> bool:
    """Whether ``rates`` is ``{"to_plain": {...}, "to_blocked": {...}}`` with finite, non-negative
    ``intercept_ms`` and ``ms_per_element`` (what the predictor reads)."""

    def fit_ok(fit: Any) -> bool:
        return isinstance(fit, dict) and all(
            isinstance(fit.get(key, 0.0), (int, float)) and math.isfinite(fit.get(key, 0.0)) and fit.get(key, 0.0) >= 0
            for key in ("intercept_ms", "ms_per_element"))

    return isinstance(rates, dict) and all(fit_ok(rates.get(direction)) for direction in ("to_plain", "to_blocked"))


def point_at_precision(point: dict[str, Any], precision: str | None, symmetric: bool = False) -> dict[str, Any]:
    """A calibration point in another precision: its model quantized (random ranges: only its time
    counts; ``symmetric`` Q/DQ for a runtime that reads only that), its layers priced in that precision."""
    if precision is None:
        return point
    artifact = point["artifact"]
    quantized = artifact.onnx_path.with_suffix(f".{precision}.onnx")
    if precision == INT8 and not quantized.exists():
        quantize_unit(artifact.onnx_path, quantized, artifact.input_shape, symmetric=symmetric)
    return {**point, "artifact": dataclasses.replace(artifact, onnx_path=quantized),
            "specs": [at_precision(spec, precision) for spec in point["specs"]]}


def uniform_variants(
    module: Any,
    input_shape: tuple[int, ...],
    widths: Sequence[float],
    multiple: int,
) -> list[tuple[float, Any]]:
    """Copies of ``module`` with every prunable channel group kept at ``width`` (physically pruned).

    The calibration measures these beside the full model: what separate layers miss is not the same
    share of a pruned model as of the full one (measured on this project's 2-core Xeon: measured/sum
    1.01 for mobilenet_v2, 0.75 at width 0.3). Channel groups come from
    :func:`hwcompress.slim.pruning.find_channel_groups` (the search's own), which never prunes the
    model's outputs. A model that
    cannot be pruned yields no variants: the calibration then uses the full model alone.
    """
    widths = [w for w in widths if 0 < w < 1]
    if not widths:
        return []
    example = torch.zeros(*input_shape)
    out: list[tuple[float, Any]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = pruning.find_channel_groups(module, example)
            for width in widths:
                keep = {g.name: max(g.min_channels, pruning.round_channels(g.channels, width, multiple)) for g in groups}
                out.append((width, pruning.prune_channels(module, example, keep).eval()))
            for _, model in out:
                with torch.no_grad():
                    model(example)
    except Exception as error:  # calibration falls back to the full model; never fatal
        warnings.warn(f"calibration variants skipped: the model could not be pruned ({type(error).__name__}: {error})", stacklevel=2)
        return []
    return out


def export_plan(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    out_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    points: int = 5,
    min_ratio: float = 0.2,
    quantum: int | None = None,
    widths: Sequence[float] = CALIBRATION_WIDTHS,
    calibrate: bool = True,
) -> Path:
    """Export everything :func:`record_lut` would time, for :func:`record_plan` to time on the device.

    Phones (Termux) and some boards have ONNX Runtime but no usable PyTorch; the layers, the channel
    grid, the calibration models and the quantum probe are exported here as ONNX files with a
    ``manifest.json``. Without ``quantum`` the grid is planned on the device's channel multiple and
    the device still detects its quantum from the probe, for interpolation.

    ``out_dir`` must be new, empty, or an earlier plan (replaced; :func:`check_plan_folder`). The plan is
    written into a hidden folder beside it and renamed into place when complete: a failure leaves
    nothing behind, and an earlier plan in ``out_dir`` as it was.

    Returns:
        The manifest's path.
    """

    out = Path(out_dir)
    check_plan_folder(out)
    if quantum is not None and int(quantum) < 1:
        raise UserError(f"the channel quantum must be at least 1 channel (got {quantum})")
    target = out.resolve()
    made = [folder for folder in (target, *target.parents) if not folder.exists()]  # removed again on failure
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():  # written beside it, renamed into place when complete
        stage = target.parent / f".{target.name}.partial-{os.getpid()}-{n}"
        if not stage.exists():
            break
    stage.mkdir()
    try:
        manifest = _write_plan(model_module, input_shape, descriptor, stage, model_name, points, min_ratio, quantum, widths, calibrate)
        check_plan_folder(out)  # still new, empty or an earlier plan: its files are hwcompress's to replace
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made[1:]:  # the parents this call created, deepest first, where still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return out / manifest.name


def check_plan_folder(out_dir: str | os.PathLike[str]) -> None:
    """Refuse to write a plan into ``out_dir`` unless it is missing, empty, or an earlier plan, which the
    new one replaces: a folder whose every file is its ``manifest.json`` (schema ``hwcompress.lut-plan/1``)
    or an ONNX file that manifest lists. A file hwcompress did not write is never replaced."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the plan (a new or empty one)")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_symlink() or not p.is_dir())
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        manifest = None
    listed = {"manifest.json"}
    if isinstance(manifest, dict) and manifest.get("schema") == PLAN_SCHEMA:
        calibration = manifest.get("calibration") if isinstance(manifest.get("calibration"), dict) else {}
        for items in (manifest.get("units"), manifest.get("probe"), calibration.get("points")):
            listed |= {item["onnx"] for item in items or () if isinstance(item, dict) and isinstance(item.get("onnx"), str)}
    else:
        listed = set()
    foreign = [f for f in files if f not in listed]
    if foreign:
        raise UserError(f"--out {out} holds files that are not a hwcompress LUT plan's ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder (an earlier plan is replaced)")


def _write_plan(model_module: Any, input_shape: tuple[int, ...], descriptor: Any, out: Path, model_name: str | None, points: int,
                min_ratio: float, quantum: int | None, widths: Sequence[float], calibrate: bool) -> Path:
    """:func:`export_plan`'s files, written into the folder ``out``; returns the manifest's path."""
    (out / "units").mkdir(parents=True, exist_ok=True)
    input_shape = tuple(int(d) for d in input_shape)
    units = model_units(model_module, input_shape)
    multiple = int(getattr(descriptor, "channel_multiple", 8) or 8)
    configs = grid_configs(units, multiple, quantum or multiple, points, min_ratio)
    name = model_name or type(model_module).__name__

    def export(module: Any, shape: tuple[int, ...], relative: str) -> str:
        export_onnx(module, shape, out / relative, verify=False)
        return relative

    planned = []
    for index, (config, template) in enumerate(configs):
        module, shape = build_unit(config, template)
        planned.append({"config": config.to_dict(), "fused": list(template.fused), "input_shape": list(shape),
                        "onnx": export(module, shape, f"units/{index:04d}.onnx")})
    probe = []
    if quantum is None:
        for index, config in enumerate(quantum_probe_configs(input_shape[0], multiple)):
            module, shape = build_unit(config)
            probe.append({"config": config.to_dict(), "input_shape": list(shape), "onnx": export(module, shape, f"probe/{index}.onnx")})
    calibration = None
    if calibrate:
        variants = [(1.0, model_module)] + uniform_variants(model_module, input_shape, widths, multiple)
        calibration = {"name": name, "fingerprint": model_fingerprint(units), "configs": [u.config.to_dict() for u in units], "points": []}
        for width, variant in variants:
            analysis = analyze(variant, input_shape)
            calibration["points"].append({
                "width": width, "macs": analysis.macs, "specs": [spec.to_dict() for spec in analysis.layers],
                "onnx": export(variant, input_shape, f"models/{width:.2f}.onnx"),
            })
    manifest = {
        "schema": PLAN_SCHEMA,
        "device": descriptor.name,
        "model": name,
        "input_shape": list(input_shape),
        "channel_multiple": multiple,
        "channel_quantum": quantum,
        "grid": {"points": points, "min_ratio": min_ratio},
        "planner": f"hwcompress {__version__}",
        "date": _now(),
        "units": planned,
        "probe": probe,
        "calibration": calibration,
    }
    write_json(manifest, out / "manifest.json", rows=True)
    return out / "manifest.json"


def default_lut_path(descriptor: Any, settings: ProfileSettings, batch: int = 1) -> Path:
    """Where the on-demand cost model of a local device is cached (the user data folder's ``luts/``)."""

    name = f"{descriptor.name}-{settings.precision}-t{settings.threads}-b{batch}.lut.json"
    return user_data_dir() / "luts" / name



def ensure_lut(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    settings: ProfileSettings,
    *,
    profiler: Any,
    path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> LatencyTable:
    """The cost model of a *local* device for this model: the cached table, completed where needed.

    The search calls this before it starts: the first call records (minutes), later ones only load
    (and record what a new model adds). A cache recorded with another runtime version or other
    settings, or a damaged one, is recorded afresh: it is ours to replace.

    Args:
        profiler: the measuring profiler (:func:`hwcompress.measure.resolve.resolve_timing`'s).
        path: the cache file (default :func:`default_lut_path`).
        options: passed to :func:`record_lut` (``points``, ``min_ratio``, ``passes``, ``progress``...).
    """
    batch = int(input_shape[0])
    path = Path(path) if path is not None else default_lut_path(descriptor, settings, batch)
    if "overwrite" not in options and path.exists():
        try:
            cached = LatencyTable.load(path)
            fresh = LatencyTable(new_provenance(descriptor, profiler, settings, batch, unit_timer(profiler).timing))
            # A cache whose probe mis-detected the channel block the runtime now reports is re-recorded.
            misread = (fresh.provenance.get("channel_quantum_source") == "runtime" and "quantum" not in options
                       and cached.quantum != fresh.quantum)
            options["overwrite"] = cached.settings_key() != fresh.settings_key() or misread
        except UserError:
            options["overwrite"] = True
    return record_lut(model_module, input_shape, descriptor, profiler, settings, path, **options)


