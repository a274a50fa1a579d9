"""LUT plans on the device: time a model's layers exported elsewhere, without PyTorch.

Phones (Termux) and some boards have ONNX Runtime but no usable PyTorch; the layers, the channel grid,
the calibration models and the quantum probe are exported as ONNX files with a ``manifest.json`` on a
workstation (:func:`hwcompress.lut.record.export_plan`), copied over, and timed there
(:func:`record_plan`). Nothing here imports PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.lut.calibration import lacks_kernel_overhead, measure_kernel_overhead, record_with_calibration
from hwcompress.lut.keys import LayerConfig
from hwcompress.lut.recorder import ProgressCallback, Recorder, open_table
from hwcompress.lut.table import LatencyTable
from hwcompress.lut.units import PlannedUnit
from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.model.analysis import LayerSpec

PLAN_SCHEMA = "hwcompress.lut-plan/1"


def load_plan(plan: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read a plan folder (or its ``manifest.json``); one-line errors for anything missing."""
    path = Path(plan)
    manifest = path / "manifest.json" if path.is_dir() else path
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"LUT plan {manifest} not found (make one with `hwcompress lut plan`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"LUT plan {manifest} is unreadable (truncated or corrupted?): {error}") from None
    if not isinstance(document, dict) or document.get("schema") != PLAN_SCHEMA:
        raise UserError(f"{manifest} is not a hwcompress LUT plan (schema {PLAN_SCHEMA!r} expected)")
    for key in ("device", "input_shape", "units"):
        if key not in document:
            raise UserError(f"LUT plan {manifest} has no field {key!r}")
    folder = manifest.parent
    for item in document["units"] + document.get("probe", []) + ((document.get("calibration") or {}).get("points") or []):
        if not (folder / item["onnx"]).is_file():
            raise UserError(f"LUT plan {manifest}: {item['onnx']} is missing; copy the whole plan folder")
    return folder, document


def record_plan(
    plan: str | os.PathLike[str],
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    out_path: str | os.PathLike[str] | None,
    *,
    passes: int = 1,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    save_every_s: float = 5.0,
) -> LatencyTable:
    """Time an exported plan (:func:`export_plan`) on this device into a LUT; resumable like
    :func:`record_lut`, and needs only ONNX Runtime (no PyTorch)."""
    folder, document = load_plan(plan)
    if document["device"] not in {descriptor.name, *getattr(descriptor, "aliases", [])}:
        raise UserError(f"LUT plan {folder} was made for device {document['device']!r}, not {descriptor.name!r}")
    input_shape = tuple(int(d) for d in document["input_shape"])
    table = open_table(out_path, descriptor, profiler, settings, input_shape[0], overwrite=overwrite)
    recorder = Recorder(table, profiler, settings, out_path, progress, save_every_s)
    try:
        multiple = int(document.get("channel_multiple") or getattr(descriptor, "channel_multiple", 8))
        if document.get("channel_quantum"):
            table.provenance.update(channel_quantum=int(document["channel_quantum"]), channel_quantum_source="given")
        elif "channel_quantum_source" not in table.provenance and document.get("probe"):
            probes = [(LayerConfig.from_dict(p["config"]), PlannedUnit(folder / p["onnx"], tuple(p["input_shape"]))) for p in document["probe"]]
            detected, probe = recorder.detect_quantum_from(probes, multiple)
            table.provenance.update(channel_quantum=detected, channel_quantum_source="detected", quantum_probe=probe)
        table.invalidate()
        configs = [
            (LayerConfig.from_dict(u["config"]), PlannedUnit(folder / u["onnx"], tuple(u["input_shape"]), tuple(u.get("fused", []))))
            for u in document["units"]
        ]
        source = document.get("calibration")
        calibration = None
        if source and not any(m.get("fingerprint") == source["fingerprint"] for m in table.models):
            points = []
            for point in source["points"]:
                specs = [LayerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}) for spec in point["specs"]]
                artifact = ModelArtifact(onnx_path=folder / point["onnx"], input_shape=input_shape, name=source["name"])
                points.append({"width": point["width"], "artifact": artifact, "specs": specs, "macs": point["macs"]})
            calibration = {
                "name": source["name"], "input_shape": input_shape, "fingerprint": source["fingerprint"],
                "configs": [LayerConfig.from_dict(c) for c in source["configs"]], "points": points,
            }
        if source and source.get("points") and lacks_kernel_overhead(table) and any(table.predictor.off_path(c) for c, _ in configs):
            # the whole model, for the node profiler's own cost (what off-path entries are priced net of)
            whole = ModelArtifact(onnx_path=folder / source["points"][0]["onnx"], input_shape=input_shape, name=source["name"])
            measure_kernel_overhead(table, profiler, settings, whole)
        record_with_calibration(table, recorder, profiler, settings, configs, passes, calibration)
        table.provenance["plan"] = {"model": document.get("model"), "planner": document.get("planner"), "date": document.get("date")}
        if out_path is not None:
            table.save(out_path)
    finally:
        recorder.close()
    return table


