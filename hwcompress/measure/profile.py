"""``hwcompress profile`` as a library call: model + device -> :class:`~hwcompress.measure.report.ProfileReport`.

The flow: resolve the device and how its latency is obtained here (:func:`resolve_timing`: measured,
or predicted from its LUT); load and analyse the model; export it to ONNX; let the profiler time it,
with the PyTorch module beside the file; map per-node times back to PyTorch layers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hwcompress.devices import resolve_device
from hwcompress.measure.contract import ModelArtifact
from hwcompress.measure.report import ProfileReport
from hwcompress.measure.resolve import make_settings, resolve_timing
from hwcompress.model.analysis import OTHER, ModelAnalysis, analyze, analyze_onnx
from hwcompress.model.export import export_onnx, node_module_path
from hwcompress.model.loading import resolve_model


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
    model: Any = None,
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
        model: an ``nn.Module`` (give ``input_shape``), a ``--model`` string (see
            :func:`hwcompress.model.loading.load_model`), or a loaded model.
        device: device name or alias from the catalog.
        device_file: a device TOML file instead of a catalog name.
        input_shape: the input shape (default: the model's usual one).
        weights: state-dict file for torchvision/factory models.
        lut: a LUT file; forces prediction from it instead of measurement.
        workdir: where the ONNX export goes (a temporary folder when None).
        **setting_overrides: ``runs``, ``warmup``, ``threads``, ``precision``, ``per_layer``.

    Returns:
        The report; ``report.to_dict()`` is the ``hwcompress.profile/1`` document.
    """
    descriptor = resolve_device(device, device_file)
    settings = make_settings(descriptor, **setting_overrides)
    timing = resolve_timing(descriptor, lut)
    notes = list(timing.notes) + timing.check_settings(settings)
    loaded = resolve_model(model, weights=weights, input_shape=input_shape)
    shape = tuple(input_shape or loaded.input_shape)
    analysis = analyze(loaded.module, shape) if loaded.module is not None else analyze_onnx(loaded.onnx_path, shape)
    model_info: dict[str, Any] = {"name": loaded.name, "source": loaded.source, "input_shape": list(shape)}

    with tempfile.TemporaryDirectory(prefix="hwcompress-") as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        if loaded.module is not None and not timing.measured:
            onnx_path = None  # a prediction reads the module's layers; nothing to export
        elif loaded.module is not None:
            info = export_onnx(loaded.module, shape, folder / f"{loaded.name.replace('/', '_')}.onnx")
            onnx_path = Path(info.path)
            model_info["onnx"] = info.to_dict()
        else:
            onnx_path = loaded.onnx_path
            model_info["onnx"] = {"path": str(onnx_path), "opset": None, "exporter": "user-supplied"}
        artifact = ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=loaded.module, name=loaded.name)
        measurement = timing.profiler.measure(artifact, settings)
    if workdir is None and "onnx" in model_info:
        model_info["onnx"]["path"] = None  # the temporary export is gone
    if measurement.layer_ms is not None:
        layer_ms = dict(measurement.layer_ms)
    else:
        layer_ms = map_node_times(measurement.node_ms, analysis) if measurement.node_ms else {}
    return ProfileReport(
        device=descriptor.to_dict(),
        model=model_info,
        latency=measurement.latency,
        source=measurement.source,
        analysis=analysis,
        layer_ms=layer_ms,
        facts=measurement.facts,
        settings=settings.to_dict(),
        notes=notes + list(measurement.notes),
        coverage=measurement.coverage,
        profiler=timing.profiler.name,
    )
