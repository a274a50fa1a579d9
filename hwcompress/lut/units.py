"""The layers a LUT records: a model's units (each layer with what the runtime fuses into it), the
channel grid over which each is recorded, and the tiny module that runs one configuration.

PyTorch is imported inside the functions that build modules: a device that only times an exported
plan (:mod:`hwcompress.lut.plan`, a phone under Termux) has ONNX Runtime and no PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress.lut.keys import CONV_OPS, FUSABLE_ACTIVATIONS, FUSABLE_NORMS, GENERIC_OPS, NORM_OPS, LayerConfig, _ceil_to
from hwcompress.model.analysis import analyze


@dataclass
class PlannedUnit:
    """A layer configuration exported to ONNX ahead of time (``hwcompress lut plan``)."""

    onnx_path: Path
    input_shape: tuple[int, ...]
    fused: tuple[str, ...] = ()


@dataclass
class UnitTemplate:
    """One layer of a model as it is recorded: the head module, what is fused after it, its grid axes."""

    name: str
    config: LayerConfig
    head: Any
    tail: list[Any]
    cin_fixed: bool
    cout_fixed: bool

    @property
    def fused(self) -> tuple[str, ...]:
        return tuple(type(m).__name__ for m in self.tail)


def model_units(module: Any, input_shape: tuple[int, ...]) -> list[UnitTemplate]:
    """The model's recordable layers, each with the BatchNorm/activation that follows it in the network.

    Fusion is read from the data flow (a forward pass with hooks): a BatchNorm or activation whose input
    is exactly the previous layer's output joins it, which is what runtimes fuse. The model's input
    channels and its final output features are marked fixed (pruning never changes them).
    """
    import torch

    analysis = analyze(module, input_shape)
    specs = {spec.name: spec for spec in analysis.layers}
    calls: list[tuple[str, Any, Any, Any]] = []
    handles = []
    for name, leaf in module.named_modules():
        if not name or list(leaf.children()):
            continue

        def hook(mod: Any, inputs: Any, output: Any, name: str = name) -> None:
            first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
            calls.append((name, mod, first, output))

        handles.append(leaf.register_forward_hook(hook))
    example = torch.zeros(*input_shape)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(example)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    outputs = result if isinstance(result, (tuple, list)) else (result,)

    units: list[UnitTemplate] = []
    absorbed: set[int] = set()
    for index, (name, leaf, inp, out) in enumerate(calls):
        if index in absorbed or name not in specs:
            continue
        op = type(leaf).__name__
        if not (op in CONV_OPS or op == "Linear" or op in NORM_OPS or op in GENERIC_OPS):
            continue  # not recordable from its shape alone; the calibration covers it
        config = LayerConfig.from_spec(specs[name])
        if config is None:
            continue
        tail: list[Any] = []
        current = out
        if op in CONV_OPS or op == "Linear" or op in NORM_OPS:
            follow = index + 1
            norm_allowed = op not in NORM_OPS
            while follow < len(calls) and calls[follow][2] is current:
                kind = type(calls[follow][1]).__name__
                if kind in FUSABLE_NORMS and norm_allowed and not tail:
                    norm_allowed = False
                elif kind not in FUSABLE_ACTIVATIONS:
                    break
                tail.append(calls[follow][1])
                absorbed.add(follow)
                current = calls[follow][3]
                follow += 1
                if kind in FUSABLE_ACTIVATIONS:
                    break
        units.append(
            UnitTemplate(
                name=name,
                config=config,
                head=leaf,
                tail=tail,
                cin_fixed=inp is example,
                cout_fixed=any(current is o or out is o for o in outputs),
            )
        )
    return units


def channel_grid(
    full: int,
    multiple: int = 8,
    step: int | None = None,
    points: int = 5,
    min_ratio: float = 0.2,
    fixed: bool = False,
) -> list[int]:
    """Channel counts to record for a layer of ``full`` channels.

    The smallest count the search can reach (``min_ratio * full`` rounded down to ``multiple``, at least
    one ``multiple``), every multiple of ``multiple`` below ``step`` from there (below one channel block
    runtimes may take another code path, so those counts are timed, not inferred), then up to ``points``
    multiples of ``step`` spread up to ``full``, which is always included.
    """
    step = step or multiple
    if fixed or full <= multiple or points <= 1:
        return [full]
    lowest = max(multiple, int(full * min_ratio) // multiple * multiple)
    values = {full}
    values.update(c for c in range(lowest, min(step, full), multiple))
    low = max(step, _ceil_to(lowest, step))
    if low < full:
        for i in range(points):
            value = low + (full - low) * i / (points - 1)
            value = max(step, int(round(value / step)) * step)
            if value < full:
                values.add(value)
    return sorted(values)


def grid_configs(
    units: Sequence[UnitTemplate],
    multiple: int = 8,
    quantum: int = 1,
    points: int = 5,
    min_ratio: float = 0.2,
    off_path: tuple[int, int] | None = None,
) -> list[tuple[LayerConfig, UnitTemplate]]:
    """Every configuration to record for ``units`` (deduplicated), with the template that builds it.

    Counts are multiples of ``lcm(multiple, quantum)``: what the search visits, on the runtime's blocks.
    Dense layers get a 2-D (cin x cout) grid; depthwise convolutions and norms one axis; grouped
    convolutions as wide out as in (RegNet's, ResNeXt's) one axis of group widths, their groups kept
    (what pruning them does: torch-pruning narrows every group); other modules only their own
    configuration.

    ``off_path=(block, alignment)`` adds, for every convolution grid point fed at least one block, the
    same point with one input channel less (one channel less per group for a grouped convolution): a
    count off the runtime's alignment (or a group width off its block), which it runs off its blocked
    path (models pruned without rounding, e.g. torch-pruning's ``round_to=None``, are full of them; the
    blocked entries price them 40-60% too fast, ``bench/lut_fidelity.py``).
    """
    step = math.lcm(max(1, multiple), max(1, quantum))

    def grid(full: int, fixed: bool) -> list[int]:
        return channel_grid(full, multiple, step, points, min_ratio, fixed)

    seen: dict[str, tuple[LayerConfig, UnitTemplate]] = {}
    for unit in units:
        config = unit.config
        op = config.op
        grouped = op in CONV_OPS and config.grouped
        if (op in CONV_OPS and config.depthwise) or (op in NORM_OPS and config.cin == config.cout):
            pairs = [(c, c) for c in grid(config.cin, unit.cin_fixed or unit.cout_fixed)]
        elif grouped and config.diagonal:
            g = config.groups
            pairs = [(g * w, g * w) for w in grid(config.cin // g, unit.cin_fixed or unit.cout_fixed)]
        elif (op in CONV_OPS and not grouped) or op == "Linear":
            cins = grid(config.cin, unit.cin_fixed)
            couts = grid(config.cout, unit.cout_fixed)
            pairs = [(ci, co) for ci in cins for co in couts]
        else:
            pairs = [(config.cin, config.cout)]
        if off_path and grouped and config.diagonal:
            # Other tools narrow a group's inputs and outputs apart (torch-pruning leaves regnet_x_400mf's
            # 16-wide groups at 8 in and 16 out); one channel narrower (off the block) and every pair of
            # widths, so such a group is interpolated, not scaled by its work from the diagonal.
            g = config.groups
            widths = sorted({ci // g for ci, _ in pairs} | {ci // g - 1 for ci, _ in pairs if ci - g >= g})
            pairs = [(g * a, g * b) for a in widths for b in widths]
        elif off_path and op in CONV_OPS and not grouped:
            block, alignment = off_path
            depthwise = config.depthwise
            pairs += [(ci - 1, ci - 1 if depthwise else co) for ci, co in pairs
                      if ci - 1 >= (1 if depthwise else block) and (ci - 1) % alignment]
        for cin, cout in pairs:
            variant = config.with_channels(cin, cout)
            seen.setdefault(variant.key(), (variant, unit))
    return list(seen.values())


def build_unit(config: LayerConfig, template: UnitTemplate | None = None) -> tuple[Any, tuple[int, ...]]:
    """A tiny torch module running ``config`` as the network runs it, and its input shape."""
    import copy

    import torch

    nn = torch.nn
    head = template.head if template is not None else None
    tail = template.tail if template is not None else []
    op = config.op
    if op in CONV_OPS:
        kwargs: dict[str, Any] = {}
        if head is not None:
            kwargs = {"dilation": head.dilation, "bias": head.bias is not None, "padding_mode": head.padding_mode}
        cls = getattr(nn, op)
        layer = cls(
            config.cin, config.cout, config.kernel, stride=config.stride or 1, padding=config.padding or 0,
            groups=config.groups, **kwargs,
        )
        modules = [layer]
        shape = (config.batch, config.cin, *config.in_hw)
    elif op == "Linear":
        bias = head.bias is not None if head is not None else True
        modules = [nn.Linear(config.cin, config.cout, bias=bias)]
        shape = (config.batch, *config.in_hw, config.cin)
    elif op in NORM_OPS:
        modules = [getattr(nn, op)(config.cin)]
        shape = (config.batch, config.cin, *config.in_hw)
    elif head is not None:
        modules = [copy.deepcopy(head)]
        shape = (config.batch, *config.in_hw)
    else:
        raise UserError(f"cannot build a {op} layer from its LUT key alone")
    channels = config.cout
    for extra in tail:
        kind = type(extra).__name__
        if kind in FUSABLE_NORMS:
            modules.append(getattr(nn, kind)(channels))
        else:
            modules.append(copy.deepcopy(extra))
    unit = nn.Sequential(*modules).eval()
    return unit, shape


def model_fingerprint(units: Sequence[UnitTemplate]) -> str:
    import hashlib

    text = ";".join(f"{u.name}={u.config.key()}" for u in units)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


