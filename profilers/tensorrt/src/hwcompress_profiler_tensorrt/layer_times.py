"""Per-layer times from TensorRT's ``IProfiler``, mapped back to ONNX node names.

TensorRT calls ``report_layer_time(layer_name, ms)`` once per engine layer per inference. Engine layers
are fusions of ONNX nodes, named after them: ``/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu``,
``PWN(/act/Sigmoid, /act/Mul)``, ``{ForeignNode[/blocks.0/MatMul.../blocks.0/Softmax]}`` (a Myelin
region: first and last node), ``Reformatting CopyNode for Input Tensor 0 to /conv1/Conv`` (a layout
conversion TensorRT inserts in front of a layer). The core maps ONNX node names to PyTorch modules
(``hwcompress.model.export.node_module_path``), so each engine layer's time is credited to its *first* ONNX
node: for a Conv+BN+ReLU fusion that is the convolution, which is where pruning changes the cost, and a
reformat is credited to the layer that needed it. Layers named after no ONNX node keep their own name
and land in the report's ``(other)`` row.

Everything here is plain Python, so it is tested without TensorRT; the ``IProfiler`` subclass that feeds
:class:`LayerTimeRecorder` is built in :mod:`hwcompress_profiler_tensorrt.engine`.
"""

from __future__ import annotations

import re
import statistics
from typing import Iterable

_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to ", re.IGNORECASE)
_FOREIGN = re.compile(r"\{ForeignNode\[(.*)\]\}")


def layer_nodes(layer_name: str) -> list[str]:
    """The ONNX node names an engine layer's name mentions, in order.

    Args:
        layer_name: the name TensorRT reports for an engine layer.

    Returns:
        At least one name; the layer name itself when nothing could be split out.

    Example:
        >>> layer_nodes("PWN(/act/Sigmoid, /act/Mul) + /conv/Conv")
        ['/act/Sigmoid', '/act/Mul', '/conv/Conv']
    """
    text = _REFORMAT.sub("", layer_name.strip())
    text = _FOREIGN.sub(lambda match: match.group(1).replace("...", " + "), text)
    text = text.replace("PWN(", "").replace(")", "").replace("(", "")
    nodes = []
    for part in re.split(r"\s*\+\s*|\s*,\s*", text):
        part = part.strip()
        if not part:
            continue
        # TensorRT prefixes inserted shuffles with the node they serve ("reshape_before_/fc/Gemm");
        # the node name is what maps back to a module.
        slash = part.find("/")
        if slash > 0:
            part = part[slash:]
        nodes.append(part)
    return nodes or [layer_name]


def primary_node(layer_name: str) -> str:
    """The ONNX node an engine layer's time is credited to (its first one)."""
    return layer_nodes(layer_name)[0]


def is_edge_conversion(layer_name: str) -> bool:
    """Whether an engine layer only converts a tensor's format or precision (a TensorRT reformat)."""
    return bool(_REFORMAT.match(layer_name.strip()))


def unit_run_times(records: Iterable[tuple[int, str, float]]) -> list[float]:
    """Per-run in-network time of a tiny model: its layers' sum, without the conversions at its edges.

    A single-layer engine (what ``hwcompress lut record`` builds) starts and ends with reformat layers
    that turn the fp32 NCHW input into the kernel's format and back; inside a network the layers run
    back to back in their own formats and those conversions happen once, at the network's edges. So
    leading and trailing reformats of each run are left out (the analogue of ONNX Runtime's
    ReorderInput/ReorderOutput), while reformats between two layers of the unit count.

    Args:
        records: ``(run_index, layer_name, ms)`` in report order; negative runs are warm-up.

    Returns:
        One time per run, in run order (a run made only of conversions keeps their sum).
    """
    runs: dict[int, list[tuple[str, float]]] = {}
    for run, layer_name, ms in records:
        if run >= 0:
            runs.setdefault(run, []).append((layer_name, float(ms)))
    times = []
    for run in sorted(runs):
        layers = runs[run]
        first, last = 0, len(layers)
        while first < last and is_edge_conversion(layers[first][0]):
            first += 1
        while last > first and is_edge_conversion(layers[last - 1][0]):
            last -= 1
        kept = layers[first:last] or layers
        times.append(sum(ms for _, ms in kept))
    return times


def aggregate_layer_times(records: Iterable[tuple[int, str, float]]) -> dict[str, float]:
    """Median per-inference time of each ONNX node over the profiled runs.

    Args:
        records: ``(run_index, layer_name, ms)`` as reported; runs with a negative index are
            warm-up and ignored. Several layers credited to one node within a run are summed.

    Returns:
        ONNX node name -> median milliseconds per inference.
    """
    per_run: dict[str, dict[int, float]] = {}
    for run, layer_name, ms in records:
        if run < 0:
            continue
        node = primary_node(layer_name)
        runs = per_run.setdefault(node, {})
        runs[run] = runs.get(run, 0.0) + float(ms)
    return {node: statistics.median(runs.values()) for node, runs in per_run.items()}


class LayerTimeRecorder:
    """Collects ``report_layer_time`` calls, tagged with the run they belong to."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, float]] = []
        self.run = -1

    def begin_run(self, index: int) -> None:
        """Tag the following reports with ``index`` (negative: warm-up, ignored)."""
        self.run = index

    def add(self, layer_name: str, ms: float) -> None:
        self.records.append((self.run, str(layer_name), float(ms)))

    def node_times(self) -> dict[str, float]:
        return aggregate_layer_times(self.records)
