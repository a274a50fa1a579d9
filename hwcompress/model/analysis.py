"""Static analysis of a model: one traced forward pass gives per-layer shapes, MACs and parameters.

MACs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (which counts matmul and
convolution FLOPs at the ATen level, 2 per multiply-accumulate), so they match torchvision's model
cards exactly: resnet18 1.81 G, resnet50 4.09 G, mobilenet_v2 0.30 G MACs at 224x224. BN, activations,
pooling and adds are not counted (the same convention as the cards). FLOPs are reported as 2 x MACs.

Per-layer rows cover every leaf module that has parameters or MACs; anything outside leaves (a bare
``torch.matmul`` in a ``forward``, a parameter held by a container) lands in an ``(other)`` row, so the
rows always add up to the whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hwcompress.errors import UserError

OTHER = "(other)"


@dataclass
class LayerSpec:
    """One layer as the profiler, the cost model and the search see it."""

    name: str
    op: str
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    cin: int | None = None
    cout: int | None = None
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | None = None
    groups: int | None = None
    macs: int = 0
    params: int = 0
    #: The share of its looked-up time a latency prediction charges this row (1: all of it). The search's
    #: cost model sets it for a convolution pruned below the runtime's channel block: such a row is
    #: looked up at one block and charged the kept share of the block's channels
    #: (:meth:`hwcompress.search.cost.CostModel.layers_for`).
    time_scale: float = 1.0
    #: The nearest convolutions and Linear layers whose outputs reach this one's input through
    #: operations that are not layers (norms, activations, adds, multiplies, pooling), read off the
    #: autograd graph of the analysing forward pass; ``()`` for a layer reading the network's input,
    #: None where unknown (ONNX analyses, layers other than convolutions and Linear).
    sources: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data.get("time_scale") == 1.0:
            del data["time_scale"]
        if data.get("sources") is None:
            data.pop("sources", None)
        return data


@dataclass
class ModelAnalysis:
    """Whole-model counts and the per-layer rows that add up to them."""

    layers: list[LayerSpec]
    macs: int
    params: int
    input_shape: tuple[int, ...]
    counter: str = "torch.utils.flop_counter.FlopCounterMode (conv, linear, matmul; MACs = FLOPs / 2)"

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _tuple(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):  # padding="same"
        return None
    return tuple(int(v) for v in value)


def _shape(value: Any) -> tuple[int, ...] | None:
    import torch

    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(value[0].shape)
    return None


def _plain_attention() -> Any:
    import contextlib

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # an older PyTorch: no fused attention to avoid
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def layer_modules(module: Any) -> list[tuple[str, Any]]:
    """The modules that get a row: every leaf, and attention blocks whole (their projections inside)."""
    import torch

    rows: list[tuple[str, Any]] = []
    whole: list[str] = []
    for name, child in module.named_modules():
        if not name or any(name.startswith(w + ".") for w in whole):
            continue
        if isinstance(child, torch.nn.MultiheadAttention):
            whole.append(name)
            rows.append((name, child))
        elif not list(child.children()):
            rows.append((name, child))
    return rows


def analyze(module: Any, input_shape: tuple[int, ...]) -> ModelAnalysis:
    """Count MACs and parameters of ``module`` for one input of ``input_shape``, per leaf layer.

    Args:
        module: a ``torch.nn.Module`` (put in eval mode for the trace and restored afterwards).
        input_shape: e.g. ``(1, 3, 224, 224)``.

    Returns:
        A :class:`ModelAnalysis` whose layer rows add up exactly to its totals.

    Example:
        >>> import torchvision
        >>> a = analyze(torchvision.models.resnet18(), (1, 3, 224, 224))
        >>> round(a.macs / 1e9, 2), a.params
        (1.81, 11689512)
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, tuple[Any, Any]] = {}
    graph = _SourceGraph()
    handles = []
    leaves = layer_modules(module)
    for name, leaf in leaves:
        def hook(_mod: Any, inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(_mod, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                graph.add(name, inputs, output)
            shapes.setdefault(name, (_shape(inputs), _shape(output)))

        handles.append(leaf.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        # With gradients enabled and the plain (math) attention kernel, every multiply is an op the
        # counter knows: under no_grad, nn.MultiheadAttention takes a fused fast path and the fused
        # attention kernels are not counted (vit_b_16: 11.27 G MACs instead of the card's 17.56 G).
        with torch.enable_grad(), _plain_attention(), counter:
            # An input that requires grad (cloned: in-place ops on it stay legal), so that every tensor
            # derived from it has an autograd node, also in models whose parameters are frozen.
            module(torch.zeros(*input_shape).requires_grad_().clone())
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise UserError(input_mismatch(module, input_shape, error)) from None
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)

    counts = counter.get_flop_counts()
    root = type(module).__name__
    total_macs = sum(counts.get("Global", {}).values()) // 2
    layers: list[LayerSpec] = []
    for name, leaf in leaves:
        macs = sum(counts.get(f"{root}.{name}", {}).values()) // 2
        params = sum(p.numel() for p in leaf.parameters())
        if not macs and not params:
            continue
        in_shape, out_shape = shapes.get(name, (None, None))
        spec = LayerSpec(name=name, op=type(leaf).__name__, in_shape=in_shape, out_shape=out_shape, macs=macs, params=params)
        if isinstance(leaf, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            spec.sources = graph.sources(name)
        if isinstance(leaf, torch.nn.modules.conv._ConvNd):
            spec.cin, spec.cout, spec.groups = leaf.in_channels, leaf.out_channels, leaf.groups
            spec.kernel, spec.stride, spec.padding = _tuple(leaf.kernel_size), _tuple(leaf.stride), _tuple(leaf.padding)
        elif isinstance(leaf, torch.nn.Linear):
            spec.cin, spec.cout = leaf.in_features, leaf.out_features
        elif isinstance(leaf, torch.nn.modules.batchnorm._BatchNorm):
            spec.cin = spec.cout = leaf.num_features
        elif isinstance(leaf, torch.nn.MultiheadAttention):
            spec.cin = spec.cout = leaf.embed_dim
        layers.append(spec)
    total_params = sum(p.numel() for p in module.parameters())
    other_macs = total_macs - sum(layer.macs for layer in layers)
    other_params = total_params - sum(layer.params for layer in layers)
    if other_macs or other_params:
        layers.append(LayerSpec(name=OTHER, op="-", in_shape=None, out_shape=None, macs=other_macs, params=other_params))
    return ModelAnalysis(layers=layers, macs=total_macs, params=total_params, input_shape=tuple(input_shape))


class _SourceGraph:
    """Which layers feed which, from the autograd graph of one forward pass: each convolution or Linear
    layer's output node is remembered, and a layer's sources are the remembered nodes reached from its
    input's node through nodes that are not layers (norms, activations, adds, multiplies, pooling)."""

    def __init__(self) -> None:
        self._layer_of: dict[Any, str] = {}
        self._input_of: dict[str, Any] = {}

    def add(self, name: str, inputs: Any, output: Any) -> None:
        """One call of layer ``name``: every call's output is the layer's (a layer called twice feeds
        both readers), the first call's input is what the row describes."""
        if name not in self._input_of:
            first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
            self._input_of[name] = getattr(first, "grad_fn", None)
        node = getattr(output, "grad_fn", None)
        if node is not None:
            self._layer_of[node] = name

    def sources(self, name: str) -> tuple[str, ...] | None:
        """The layers feeding ``name``; ``()`` for the network's input, None where the input has no
        autograd node (a detached or no-grad region: unknown, not "the input")."""
        if self._input_of.get(name) is None:
            return None
        found: list[str] = []
        seen: set[Any] = set()
        stack = [self._input_of[name]]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in self._layer_of:
                found.append(self._layer_of[node])
                continue
            stack.extend(child for child, _ in node.next_functions)
        return tuple(sorted(set(found)))


def input_mismatch(module: Any, input_shape: tuple[int, ...], error: BaseException) -> str:
    """One line saying why ``module`` cannot run on ``input_shape``, naming what its first layer expects."""
    import torch

    shape = "x".join(str(d) for d in input_shape)
    first = next(((name, m) for name, m in module.named_modules()
                  if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))), None)
    if first is not None:
        name, layer = first
        if isinstance(layer, torch.nn.modules.conv._ConvNd):
            rank = layer.weight.dim()  # an input has as many dimensions as the weight: batch, channels, space
            if len(input_shape) != rank or input_shape[1] != layer.in_channels:
                return (f"the model cannot run on input shape {shape}: its first layer {name} ({type(layer).__name__}) "
                        f"expects {rank} dimensions with {layer.in_channels} channels, e.g. "
                        f"--input-shape 1,{layer.in_channels},{','.join(['224'] * (rank - 2))}")
        elif input_shape[-1] != layer.in_features:
            return (f"the model cannot run on input shape {shape}: its first layer {name} (Linear) expects "
                    f"{layer.in_features} features in the last dimension")
    detail = " ".join(str(error).split())[:200]
    return f"the model cannot run on input shape {shape} ({type(error).__name__}: {detail}); pass the shape it takes with --input-shape"


#: ONNX ops counted as layers, with the PyTorch module name their rows take (by spatial rank for convs).
_ONNX_CONV = {1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}
_ONNX_NORM = {3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def onnx_row_name(node_name: str, index: int) -> str:
    """The row an ONNX node is reported under: its PyTorch module path when the exporter wrote one
    (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``), else the node's own name."""
    from hwcompress.model.export import node_module_path

    return node_module_path(node_name) or node_name or f"node{index}"


def analyze_onnx(path: Any, input_shape: tuple[int, ...]) -> ModelAnalysis:
    """Layers, MACs and parameters of an ONNX file, from its graph and ONNX's shape inference.

    Counted the way :func:`analyze` counts PyTorch models (the torchvision model-card convention):
    Conv (output elements x input channels per group x kernel), Gemm and MatMul with a weight
    (rows x inner x outer), MatMul of two activations (attention) too; parameters exactly from the
    initializers. Rows are named by the PyTorch module path the exporter wrote into the node name,
    so per-node times map onto them.
    """
    import math

    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if inputs:
        dims = inputs[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, input_shape):
            dim.dim_value = int(value)
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # a graph ONNX cannot infer: counts from what is known
        inferred = model
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.dim_value > 0 for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    shapes.update(weights)
    layers: list[LayerSpec] = []
    counted_params = 0
    for index, node in enumerate(graph.node):
        in_shape = shapes.get(node.input[0]) if node.input else None
        out_shape = shapes.get(node.output[0]) if node.output else None
        own = [name for name in node.input if name in weights]
        params = sum(math.prod(weights[name]) for name in own)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        spec = None
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights and out_shape:
            w = weights[node.input[1]]
            groups = int(attrs.get("group", 1))
            macs = math.prod(out_shape) * w[1] * math.prod(w[2:])
            pads = tuple(attrs.get("pads", ()))
            spec = LayerSpec(onnx_row_name(node.name, index), _ONNX_CONV.get(len(w) - 2, "Conv"), in_shape, out_shape,
                             cin=w[1] * groups, cout=w[0], kernel=tuple(w[2:]), stride=tuple(attrs.get("strides", ())) or None,
                             padding=pads[: len(pads) // 2] or None, groups=groups, macs=macs, params=params)
        elif node.op_type in ("Gemm", "MatMul") and out_shape and in_shape and len(node.input) > 1:
            other = shapes.get(node.input[1])
            if other is None:
                continue
            inner = in_shape[-1]
            outer = out_shape[-1]
            macs = math.prod(out_shape) * inner
            op = "Linear" if node.input[1] in weights else "MatMul"
            spec = LayerSpec(onnx_row_name(node.name, index), op, in_shape, out_shape, cin=inner if op == "Linear" else None,
                             cout=outer if op == "Linear" else None, macs=macs, params=params)
        elif node.op_type == "BatchNormalization" and in_shape:
            spec = LayerSpec(onnx_row_name(node.name, index), _ONNX_NORM.get(len(in_shape), "BatchNorm"), in_shape, out_shape,
                             cin=in_shape[1], cout=in_shape[1], params=params)
        if spec is not None:
            counted_params += params
            layers.append(spec)
    total_params = sum(int(numpy_helper.to_array(t).size) for t in graph.initializer)
    total_macs = sum(layer.macs for layer in layers)
    if total_params - counted_params:
        layers.append(LayerSpec(name=OTHER, op="-", in_shape=None, out_shape=None, macs=0, params=total_params - counted_params))
    return ModelAnalysis(layers=layers, macs=total_macs, params=total_params, input_shape=tuple(input_shape),
                         counter="ONNX graph with shape inference (Conv, Gemm, MatMul; the PyTorch counter's convention)")
