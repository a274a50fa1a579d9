"""Static int8 quantization: a layer precision map -> a Q/DQ ONNX model that ONNX Runtime runs in int8.

The deployable int8 student is what ONNX Runtime's own static quantizer writes
(``onnxruntime.quantization.quantize_static``, ``QuantFormat.QDQ``, opset 17), as its guide
recommends for CPUs: uint8 activations and int8 weights (U8S8), weights per output channel, activation
ranges calibrated (MinMax) on training images. The file is a plain ONNX model: QuantizeLinear /
DequantizeLinear pairs around float operators, which any ONNX Runtime session fuses into integer
kernels (DQ-Conv-Q into QLinearConv, residual adds into QLinearAdd), and which TensorRT reads as
explicit quantization.

A *layer* is a PyTorch conv/linear module, found in the exported graph by its node names
(``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``, :func:`hwcompress.model.export.node_module_path`).
Layers asked to stay float are excluded from quantization together with everything downstream that
only float layers feed (their activations, the residual adds of a float stage), so a float stage pays
one Q/DQ at its edges instead of one around every operator. Which layers ONNX Runtime really runs in
int8 is read back from the session's optimized graph (:func:`int8_layers_of`): a layer the quantizer
cannot handle, or one without an integer kernel on this runtime (ConvTranspose on the CPU), stays
float and is named with the reason; a float layer ONNX Runtime would turn into an integer kernel anyway
(between quantized neighbours, :class:`QdqGraph`) is quantized properly instead, and said so.

Measured on this project's 2-core Xeon (AVX-512 VNNI), one thread: the embedded ResNet-56 runs at
0.47x of its fp32 latency in int8 (0.97 vs 2.08 ms) with the same test accuracy (99.16%).

onnxruntime is imported inside the functions (the core never imports it at module top).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hwcompress.errors import UserError
from hwcompress.model.export import export_onnx, node_module_path

__all__ = [
    "FLOAT",
    "INT8",
    "PRECISIONS",
    "QdqGraph",
    "QuantizeResult",
    "calibration_inputs",
    "float_nodes",
    "int8_layers_of",
    "layer_nodes",
    "onnx_accuracy",
    "onnx_logits",
    "quantize_module",
    "quantize_onnx",
    "quantize_unit",
]

FLOAT = "fp32"
INT8 = "int8"
PRECISIONS = ("fp32", "fp16", "int8")
#: ONNX operators that carry a layer's weights: what a precision map decides.
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Operators of an optimized ONNX Runtime graph that run a layer (conv/linear) in integers.
INTEGER_LAYER_KERNELS = frozenset({"QLinearConv", "NhwcQLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger",
                                   "MatMulIntegerToFloat", "ConvInteger", "DynamicQuantizeMatMul"})
#: Training images the activation ranges are calibrated on (ONNX Runtime's MinMax). Measured on the
#: embedded ResNet-56 students: 64 images give the same test accuracy as 256 for a quarter of the time.
CALIBRATION_IMAGES = 64


@dataclass
class QuantizeResult:
    """A quantized ONNX file and what runs in int8 in it.

    Attributes:
        path: the Q/DQ ONNX file.
        int8_layers: layers ONNX Runtime runs with integer kernels.
        float_layers: layers kept in float, each with the reason (asked for, or not quantizable here).
        requantized: layers asked to stay float that ONNX Runtime would run in int8 anyway (their input
            and output are quantized, :class:`QdqGraph`), so they were quantized properly instead.
        calibration_images: images the activation ranges were calibrated on.
        seconds: time spent quantizing (calibration included).
    """

    path: Path
    int8_layers: list[str] = field(default_factory=list)
    float_layers: dict[str, str] = field(default_factory=dict)
    calibration_images: int = 0
    seconds: float = 0.0
    requantized: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "int8_layers": list(self.int8_layers), "float_layers": dict(self.float_layers),
                "requantized": list(self.requantized), "calibration_images": self.calibration_images,
                "seconds": round(self.seconds, 3)}


def calibration_inputs(dataset: Any, images: int, input_shape: Sequence[int]) -> list[np.ndarray]:
    """The first ``images`` items of ``dataset`` as model inputs of ``input_shape`` (batches of its batch size).

    Deterministic (the first items, in order), as the BatchNorm re-estimation before scoring is.
    """
    batch = int(input_shape[0])
    count = min(int(images), len(dataset))
    if count < 1:
        raise UserError("quantization needs calibration images: the training split is empty")
    items = [np.asarray(dataset[i][0], dtype=np.float32) for i in range(count)]
    out = []
    for start in range(0, count - batch + 1, batch):
        out.append(np.stack(items[start:start + batch]).reshape(tuple(input_shape)))
    return out or [np.stack([items[0]] * batch).reshape(tuple(input_shape))]


def layer_nodes(model: Any) -> dict[str, list[Any]]:
    """Per PyTorch layer (module path), its weight-carrying ONNX nodes (:data:`LAYER_OPS`)."""
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type in LAYER_OPS:
            path = node_module_path(node.name)
            if path:
                found.setdefault(path, []).append(node)
    return found


class QdqGraph:
    """The float graph's topology: which nodes to leave unquantized for a set of float layers, and
    which of those layers ONNX Runtime would run in int8 anyway.

    ONNX Runtime (1.20 and later, ``WeightBiasQuantization``) quantizes the float weights of a Conv,
    ConvTranspose or Gemm whose input comes from a DequantizeLinear and whose output reaches a
    QuantizeLinear without branching (through ReLU/Clip at most), and runs it as an integer kernel
    with *per-tensor* weights. A float layer between int8 neighbours (a ResNet block's ``conv1``
    before an int8 ``conv2``) is therefore not float at all; :meth:`realized` drops such layers from
    the float set, so that they are quantized properly (per channel) and priced as what runs.
    """

    def __init__(self, model: Any) -> None:
        constants = {init.name for init in model.graph.initializer}
        constants.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
        self.nodes = [node for node in model.graph.node if node.op_type != "Constant"]
        self.inputs = [[name for name in node.input if name and name not in constants] for node in self.nodes]
        self.graph_inputs = {value.name for value in model.graph.input}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = index
            for name in self.inputs[index]:
                self.consumers.setdefault(name, []).append(index)
        self.layer = {index: node_module_path(node.name) for index, node in enumerate(self.nodes) if node.op_type in LAYER_OPS}
        self._memo: dict[frozenset[str], frozenset[str]] = {}

    def float_node_indices(self, float_layers: Iterable[str]) -> set[int]:
        """The layers' own nodes, then, in graph order, every node whose data inputs all come from nodes
        already left in float (a float conv's activation, the residual add of a float stage):
        quantizing those would only add a Q/DQ pair around each. Nodes fed by the graph input alone
        follow their consumers' precision (the quantizer decides)."""
        wanted = set(float_layers)
        out: set[int] = set()
        for index in range(len(self.nodes)):
            data = [name for name in self.inputs[index] if name not in self.graph_inputs]
            if index in self.layer:
                floating = self.layer[index] in wanted
            else:
                floating = bool(data) and all(self.producer.get(name) in out for name in data)
            if floating:
                out.add(index)
        return out

    def _requantized(self, index: int, floating: set[int]) -> bool:
        """Whether ONNX Runtime would run the float layer node ``index`` as an integer kernel."""
        if self.nodes[index].op_type not in ("Conv", "ConvTranspose", "Gemm"):
            return False
        source = self.inputs[index][0] if self.inputs[index] else None
        if source is None:
            return False
        producer = self.producer.get(source)
        quantized_input = (producer is not None and producer not in floating) or any(
            c not in floating for c in self.consumers.get(source, []))
        current = index
        while quantized_input:
            outputs = self.consumers.get(self.nodes[current].output[0], [])
            if len(outputs) != 1:
                return False
            following = outputs[0]
            if following not in floating:
                return True  # its input gets a QuantizeLinear
            if self.nodes[following].op_type not in ("Relu", "Clip"):
                return False
            current = following
        return False

    def realized(self, float_layers: Iterable[str]) -> frozenset[str]:
        """The part of ``float_layers`` that ONNX Runtime really runs in float (see the class docstring):
        layers it would requantize are dropped, repeatedly, since each drop changes its neighbours."""
        key = frozenset(float_layers)
        if key not in self._memo:
            current = set(key)
            while True:
                floating = self.float_node_indices(current)
                dropped = {self.layer[i] for i in floating if i in self.layer and self._requantized(i, floating)}
                if not dropped:
                    break
                current -= dropped
            self._memo[key] = frozenset(current)
        return self._memo[key]

    def float_nodes(self, float_layers: Iterable[str]) -> list[str]:
        """Node names to leave unquantized so that ``float_layers`` run in float."""
        return sorted(self.nodes[i].name for i in self.float_node_indices(float_layers))


def float_nodes(model: Any, float_layers: Iterable[str]) -> list[str]:
    """Node names to leave unquantized so that ``float_layers`` run in float (:class:`QdqGraph`)."""
    return QdqGraph(model).float_nodes(float_layers)


def int8_layers_of(quantized_path: str | os.PathLike[str]) -> tuple[list[str], dict[str, str]]:
    """Which layers of a Q/DQ model ONNX Runtime runs with integer kernels on this machine.

    Reads the graph ONNX Runtime executes (optimized at the extended level, which keeps node names;
    the CPU-specific layout passes come later and change no precision).

    Returns:
        ``(int8 layers, {float layer: its operator there})``.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwcompress-q-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        _open(ort, quantized_path, options)
        optimized = onnx.load(options.optimized_model_filepath)
    int8: set[str] = set()
    floating: dict[str, str] = {}
    for node in optimized.graph.node:
        path = node_module_path(node.name)
        if not path:
            continue
        if node.op_type in INTEGER_LAYER_KERNELS:
            int8.add(path)
        elif node.op_type in LAYER_OPS:
            floating[path] = node.op_type
    return sorted(int8), {k: v for k, v in sorted(floating.items()) if k not in int8}


def qdq_layers_of(quantized_path: str | os.PathLike[str]) -> tuple[list[str], dict[str, str]]:
    """Which layers of a Q/DQ model a runtime that honours explicit quantization (TensorRT) runs in int8:
    those whose data and weight inputs both come out of a DequantizeLinear. Read off the graph itself,
    not off ONNX Runtime's CPU kernels (which fuse fewer symmetric patterns than TensorRT does).

    Returns:
        ``(int8 layers, {float layer: its operator})``.
    """
    import onnx

    model = onnx.load(str(quantized_path))
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    int8: set[str] = set()
    floating: dict[str, str] = {}
    for path, nodes in layer_nodes(model).items():
        if all(len(node.input) > 1 and node.input[0] in dequantized and node.input[1] in dequantized for node in nodes):
            int8.add(path)
        else:
            floating[path] = nodes[0].op_type
    return sorted(int8), dict(sorted(floating.items()))


def without_shared_initializers(model: Any) -> Any:
    """``model`` with every Identity of an initializer replaced by a copy of that initializer.

    The exporter shares equal constants between layers through Identity nodes (an untrained network's
    BatchNorm-folded biases are all zeros); the quantizer then finds no constant bias on those convs and
    leaves them in float, behind Q/DQ pairs (measured: a ResNet-20 ran 2.3x slower "quantized").
    """
    import onnx

    initializers = {init.name: init for init in model.graph.initializer}
    shared = [node for node in model.graph.node if node.op_type == "Identity" and node.input[0] in initializers]
    if not shared:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name: init for init in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in initializers]:
        copy = onnx.TensorProto.FromString(initializers[node.input[0]].SerializeToString())
        copy.name = node.output[0]
        model.graph.initializer.append(copy)
        model.graph.node.remove(node)
    return model


class _DropAdvice(logging.Filter):
    """Drops the quantizer's advice to pre-process: our exported graphs are constant-folded and shaped
    already, and the advice would reach the user's terminal through the root logger on every student."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    advice = _DropAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _Reader:
    """ONNX Runtime's calibration data reader over a list of inputs."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # the quantizer may ask; one pass is all MinMax needs
        pass


def reduced_weight_range(facts: Mapping[str, Any]) -> bool:
    """Whether int8 weights must keep to 7 bits on the device these ``facts`` describe: on an x86-64 CPU
    without VNNI (``int8_vnni`` False) ONNX Runtime multiplies uint8 activations by int8 weights with
    16-bit intermediate sums that can saturate, and its quantization guide asks for ``reduce_range``
    there. VNNI and AMX CPUs, Arm and GPUs keep 8 bits."""
    return facts.get("int8_vnni") is False


def symmetric_int8(facts: Mapping[str, Any]) -> bool:
    """Whether the device's runtime takes only symmetric int8 Q/DQ (signed int8 activations with zero point
    0, weights in -127..127): TensorRT's explicit quantization does (its guide: symmetric quantization
    only), and its profiler says so in the ``int8_symmetric`` fact; a LUT recorded with TensorRT before
    that fact existed still names its runtime. ONNX Runtime takes either; its CPU kernels prefer uint8
    activations, which stay the default."""
    return facts.get("int8_symmetric") is True or facts.get("runtime") == "tensorrt"


def quantize_onnx(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], calibration: Sequence[np.ndarray],
                  float_layers: Iterable[str] = (), *, per_channel: bool = True, check: bool = True,
                  reduce_range: bool = False, symmetric: bool = False) -> QuantizeResult:
    """Quantize an exported float model statically to Q/DQ int8, leaving ``float_layers`` in float.

    Args:
        fp32_path: the float ONNX model (exported by :func:`hwcompress.model.export.export_onnx`).
        out_path: where the Q/DQ model goes (written atomically).
        calibration: model inputs the activation ranges are calibrated on (:func:`calibration_inputs`).
        float_layers: layers (module paths) to keep in float (a mixed-precision student).
        per_channel: one weight scale per output channel (ONNX Runtime's and TensorRT's advice for convs).
        check: read back which layers run in int8 (:func:`int8_layers_of`; about 0.1 s).
        reduce_range: 7-bit weights (:func:`reduced_weight_range`).
        symmetric: signed int8 activations with zero point 0 and symmetric weights (:func:`symmetric_int8`:
            what TensorRT reads); else uint8 activations with a zero point (ONNX Runtime's CPU default).

    Raises:
        UserError: the quantizer failed on this model (the message names its error).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from hwcompress.files import write_atomic

    started = time.perf_counter()
    model = onnx.load(str(fp32_path))
    graph = QdqGraph(model)
    requested = set(float_layers)
    asked = sorted(graph.realized(requested))
    exclude = graph.float_nodes(asked)
    input_name = model.graph.input[0].name
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="hwcompress-q-") as folder:
        target = Path(folder) / "quantized.onnx"
        source = Path(folder) / "float.onnx"
        onnx.save(without_shared_initializers(model), str(source))
        try:
            with _quiet_quantizer():
                quantize_static(str(source), str(target), _Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                                reduce_range=reduce_range,
                                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else None)
        except Exception as error:  # the quantizer's own failures are many and unnamed
            raise UserError(f"ONNX Runtime's quantizer failed on {fp32_path}: {type(error).__name__}: {error}") from None
        write_atomic(out_path, target.read_bytes())
    result = QuantizeResult(out_path, calibration_images=len(calibration) * int(calibration[0].shape[0]) if calibration else 0,
                            requantized=sorted(requested - set(asked)))
    if check:
        int8, floating = qdq_layers_of(out_path) if symmetric else int8_layers_of(out_path)
        result.int8_layers = int8
        for layer in asked:
            if layer not in int8:
                result.float_layers[layer] = "kept in float (mixed precision)"
        why = "the quantizer put no Q/DQ around it" if symmetric else "ONNX Runtime has no int8 kernel for it here"
        for layer, op in floating.items():
            result.float_layers.setdefault(layer, f"{op}: {why}; kept in float")
    else:
        result.int8_layers = sorted(set(layer_nodes(model)) - set(asked))
        result.float_layers = {layer: "kept in float (mixed precision)" for layer in asked}
    result.seconds = time.perf_counter() - started
    return result


def quantize_module(module: Any, input_shape: Sequence[int], folder: str | os.PathLike[str], calibration: Sequence[np.ndarray],
                    float_layers: Iterable[str] = (), *, name: str = "student", check: bool = True,
                    reduce_range: bool = False, symmetric: bool = False) -> tuple[Path, QuantizeResult]:
    """Export ``module`` to ``folder/{name}_fp32.onnx`` and quantize it to ``folder/{name}.onnx``.

    Returns:
        ``(the float ONNX path, the quantization result)``.
    """
    folder = Path(folder)
    fp32 = folder / f"{name}_fp32.onnx"
    export_onnx(module, tuple(input_shape), fp32, verify=False)
    return fp32, quantize_onnx(fp32, folder / f"{name}.onnx", calibration, float_layers, check=check, reduce_range=reduce_range,
                               symmetric=symmetric)


def _session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return _open(ort, path, options)


def _open(ort: Any, path: str | os.PathLike[str], options: Any) -> Any:
    """An ONNX Runtime CPU session of a quantized model; a model ONNX Runtime cannot load is a one-line error."""
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"ONNX Runtime cannot run the quantized model {path}: {first}") from None


def onnx_logits(path: str | os.PathLike[str], dataset: Any, limit: int | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The outputs of an ONNX model on ``dataset`` (one item per run, as exported), and the labels.

    Returns:
        ``(logits [N, classes], labels [N])``.
    """
    session = _session(path, threads)
    meta = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in meta.shape]
    batch = shape[0]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    outputs, labels = [], []
    for start in range(0, count, batch):
        items = [dataset[i] for i in range(start, min(start + batch, count))]
        images = np.stack([np.asarray(x, dtype=np.float32) for x, _ in items])
        real = len(items)
        if real < batch:  # a static batch: pad the last one and drop the padding's outputs
            images = np.concatenate([images, np.repeat(images[-1:], batch - real, axis=0)])
        out = session.run(None, {meta.name: images.reshape(shape)})[0]
        outputs.append(np.asarray(out)[:real])
        labels.extend(int(y) for _, y in items)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0)), np.asarray(labels)


def onnx_accuracy(path: str | os.PathLike[str], dataset: Any, limit: int | None = None, threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX model (a quantized student as ONNX Runtime executes it) on ``dataset``."""
    logits, labels = onnx_logits(path, dataset, limit, threads)
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def quantize_unit(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], input_shape: Sequence[int],
                  samples: int = 4, seed: int = 0, symmetric: bool = False) -> Path:
    """Quantize a one-layer LUT unit for timing: ranges from a few random inputs (an int8 kernel's speed
    does not depend on its scales), no read-back; ``symmetric`` for a runtime that reads only symmetric
    Q/DQ (:func:`symmetric_int8`).

    Returns:
        ``out_path``.
    """
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(tuple(input_shape)).astype(np.float32) for _ in range(max(1, samples))]
    quantize_onnx(fp32_path, out_path, inputs, check=False, symmetric=symmetric)
    return Path(out_path)
