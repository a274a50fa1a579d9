"""LUT keys: a layer configuration as the runtime executes it, and one recorded entry.

An entry is keyed by op, batch, input H x W, cin, cout, kernel, stride, padding, groups and precision
(:meth:`LayerConfig.key`); everything but the channel counts is its *family*, the configurations one
interpolation grid spans. Also the op vocabulary every LUT module shares: which leaf modules fold into
the convolution before them, and the statuses a prediction gives each layer.

Precision: a table has one base precision (``provenance.precision``, what its device runs by default)
and may hold entries in other precisions too (an int8 Q/DQ unit beside its fp32 original). A key
names its precision only when it differs from the table's (``precision=None`` is the base), so a table
recorded before precisions existed reads unchanged: every entry of it is at the table's precision.
A layer row asks for a precision by being a :class:`PrecisionLayerSpec` (:func:`at_precision`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

from hwcompress.model.analysis import OTHER, LayerSpec

SCHEMA = "hwcompress.lut/1"
#: A table holding entries in more than its base precision: readers that know no precisions must refuse
#: it rather than take its int8 times for fp32 ones. Tables with one precision stay ``SCHEMA``.
SCHEMA_PRECISIONS = "hwcompress.lut/2"
SCHEMA_PREFIX = "hwcompress.lut/"
PRECISIONS = ("fp32", "fp16", "int8")
#: The ``precision`` of a table's model record that measured what a change of precision costs.
TRANSITIONS = "transitions"

EXACT = "exact"
INTERPOLATED = "interpolated"
MISSING = "missing"
FUSED = "fused"

TIMING_KERNELS = "kernels"
TIMING_SESSION = "session"

#: Leaf modules folded into the convolution (or Linear) they follow, as runtimes fuse them.
FUSABLE_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
FUSABLE_ACTIVATIONS = (
    "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "SiLU", "Sigmoid", "Tanh", "GELU", "ELU", "Mish",
)
CONV_OPS = ("Conv1d", "Conv2d", "Conv3d")
NORM_OPS = FUSABLE_NORMS
#: Other layers with parameters recorded at their own configuration only (a copy of the module).
GENERIC_OPS = ("LayerNorm", "GroupNorm", "PReLU", "InstanceNorm2d")


def _ints(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _dims(values: Sequence[int]) -> str:
    return "x".join(str(v) for v in values) if values else "-"


@dataclass(frozen=True)
class LayerConfig:
    """One LUT key: a layer configuration as the runtime executes it.

    Attributes:
        op: the PyTorch module class name (``Conv2d``, ``Linear``, ``BatchNorm2d``...).
        batch: the batch size.
        in_hw: spatial input size for convolutions and norms (``(56, 56)``); the dimensions between
            batch and features for ``Linear`` (``()`` for a plain ``(batch, features)`` input).
        cin, cout: input and output channels (features).
        kernel, stride, padding: as in the module; ``()`` where they do not apply.
        groups: convolution groups (``groups == cin == cout`` is a depthwise convolution).
        precision: ``fp32`` | ``fp16`` | ``int8``; None is the table's base precision.
    """

    op: str
    batch: int
    in_hw: tuple[int, ...]
    cin: int
    cout: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    groups: int = 1
    precision: str | None = None

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def grouped(self) -> bool:
        """A grouped convolution that is not depthwise (ResNeXt, RegNet): pruned, it keeps its groups and
        narrows each of them."""
        return self.groups > 1 and not self.depthwise

    @property
    def diagonal(self) -> bool:
        """Channels that move together (depthwise convolutions, norms, grouped convolutions as wide out as
        in, whose group widths shrink together): a one-axis grid."""
        return self.depthwise or (self.cin == self.cout and (self.op in NORM_OPS or self.grouped))

    def key(self) -> str:
        return (
            f"{self.op}|b{self.batch}|{_dims(self.in_hw)}|{self.cin}>{self.cout}|k{_dims(self.kernel)}"
            f"|s{_dims(self.stride)}|p{_dims(self.padding)}|g{self.groups}" + (f"|{self.precision}" if self.precision else "")
        )

    def family(self) -> str:
        """Everything but the channel counts: the configurations one interpolation grid spans."""
        groups = "dw" if self.depthwise else f"g{self.groups}"
        return (f"{self.op}|b{self.batch}|{_dims(self.in_hw)}|k{_dims(self.kernel)}|s{_dims(self.stride)}|p{_dims(self.padding)}"
                f"|{groups}" + (f"|{self.precision}" if self.precision else ""))

    def with_precision(self, precision: str | None, base: str | None = None) -> "LayerConfig":
        """This configuration at ``precision`` (None, or the table's ``base``, is written as None)."""
        precision = None if precision == base else precision
        return self if precision == self.precision else replace(self, precision=precision)

    def with_channels(self, cin: int, cout: int) -> "LayerConfig":
        groups = cin if self.depthwise else self.groups
        return replace(self, cin=cin, cout=cout, groups=groups)

    def out_hw(self) -> tuple[int, ...]:
        if self.op not in CONV_OPS or not self.kernel:
            return self.in_hw
        padding = self.padding or (0,) * len(self.kernel)
        stride = self.stride or (1,) * len(self.kernel)
        return tuple((h + 2 * p - k) // s + 1 for h, k, s, p in zip(self.in_hw, self.kernel, stride, padding))

    def macs(self) -> int:
        """Multiply-accumulates (the same convention as :mod:`hwcompress.model.analysis`)."""
        if self.op in CONV_OPS:
            per_out = (self.cin // max(self.groups, 1)) * math.prod(self.kernel or (1,))
            return self.batch * self.cout * math.prod(self.out_hw()) * per_out
        if self.op == "Linear":
            return self.batch * math.prod(self.in_hw) * self.cin * self.cout
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "batch": self.batch,
            "in_hw": list(self.in_hw),
            "cin": self.cin,
            "cout": self.cout,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "groups": self.groups,
            **({"precision": self.precision} if self.precision else {}),
        }

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "LayerConfig | None":
        """The key of an analysed layer, or None when the layer has no shape (the ``(other)`` row)."""
        if spec.name == OTHER or not spec.in_shape:
            return None
        shape = tuple(int(d) for d in spec.in_shape)
        batch = shape[0]
        if spec.op == "Linear":
            in_hw = shape[1:-1]
        elif spec.op in CONV_OPS or spec.op in NORM_OPS:
            in_hw = shape[2:]
        else:
            in_hw = shape[1:]
        cin = int(spec.cin) if spec.cin is not None else (shape[1] if len(shape) > 1 else 0)
        cout = int(spec.cout) if spec.cout is not None else cin
        return cls(
            op=spec.op,
            batch=batch,
            in_hw=in_hw,
            cin=cin,
            cout=cout,
            kernel=_ints(spec.kernel),
            stride=_ints(spec.stride),
            padding=_ints(spec.padding),
            groups=int(spec.groups or 1),
            precision=getattr(spec, "precision", None),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: str | None = None) -> "LayerConfig":
        """Read :meth:`to_dict`; a precision equal to the table's ``base`` is stored as None."""
        precision = data.get("precision")
        return cls(
            op=data["op"],
            batch=int(data["batch"]),
            in_hw=_ints(data.get("in_hw")),
            cin=int(data["cin"]),
            cout=int(data["cout"]),
            kernel=_ints(data.get("kernel")),
            stride=_ints(data.get("stride")),
            padding=_ints(data.get("padding")),
            groups=int(data.get("groups", 1)),
            precision=None if precision in (None, base) else str(precision),
        )


@dataclass
class PrecisionLayerSpec(LayerSpec):
    """A layer row that asks the LUT for its latency at ``precision`` (None: the table's precision)."""

    precision: str | None = None


def at_precision(spec: LayerSpec, precision: str | None) -> LayerSpec:
    """``spec`` as a row priced at ``precision`` (the row itself when nothing changes)."""
    if getattr(spec, "precision", None) == precision:
        return spec
    values = {f.name: getattr(spec, f.name) for f in fields(LayerSpec)}
    return PrecisionLayerSpec(**values, precision=precision)


def spec_record(spec: LayerSpec) -> dict[str, Any]:
    """A layer row as a calibration point stores it: its fields, None ones left out (``precision`` where it
    is priced in another precision than the table's), enough to price it again (:func:`spec_from_record`)."""
    return {name: value for name, value in spec.to_dict().items() if value is not None}


def spec_from_record(data: Mapping[str, Any]) -> LayerSpec:
    """The row :func:`spec_record` stored (JSON lists back to tuples); a ValueError for a record it cannot be."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "precision"}
    values.setdefault("in_shape", None)  # a row of what lies outside the layers ("(other)") has no shapes
    values.setdefault("out_shape", None)
    names = {f.name for f in fields(LayerSpec)}
    if not {"name", "op"} <= set(values) or set(values) - names:
        raise ValueError(f"not a layer row: {sorted(set(values) - names) or 'no name or op'}")
    return at_precision(LayerSpec(**values), data.get("precision"))


@dataclass
class LutEntry:
    """A recorded configuration and its timing (ms)."""

    config: LayerConfig
    median: float
    p90: float
    std: float
    runs: int
    fused: tuple[str, ...] = ()
    passes: int = 1
    #: How many kernels the unit ran (the runtime's nodes in its optimised graph, the layout reorders at
    #: its edges left out), where the profiler reports them (ONNX Runtime's node profiler); None in
    #: tables recorded before 2026-11-28 and from other profilers. The node profiler's cost comes off
    #: once per kernel (:meth:`hwcompress.lut.predict.TablePredictor._entry_ms`).
    kernels: int | None = None

    @property
    def spread(self) -> float:
        """A standard deviation robust to the odd preempted run: (p90 - median) / 1.2816."""
        return max(0.0, self.p90 - self.median) / 1.2816

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "fused": list(self.fused),
            "median": round(self.median, 6),
            "p90": round(self.p90, 6),
            "std": round(self.std, 6),
            "runs": self.runs,
            "passes": self.passes,
            **({"kernels": self.kernels} if self.kernels is not None else {}),
        }


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step if step > 1 else value


