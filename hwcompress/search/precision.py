"""The precision part of a policy: which layers of a student run in int8 (``--quantize int8 | mixed``).

``--quantize int8``: every layer the device's runtime runs in int8 is quantized; the search prunes
channels on top. ``--quantize mixed``: the agent also chooses, per channel group, whether the layers that
group produces run in int8 or stay in float (HAQ's per-layer precision beside AMC's per-layer channels;
a group is the unit because the channels of a residual stream are one decision already, and a float
island inside an int8 stream pays a Q/DQ at each edge). Layers in no group's output (the classifier)
are int8 in both modes.

Which layers *can* run in int8 is read from the runtime, not assumed: the teacher is quantized once and
ONNX Runtime's optimized graph says which layers became integer kernels
(:func:`hwcompress.slim.quantize.int8_layers_of`); the rest stay float, named with the reason.

A precision map is ``{group name: "int8" | "fp32"}``; groups not named take the mode's default (int8);
``{"*": "fp32"}`` puts every layer in float (the teacher). A float choice ONNX Runtime cannot honour
(a layer whose input and output are both quantized runs as an integer kernel anyway,
:class:`hwcompress.slim.quantize.QdqGraph`) is priced and reported as the int8 it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from hwcompress.errors import UserError

QUANTIZE_MODES = ("int8", "mixed")
LOW = "int8"
FLOAT = "fp32"
#: The whole model in float (the teacher), as a precision map.
ALL_FLOAT = {"*": FLOAT}


def check_quantize(mode: str | None) -> str | None:
    """``mode`` when it is a --quantize mode (or None); a one-line error otherwise."""
    if mode is None:
        return None
    if mode not in QUANTIZE_MODES:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)} (got {mode!r})")
    return mode


def check_int8_path(mode: str | None, descriptor: Any, timing: Any, table: Any = None) -> None:
    """Refuse ``--quantize`` where the device's latency has no int8 path, in one line.

    A device measured here needs a profiler that runs int8 models (its ``precisions``); a device
    predicted from a LUT needs int8 entries in it.
    """
    if mode is None:
        return
    if timing is not None and timing.measured:
        precisions = tuple(getattr(timing.profiler, "precisions", ()) or ())
        if LOW not in precisions:
            runs = ", ".join(precisions) or "its own precision only"
            raise UserError(f"--quantize {mode}: {descriptor.name} is measured with the {timing.profiler.name!r} profiler, "
                            f"which has no int8 path ({runs}); drop --quantize or choose a device whose runtime runs "
                            "int8 (cpu: ONNX Runtime)")
        return
    table = table if table is not None else getattr(timing, "table", None)
    if table is not None and LOW not in table.precisions:
        raise UserError(f"--quantize {mode}: the LUT {table.where()} for {descriptor.name} has no int8 entries; record them "
                        f"on the device: hwcompress lut record {descriptor.option} --precisions fp32,int8 ...")


@dataclass
class PrecisionPlan:
    """Which layers may run in int8 and which group decides each one's precision.

    Attributes:
        mode: ``int8`` or ``mixed``.
        int8_layers: conv/linear layers the runtime runs in int8.
        float_layers: the layers it cannot, each with the reason.
        group_layers: per channel group, the int8-capable layers whose precision it decides (its
            producers and depthwise convolutions: the layers whose output channels it prunes).
        realize: float layers -> the part of them the runtime really runs in float (None: all).
    """

    mode: str
    int8_layers: list[str]
    float_layers: dict[str, str] = field(default_factory=dict)
    group_layers: dict[str, list[str]] = field(default_factory=dict)
    realize: Callable[[set[str]], frozenset[str]] | None = None

    @classmethod
    def build(cls, mode: str, groups: Sequence[Any], int8_layers: Sequence[str], float_layers: Mapping[str, str],
              realize: Callable[[set[str]], frozenset[str]] | None = None) -> "PrecisionPlan":
        capable = set(int8_layers)
        owned = {g.name: [n for n in [*g.producers, *g.depthwise] if n in capable] for g in groups}
        return cls(check_quantize(mode) or mode, sorted(capable), dict(float_layers),
                   {name: layers for name, layers in owned.items() if layers}, realize)

    @property
    def choosable(self) -> list[str]:
        """Groups whose precision the search chooses (``mixed`` only; none in ``int8``)."""
        return list(self.group_layers) if self.mode == "mixed" else []

    def layer_precisions(self, precision: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every conv/linear layer's precision under the group precision map ``precision``."""
        precision = precision or {}
        default = precision.get("*", LOW)
        out = {layer: default for layer in self.int8_layers}
        out.update({layer: FLOAT for layer in self.float_layers})
        for group, chosen in precision.items():
            for layer in self.group_layers.get(group, []):
                out[layer] = chosen
        if self.realize is not None:
            asked = {layer for layer, p in out.items() if p != LOW}
            for layer in asked - self.realize(asked) - set(self.float_layers):
                out[layer] = LOW  # the runtime runs it in int8 whatever was asked
        return out

    def float_layers_for(self, precision: Mapping[str, str] | None = None) -> list[str]:
        """The int8-capable layers that ``precision`` keeps in float (what the quantizer must leave out)."""
        return sorted(layer for layer, p in self.layer_precisions(precision).items() if p != LOW and layer in self.int8_layers)

    def group_precision(self, precision: Mapping[str, str] | None = None) -> dict[str, str]:
        """Each group's precision as it runs under ``precision``: int8 when all its int8-capable layers
        run in int8 (groups without int8-capable layers are not listed)."""
        layers = self.layer_precisions(precision)
        return {group: LOW if all(layers.get(n) == LOW for n in owned) else FLOAT for group, owned in self.group_layers.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "int8_layers": len(self.int8_layers), "float_layers": dict(self.float_layers),
                "choosable_groups": len(self.choosable)}
