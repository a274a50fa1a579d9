"""``hwcompress profile`` as a library call: model + device -> :class:`~hwcompress.report.ProfileReport`.

The flow: resolve the device; decide between measuring (this machine is the device and its profiler is
available) and predicting from the device's recorded LUT; load and analyse the model; export it to
ONNX; let the profiler time it; map per-node times back to PyTorch layers.
"""

from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from hwcompress import plugins
from hwcompress.analysis import OTHER, ModelAnalysis, analyze, analyze_onnx
from hwcompress.devices import DeviceDescriptor, resolve_device
from hwcompress.errors import UserError
from hwcompress.export import export_onnx, node_module_path
from hwcompress.models import LoadedModel, load_model
from hwcompress.profiler import ModelArtifact, ProfileSettings
from hwcompress.report import ProfileReport


def make_settings(descriptor: DeviceDescriptor, **overrides: Any) -> ProfileSettings:
    """The device's default settings with non-None ``overrides`` applied, validated."""
    known = {f.name for f in fields(ProfileSettings)}
    values = {k: v for k, v in descriptor.settings.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    settings = ProfileSettings(**values)
    for key in ("runs", "threads"):
        if int(getattr(settings, key)) < 1:
            raise UserError(f"--{key} must be at least 1 (got {getattr(settings, key)})")
    if int(settings.warmup) < 0:
        raise UserError(f"--warmup must be 0 or more (got {settings.warmup})")
    return settings


def _first_available(descriptor: DeviceDescriptor) -> tuple[Any | None, list[tuple[str, str]]]:
    """The first of the descriptor's profilers (its own, then its fallbacks) that works here.

    Returns:
        ``(profiler or None, [(name, why not), ...])`` for the installed profilers tried before it;
        fallbacks that are not installed are skipped silently (the primary's reason says what to do).
    """
    profilers = plugins.get_profilers()
    skipped: list[tuple[str, str]] = []
    for name in descriptor.profiler_names:
        profiler = profilers.get(name)
        if profiler is None:
            continue
        ok, reason = profiler.available()
        if ok:
            return profiler, skipped
        skipped.append((name, reason))
    return None, skipped


def _not_installed(descriptor: DeviceDescriptor) -> str:
    return (
        f"device {descriptor.name!r} needs the {descriptor.profiler!r} profiler, which is not installed; "
        f"install hwcompress-profiler-{descriptor.profiler} (see `hwcompress plugins`)"
    )


def _joined(skipped: list[tuple[str, str]]) -> str:
    """``profiler 'a' is unavailable: why; profiler 'b' is unavailable: why``, repeated reasons once."""
    parts: list[str] = []
    for name, reason in skipped:
        if not any(reason in part for part in parts):
            parts.append(f"profiler {name!r} is unavailable: {reason}")
    return "; ".join(parts)


def choose_profiler(descriptor: DeviceDescriptor) -> tuple[Any, str | None]:
    """The profiler that measures on ``descriptor`` here, and a note when it is a fallback.

    Raises:
        UserError: none of the descriptor's profilers works here; one line with each reason.
    """
    profiler, skipped = _first_available(descriptor)
    if profiler is None:
        if descriptor.profiler not in plugins.get_profilers():
            raise UserError(_not_installed(descriptor))
        raise UserError(_joined(skipped))
    note = None
    if skipped:
        note = f"measured with the {profiler.name!r} profiler because {_joined(skipped)}"
    return profiler, note


def get_available_profiler(descriptor: DeviceDescriptor) -> Any:
    """The profiler that measures on ``descriptor``, or a one-line error saying why it cannot here."""
    return choose_profiler(descriptor)[0]


def device_status(descriptor: DeviceDescriptor) -> tuple[str, str]:
    """How ``descriptor`` can be served here: ("measured"|"lut"|"unavailable", reason)."""
    local, why_not = descriptor.is_local()
    if local:
        profiler, skipped = _first_available(descriptor)
        if profiler is not None:
            return "measured", (f"with {profiler.name!r}: {_joined(skipped)}" if skipped else "")
        if descriptor.profiler not in plugins.get_profilers():
            why_not = f"profiler {descriptor.profiler!r} not installed (pip install hwcompress-profiler-{descriptor.profiler})"
        else:
            reasons: list[str] = []
            for _, reason in skipped:
                if not any(reason in r for r in reasons):
                    reasons.append(reason)
            why_not = "; ".join(reasons)
    lut = descriptor.lut_path()
    if lut is not None and lut.exists():
        return "lut", f"LUT {lut}"
    hint = f"; {descriptor.record_hint}" if descriptor.record_hint and not local else ""
    return "unavailable", why_not + hint


def map_node_times(node_ms: dict[str, float], analysis: ModelAnalysis) -> dict[str, float]:
    """Sum per-node times into the analysis' layer rows (unmatched nodes go to ``(other)``)."""
    names = {layer.name for layer in analysis.layers}
    out: dict[str, float] = {}
    for node, ms in node_ms.items():
        module = node_module_path(node)
        key = module if module in names else OTHER
        out[key] = out.get(key, 0.0) + ms
    return out


def profile_model(
    model: str | LoadedModel | None = None,
    *,
    device: str | None = "cpu",
    device_file: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    weights: str | None = None,
    lut: str | None = None,
    workdir: str | Path | None = None,
    **setting_overrides: Any,
) -> ProfileReport:
    """Profile ``model`` on ``device``: measured when this machine is the device, else from its LUT.

    Args:
        model: a ``--model`` string (see :func:`hwcompress.models.load_model`) or a loaded model.
        device: device name or alias from the catalog.
        device_file: a device TOML file instead of a catalog name.
        input_shape: overrides the model's default input shape.
        weights: state-dict file for torchvision/factory models.
        lut: a LUT file; forces prediction from it instead of measurement.
        workdir: where the ONNX export goes (a temporary folder when None).
        **setting_overrides: ``runs``, ``warmup``, ``threads``, ``precision``, ``per_layer``.

    Returns:
        The report; ``report.to_dict()`` is the ``hwcompress.profile/1`` document.
    """
    descriptor = resolve_device(device, device_file)
    settings = make_settings(descriptor, **setting_overrides)
    local, why_not = descriptor.is_local()
    lut_path = Path(lut) if lut else None
    if lut_path is None and not local:
        configured = descriptor.lut_path()
        if configured is None or not configured.exists():
            how = descriptor.record_hint or f"hwcompress lut record --device {descriptor.name} --model MODEL --out FILE"
            raise UserError(
                f"{why_not}; predicting {descriptor.name} latency here needs a LUT recorded on the device "
                f"(pass --lut FILE). Record one there: {how}"
            )
        lut_path = configured
    profiler, fallback_note = (None, None) if lut_path is not None else choose_profiler(descriptor)

    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights=weights, input_shape=input_shape)
    shape = tuple(input_shape or loaded.input_shape)
    if loaded.module is not None:
        analysis = analyze(loaded.module, shape)
    else:
        analysis = analyze_onnx(loaded.onnx_path, shape)
    model_info: dict[str, Any] = {"name": loaded.name, "source": loaded.source, "input_shape": list(shape)}

    if lut_path is not None:
        from hwcompress import lut as lut_module

        return lut_module.predict_report(loaded, analysis, descriptor, lut_path, settings, model_info)

    with tempfile.TemporaryDirectory(prefix="hwcompress-") as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        if loaded.module is not None:
            info = export_onnx(loaded.module, shape, folder / f"{loaded.name.replace('/', '_')}.onnx")
            onnx_path = Path(info.path)
            model_info["onnx"] = info.to_dict()
        else:
            onnx_path = loaded.onnx_path
            model_info["onnx"] = {"path": str(onnx_path), "opset": None, "exporter": "user-supplied"}
        artifact = ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=loaded.module, name=loaded.name)
        measurement = profiler.measure(artifact, settings)
    if workdir is None:
        model_info["onnx"]["path"] = None  # the temporary export is gone
    layer_ms = map_node_times(measurement.node_ms, analysis) if measurement.node_ms else {}
    notes = ([fallback_note] if fallback_note else []) + list(measurement.notes)
    if layer_ms:
        notes.append(
            "per-layer times come from a separate profiled run and include the runtime's fusions "
            "(BatchNorm folded into Conv); they need not add up to the whole-model median"
        )
    return ProfileReport(
        device=descriptor.to_dict(),
        model=model_info,
        latency=measurement.latency,
        source="measured",
        analysis=analysis,
        layer_ms=layer_ms,
        facts=measurement.facts,
        settings=settings.to_dict(),
        notes=notes,
        profiler=getattr(profiler, "name", ""),
    )
