"""``hwcompress profile`` as a library call: model + device -> :class:`~hwcompress.measure.report.ProfileReport`.

The flow: resolve the device and how its latency is obtained here (:func:`resolve_timing`: measured,
or predicted from its LUT); load and analyse the model; export it to ONNX; let the profiler time it,
with the PyTorch module beside the file; map per-node times back to PyTorch layers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from hwcompress.devices import resolve_device
from hwcompress.measure.competition import watch
from hwcompress.measure.contract import ModelArtifact
from hwcompress.measure.report import ProfileReport
from hwcompress.measure.resolve import make_settings, resolve_timing
from hwcompress.model.analysis import OTHER, ModelAnalysis, analyze, analyze_onnx
from hwcompress.model.export import export_onnx, node_module_path
from hwcompress.model.loading import resolve_model


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


#: ONNX ops a runtime folds into the layer before them (walked back over when a fused node is named
#: after its last output: ONNX Runtime's NCHWc pass names Conv+ReLU after the ReLU's output).
_FOLDED = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Mul", "Add",
                     "BatchNormalization", "Identity"})
_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _producers(onnx_path: Path | None) -> dict[str, Any]:
    """Tensor name -> the node of the ONNX file that writes it (empty without a file)."""
    if onnx_path is None:
        return {}
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {output: node for node in graph.node for output in node.output}


def layer_of(node: str, names: set[str], producers: dict[str, Any] | None = None) -> str:
    """The layer row a runtime node belongs to: the module path the exporter wrote into its name, after
    the suffixes runtimes add when they fuse or re-lay nodes (``/fc/MatMul/MatMulAddFusion`` is ``fc``);
    a node named after a tensor (``/layer1/layer1.0/relu/Relu_output_0_nchwc``: Conv+ReLU fused) is
    followed back through the graph, over what folds into a layer, to the layer that writes it;
    ``(other)`` for what names no layer (layout reorders)."""
    producers = producers or {}
    tensor = node[: -len("_nchwc")] if node.endswith("_nchwc") else node
    writer = producers.get(tensor)
    seen = 0
    while writer is not None and writer.op_type in _FOLDED and seen < 8:
        inputs = [producers.get(name) for name in writer.input]
        layers = [n for n in inputs if n is not None and n.op_type in _LAYER_OPS]
        writer = layers[0] if layers else next((n for n in inputs if n is not None), None)
        seen += 1
    candidates = [writer.name] if writer is not None else []
    for name in [*candidates, node]:
        parts = [part for part in name.split("/") if part]
        while len(parts) >= 2:
            module = node_module_path("/" + "/".join(parts))
            if module in names:
                return module
            parts = parts[:-1]
        if name in names:
            return name
    return OTHER


def without_profiler_overhead(node_ms: Mapping[str, float], whole_ms: float) -> tuple[dict[str, float], float]:
    """Per-node times with the node profiler's own cost taken out, and that cost per node (ms).

    A runtime's node profiler adds a fixed cost to every node it times (ONNX Runtime's: 1-4 us; int8
    mobilenet_v2 at 64 px, 0.20 ms whole, summed to 0.40 ms). Left in, it inflates every small layer's
    share in ``hwcompress profile``, and in the search's fit in context it priced each node a student
    adds (the Q/DQ and layout nodes at a change of precision) at several times its cost: mixed students
    came out 27-43% too expensive after anchoring. So when the nodes sum to more than the model's whole-model
    median, the excess is taken out evenly, node by node, none below zero (what a node cannot give is
    shared by the rest), until they sum to the whole; a sum at or under the whole is left as it is.
    """
    times = {name: float(ms) for name, ms in node_ms.items()}
    before = sum(times.values())
    for _ in range(64):
        excess = sum(times.values()) - whole_ms
        live = [name for name, ms in times.items() if ms > 0]
        if excess <= 1e-12 * max(before, 1.0) or not live:
            break
        cut = excess / len(live)
        for name in live:
            times[name] = max(0.0, times[name] - cut)
    return times, (before - sum(times.values())) / len(times) if times else 0.0


def map_node_times(node_ms: dict[str, float], analysis: ModelAnalysis, onnx_path: Path | None = None) -> dict[str, float]:
    """Sum per-node times into the analysis' layer rows (unmatched nodes go to ``(other)``); with the ONNX
    file, nodes a runtime fused and named after their last output land on the layer that leads them."""
    names = {layer.name for layer in analysis.layers}
    producers = _producers(onnx_path)
    out: dict[str, float] = {}
    for node, ms in node_ms.items():
        key = layer_of(node, names, producers)
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
            model_info["onnx"] = {"path": str(onnx_path), "opset": onnx_opset(onnx_path), "exporter": "user-supplied"}
        artifact = ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=loaded.module, name=loaded.name)
        with watch(timing.measured and not descriptor.remote) as watched:
            measurement = timing.profiler.measure(artifact, settings)
        competition = watched.result
        overhead, raw_total = None, None
        if measurement.layer_ms is not None:
            layer_ms = dict(measurement.layer_ms)
        elif measurement.node_ms:  # while the exported file is still there: fused nodes are mapped through its graph
            node_ms = measurement.node_ms
            raw_total = sum(node_ms.values())
            if measurement.source == "measured" and measurement.latency.median > 0:
                node_ms, overhead = without_profiler_overhead(node_ms, measurement.latency.median)
            layer_ms = map_node_times(node_ms, analysis, onnx_path)
        else:
            layer_ms = {}
    if workdir is None and "onnx" in model_info and loaded.module is not None:
        model_info["onnx"]["path"] = None  # the temporary export is gone
    if overhead:  # the nodes summed to more than the whole: the profiler's own cost per node is out of the rows
        notes.append(f"per-layer times: the node profiler's kernel times summed to {raw_total:.3f} ms, "
                     f"{raw_total / measurement.latency.median:.2f}x the whole-model median; its own cost, "
                     f"{1e3 * overhead:.1f} us per node on average, is taken out evenly, so the rows sum to the median")
    elif layer_ms and measurement.source == "measured" and measurement.latency.median > 0:
        # The rows are checked against the whole: a sum far off the median says the per-node timing
        # (a separate profiled run, kernel times only) does not describe this model's session.
        total = sum(layer_ms.values())
        notes.append(f"per-layer times sum to {total:.3f} ms, {total / measurement.latency.median:.2f}x the whole-model "
                     "median (a profiled run's kernel times; the rest of a run is the runtime's own work)")
    busy = competition.note() if competition is not None else None
    if busy:
        notes.append(busy)
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
        per_layer=None if raw_total is None else {"node_sum_ms": raw_total, "profiler_overhead_ms_per_node": overhead or 0.0},
        competition=None if competition is None else competition.to_dict(),
    )
