"""The work a network does outside its layers, and what it costs on the device.

A LUT prices layers (a convolution with the norm and activation fused into it). What runs between them,
the multiply that scales a squeeze-excitation block's channels, the residual adds, global and spatial
pooling, is in no entry: until 2026-11-29 the calibration ratio carried it (measured whole / layer sum).
That holds while every layer is scaled by the ratio; a variant with many layers off the runtime's blocked
path prices those as timed (outside the ratio), and the time between its layers went unpriced with them.
On efficientnet_b0 at 96 px, torch-pruned without ``round_to``, 0.22-0.26 ms of each variant ran in such
nodes (the multiply 0.10-0.11 ms and global pooling 0.06-0.08 ms, ONNX Runtime's kernel times), and the
LUT put those variants 9-17% under their measurement (docs/benchmarks.md).

This module reads that work off a model's layer rows, without a second trace: which layers feed which
(``LayerSpec.sources``, the autograd graph of the analysing pass) and the shapes say what happened in
between. A reader whose input is pooled to 1x1 while its source's output is not was fed through a global
pool; a reader fed by a source with a pooled output (an excitation) and one without was fed their product;
a reader with several full-size sources read their sum; a reader whose input is spatially smaller than
its source's output, through a pooling window. The same holds for a student the search builds from the
teacher's rows (the cost model keeps sources and updates shapes), and for the calibration points a table
stores. Rows without sources (ONNX analyses) give no work, and predictions keep the ratio as it was.

The prices (:func:`non_layer_costs`) are timed on the device, each kind alone
and warm (the tensor was just written by the layer before), per node, channel and element: broadcasting
over few pixels costs per channel (ONNX Runtime 1.32's multiply: 6 ns per channel and 0.08 ns per
element; the 16 squeeze-excitation multiplies of efficientnet_b0 at 96 px priced at 0.097 ms against
0.105 ms of kernel time in the network, where a price per element said 0.034).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from typing import Any, Callable, Sequence

from hwcompress.lut.conversions import pooled
from hwcompress.lut.keys import CONV_OPS
from hwcompress.model.analysis import LayerSpec

#: The kinds of work between layers, and the ONNX op each is timed as.
KINDS = {"scale": "Mul", "add": "Add", "global_pool": "GlobalAveragePool", "pool": "MaxPool"}


def _elements(shape: Sequence[int] | None) -> int:
    return math.prod(int(d) for d in shape) if shape else 0


def non_layer_work(specs: Sequence[LayerSpec], fused: Callable[[str], bool] | None = None) -> dict[str, tuple[int, int, int]]:
    """Nodes, channels and elements each kind of non-layer work (:data:`KINDS`) processes in the network whose layer rows are
    ``specs`` (module docstring); empty where no row carries ``sources``.

    Each piece of work is counted once however many layers read its result (a block's input read by its
    first convolution and its shortcut); a sum of ``n`` tensors is ``n - 1`` adds, and a reader whose
    sources include a sum another reader already read pays only the adds beyond it (a chain of residual
    blocks is one add per block). ``fused(layer)``: whether an add can run inside ``layer``, one of those
    that wrote its new operands (not the sum it adds to); such adds are not counted (an
    unfused add's activation, regnet's and resnet's relu, is not priced: the rows do not say it is there)."""
    rows = {s.name: s for s in specs}
    work = {kind: [0, 0, 0] for kind in KINDS}  # kind -> [nodes, channels, elements]
    seen: set[tuple[str, Any]] = set()
    sums: list[tuple[frozenset[str], tuple[int, ...], int]] = []  # (sources, its shape, adds)
    for spec in specs:
        if spec.sources is None or not spec.in_shape or (spec.op not in CONV_OPS and spec.op != "Linear"):
            continue
        sources = [rows[s] for s in spec.sources if s in rows and rows[s].out_shape]
        full = [s for s in sources if len(s.out_shape) >= 3 and not pooled(s.out_shape)]  # type: ignore[arg-type]
        excited = any(pooled(s.out_shape) for s in sources)
        names = frozenset(s.name for s in full)
        if len(full) >= 2:  # their sum (a chain of residual adds reaches every block's output)
            if not any(names == known for known, _, _ in sums):
                # at the smallest source's size: a source pooled on its way in is added after the pool
                sums.append((names, min((tuple(s.out_shape) for s in full), key=_elements), len(full) - 1))  # type: ignore[arg-type]
        if pooled(spec.in_shape) or (spec.op == "Linear" and len(spec.in_shape) == 2):
            if full and ("global_pool", names) not in seen:  # one pool of their sum
                seen.add(("global_pool", names))
                _add(work, "global_pool", 1, max((tuple(s.out_shape) for s in full), key=_elements))  # type: ignore[arg-type]
            continue
        if excited and full and ("scale", frozenset(spec.sources)) not in seen:
            seen.add(("scale", frozenset(spec.sources)))
            _add(work, "scale", 1, spec.in_shape)
        for source in full:  # a source larger than the reader's input went through a pooling window
            if tuple(source.out_shape[2:]) != tuple(spec.in_shape[2:]) and ("pool", source.name) not in seen:  # type: ignore[index]
                seen.add(("pool", source.name))
                _add(work, "pool", 1, source.out_shape)
    counted: list[tuple[frozenset[str], int]] = []
    for names, shape, adds in sorted(sums, key=lambda item: len(item[0])):
        inside, known = max(((n, k) for k, n in counted if k < names), default=(0, frozenset()), key=lambda item: item[0])
        # The layers this sum adds to the one inside it: the add runs inside one of them where it can.
        if adds > inside and not (fused is not None and any(fused(name) for name in names - known)):
            _add(work, "add", adds - inside, shape)
        counted.append((names, adds))
    return {kind: (nodes, channels, n) for kind, (nodes, channels, n) in work.items() if nodes}


def _add(work: dict[str, list[int]], kind: str, nodes: int, shape: Sequence[int]) -> None:
    """``nodes`` of ``kind``, each over a tensor of ``shape``."""
    work[kind][0] += nodes
    work[kind][1] += nodes * int(shape[1])
    work[kind][2] += nodes * _elements(shape)


def non_layer_ms(rates: dict[str, Any] | None, work: dict[str, tuple[int, int, int]], netted_ms: float = 0.0) -> float:
    """What ``work`` (:func:`non_layer_work`) costs at the table's ``rates`` (:func:`non_layer_costs`): per
    kind, each node its line's intercept (less ``netted_ms``, the node profiler's own cost per kernel,
    which the probe's kernel times include), each channel and each element theirs."""
    if not rates:
        return 0.0
    total = 0.0
    for kind, (nodes, channels, elements) in work.items():
        fit = rates.get(kind) or {}
        total += (nodes * max(float(fit.get("intercept_ms", 0.0)) - netted_ms, 0.0)
                  + float(fit.get("per_channel_ms", 0.0)) * channels + float(fit.get("per_element_ms", 0.0)) * elements)
    return total


def priced_work(predictor: Any, specs: Sequence[LayerSpec]) -> float:
    """What the work between ``specs``'s layers costs on ``predictor``'s table (a
    :class:`~hwcompress.lut.predict.TablePredictor`: its ``_non_layer`` costs, ``off_path``, ``_config_of``
    and the node profiler's cost), 0 without costs.

    A residual add runs inside a convolution that wrote one of its new operands, with the activation after
    it, and costs nothing, where that convolution is off the blocked path (ONNX Runtime fuses Conv + Add
    + Relu in plain layout) or on it with whole blocks of output channels (the NCHWc convolution sums in
    place). On the path with a partial block out (torch-pruned regnet_x_400mf: 400 -> 371 or 388 channels
    on 16-channel blocks) it runs as its own Add and Relu: read off ONNX Runtime 1.32's kernels for two
    such variants, 42 of their 44 blocks matched this rule (the two others, 39 channels out, ran fused),
    and no ``Add`` ran in the aligned variants."""
    if not predictor._non_layer:
        return 0.0
    rows = {spec.name: spec for spec in specs}

    block = predictor.layout[0]

    def fused(name: str) -> bool:
        spec = rows.get(name)
        config = predictor._config_of(spec)[0] if spec is not None else None
        if config is None or config.op not in CONV_OPS:
            return False
        return predictor.off_path(config) or config.cout % block == 0

    netted = predictor.kernel_overhead_ms if predictor.net_off_path else 0.0
    return non_layer_ms(predictor._non_layer, non_layer_work(specs, fused), netted)


def valid_non_layer_rates(rates: Any) -> bool:
    """A probe's answer this version can price with: per kind, finite, non-negative coefficients."""
    if not isinstance(rates, dict):
        return False
    fits = [rates.get(kind) for kind in KINDS if kind in rates]
    terms = ("intercept_ms", "per_channel_ms", "per_element_ms")
    return bool(fits) and all(
        isinstance(fit, dict) and all(isinstance(fit.get(t), (int, float)) and not isinstance(fit.get(t), bool)
                                      and math.isfinite(fit[t]) and fit[t] >= 0 for t in terms) for fit in fits)


def _probe_model(kind: str, channels: int, hw: int) -> tuple[Any, tuple[int, ...], int]:
    """A one-node ONNX model doing ``kind`` on a (1, channels, hw, hw) tensor, its input shape and the
    elements the kind is priced by (the output's for ``scale`` and ``add``, the input's for pooling)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    full = [1, channels, hw, hw]
    rng = np.random.default_rng(0)
    weights, elements = [], channels * hw * hw
    if kind in ("scale", "add"):  # the other operand a weight: the runtime's session feeds one input
        other = rng.standard_normal([1, channels, 1, 1] if kind == "scale" else full).astype(np.float32)
        weights.append(numpy_helper.from_array(other, "other"))
        out, node = full, helper.make_node(KINDS[kind], ["x", "other"], ["y"], name=kind)
    elif kind == "global_pool":
        out, node = [1, channels, 1, 1], helper.make_node("GlobalAveragePool", ["x"], ["y"], name=kind)
    else:
        side = (hw + 2 - 3) // 2 + 1
        out, node = [1, channels, side, side], helper.make_node("MaxPool", ["x"], ["y"], name=kind, kernel_shape=[3, 3],
                                                                 strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, full)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model, tuple(full), elements


#: The probe's (channels, height = width) points: broadcasting over few pixels costs per channel (ONNX
#: Runtime 1.32's multiply: 7 ns per channel and 0.08 ns per element, 1024 channels at 3x3 take 7 us).
PROBE_POINTS = ((64, 56), (64, 14), (256, 28), (256, 7), (1024, 7), (1024, 3))


def fit_cost_line(points: Sequence[tuple[int, int, float]]) -> dict[str, Any]:
    """``ms = intercept + per_channel * channels + per_element * elements`` fitted to ``(channels, elements,
    ms)`` points by least squares, every coefficient non-negative (a term whose fit goes negative is left
    out and the rest fitted again)."""
    import numpy as np

    ys = np.array([p[2] for p in points], dtype=float)
    columns = {"per_channel_ms": np.array([p[0] for p in points], float), "per_element_ms": np.array([p[1] for p in points], float)}
    best: tuple[float, dict[str, float]] | None = None
    for use in (("per_channel_ms", "per_element_ms"), ("per_element_ms",), ("per_channel_ms",), ()):
        design = np.column_stack([np.ones(len(points))] + [columns[c] for c in use])
        coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
        if (coef < 0).any():
            continue
        error = float(((design @ coef - ys) ** 2).sum())
        if best is None or error < best[0] - 1e-18:
            best = (error, {"intercept_ms": float(coef[0]), **{c: float(v) for c, v in zip(use, coef[1:])}})
    fit = {"intercept_ms": 0.0, "per_channel_ms": 0.0, "per_element_ms": 0.0, **(best[1] if best else {})}
    fit["points"] = [[int(c), int(e), round(float(ms), 6)] for c, e, ms in points]
    return fit


def non_layer_costs(kernel_events: Callable[[str, tuple[int, ...], int], Any],
                    points: Sequence[tuple[int, int]] = PROBE_POINTS, runs: int = 30) -> dict[str, Any] | None:
    """What each kind of non-layer work (:data:`KINDS`) costs, timed with ``kernel_events(onnx_path,
    input_shape, iterations) -> [(node, args, ms)]`` (a profiled session's kernel events) at ``points``
    (channels, height = width): per kind, the points (channels, elements, ms) and their line
    (:func:`fit_cost_line`); None where no kind could be timed. The onnxruntime plugin's
    ``non_layer_costs`` (on a remote device, the plugin there: the standalone runner has no probe)."""
    import onnx

    result: dict[str, Any] = {}
    for kind, op in KINDS.items():
        timed_points = []
        for channels, hw in points:
            model, shape, elements = _probe_model(kind, channels, hw)
            with tempfile.TemporaryDirectory(prefix="hwcompress-nonlayer-") as folder:
                path = os.path.join(folder, f"{kind}.onnx")
                onnx.save(model, path)
                events = kernel_events(path, shape, runs + 5)
            timed = sorted(ms for _, args, ms in events if args.get("op_name") == op)
            if timed:  # the profiler reports whole microseconds: a trimmed mean keeps what a median rounds off
                trim = len(timed) // 5
                timed_points.append((channels, elements, statistics.fmean(timed[trim:len(timed) - trim] or timed)))
        if len(timed_points) >= 3:
            result[kind] = fit_cost_line(timed_points)
    return result or None
