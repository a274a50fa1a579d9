"""Removing whole units (N2N's layer removal): find the blocks or layers a model can lose, replace them.

:func:`find_removable_units` runs the example input once with hooks and lists every child of an
``nn.Sequential`` whose output shape equals its input shape (so ``nn.Identity`` can replace it), that
contains a conv (blocks) or is one (plain ``conv(+norm)(+act)`` runs of a VGG-style ``Sequential``),
excluding the unit holding the network's first conv, the unit producing the output, units with a
parameterised ``shortcut``/``downsample`` (projections), plain ``nn.Sequential`` containers (their
children are the units: blocks, not whole stages) and units nested inside another unit.
:func:`remove_units` returns a copy with them replaced by ``nn.Identity``::

    units = find_removable_units(model, x)                    # list[RemovableUnit], forward order
    shallow = remove_units(model, [u.name for u in units[1::2]])
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwcompress.slim.pruning import _CONV_LINEAR, _NORMS

__all__ = ["RemovableUnit", "find_removable_units", "remove_units"]


@dataclass
class RemovableUnit:
    """A module (or a conv+norm+act run) that :func:`remove_units` can replace by ``nn.Identity``.

    Attributes:
        name: Fully qualified module name (for a plain run: the conv's name).
        kind: ``"residual"`` (a block whose output has a conv-free path from its input, i.e. an
            identity shortcut), ``"block"`` (a composite module without one) or ``"layer"`` (a plain
            ``conv(+norm)(+act)`` run inside an ``nn.Sequential``).
        params: Parameters removed with the unit.
        macs: Multiply-accumulates of its conv/linear layers for one sample of the example input.
        members: Module names replaced by ``nn.Identity`` (``(name,)`` for blocks).
        index: Position in forward execution order among the units.
        shape: Activation shape (of one sample) the unit maps to itself.
    """

    name: str
    kind: str
    params: int
    macs: int = 0
    members: tuple[str, ...] = ()
    index: int = 0
    shape: tuple[int, ...] = field(default_factory=tuple)


_SHAPE_KEEPERS = _NORMS + (nn.Dropout, nn.Dropout2d, nn.Identity)
_ACTIVATION_MODULE = nn.modules.activation.__name__


def _is_follower(module: nn.Module) -> bool:
    """Norms, activations and dropout: modules that travel with the conv before them."""
    return isinstance(module, _SHAPE_KEEPERS) or type(module).__module__ == _ACTIVATION_MODULE


def _run_members(seq: nn.Sequential, prefix: str, key: str) -> tuple[str, ...]:
    """The conv at ``seq[key]`` plus the norm/activation/dropout siblings right after it."""
    keys = list(seq._modules.keys())
    start = keys.index(key)
    members = [f"{prefix}{key}"]
    for k in keys[start + 1 :]:
        if not _is_follower(seq._modules[k]):
            break
        members.append(f"{prefix}{k}")
    return tuple(members)


def _has_identity_path(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module(x)`` depends on ``x`` through a path with no conv/matmul/multiply.

    Walks the autograd graph of the output back towards ``x``; an identity (or pooled) shortcut
    reaches it, a block whose every path goes through a conv does not. Squeeze-excitation style
    gating (``x * s``) is not counted as a shortcut.
    """
    stop = ("Convolution", "Addmm", "Mm", "Bmm", "Mul", "Linear", "Matmul")
    try:
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            start = leaf * 1.0  # a non-leaf, so in-place ops inside the block stay legal
            out = module(start)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return False
        target = start.grad_fn
        stack, seen = [out.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn is target:
                return True
            if any(s in type(fn).__name__ for s in stop):
                continue
            stack.extend(f for f, _ in fn.next_functions)
        return False
    except Exception:  # noqa: BLE001 - any failure just means "not provably residual"
        return False


def _projection(module: nn.Module) -> bool:
    for attr in ("shortcut", "downsample", "proj", "projection"):
        sub = getattr(module, attr, None)
        if isinstance(sub, nn.Module) and any(True for _ in sub.parameters()):
            return True
    return False


def find_removable_units(model: nn.Module, example_input: torch.Tensor) -> list[RemovableUnit]:
    """List the units N2N's removal policy may drop, in forward execution order.

    A unit is a child of an ``nn.Sequential`` that is called once on one tensor and returns a tensor
    of the same shape: a block containing a conv or linear, or a plain conv with its norm/activation
    followers (``kind="layer"``). Excluded: the unit holding the first conv/linear executed, the unit
    producing the model output (the classifier), blocks with a parameterised shortcut, strided or
    shape-changing units (by the shape test) and units nested inside another unit.

    Args:
        model: The network; run once in eval mode on ``example_input``, flags restored after.
        example_input: An input the model accepts.

    Returns:
        The removable units, sorted by execution order (``index``).
    """
    names = {m: n for n, m in model.named_modules()}
    parent: dict[str, tuple[nn.Module, str]] = {}
    for pname, pmod in model.named_modules():
        for key, child in pmod._modules.items():
            if child is not None:
                parent[f"{pname}.{key}" if pname else key] = (pmod, key)
    calls: dict[str, int] = {}
    order: dict[str, int] = {}
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]] | None] = {}
    inputs: dict[str, torch.Tensor] = {}
    macs: dict[str, int] = {}
    # id -> (weak reference, producer): the reference guards against a freed tensor's reused id.
    outputs: dict[int, tuple[weakref.ref, str]] = {}
    first_compute: list[str] = []

    def _pre(module: nn.Module, args: tuple) -> None:
        name = names[module]
        order.setdefault(name, len(order))
        if isinstance(module, _CONV_LINEAR) and not first_compute:
            first_compute.append(name)
        owner = parent.get(name)
        if owner is not None and isinstance(owner[0], nn.Sequential) and len(args) == 1:
            if isinstance(args[0], torch.Tensor):  # kept before the module can change it in place
                inputs[name] = args[0].detach().clone()

    def _post(module: nn.Module, args: tuple, out: Any) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        x = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
        if x is None or not isinstance(out, torch.Tensor):
            shapes[name] = None
            inputs.pop(name, None)
            return
        shapes[name] = (tuple(x.shape), tuple(out.shape))
        outputs[id(out)] = (weakref.ref(out), name)
        batch = max(int(out.shape[0]), 1) if out.dim() > 0 else 1
        if isinstance(module, nn.modules.conv._ConvNd):
            k = math.prod(module.kernel_size)
            macs[name] = out.numel() // batch * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            macs[name] = out.numel() // batch * module.in_features
        if tuple(x.shape) != tuple(out.shape):
            inputs.pop(name, None)

    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(_pre))
            hooks.append(module.register_forward_hook(_post))
    training = [(m, m.training) for m in model.modules()]
    model.eval()  # also for the residual probes below: no BN statistics may change
    try:
        try:
            with torch.no_grad():
                result = model(example_input)
        finally:
            for h in hooks:
                h.remove()
        output_producers = {
            outputs[id(t)][1]
            for t in _flatten_tensors(result)
            if id(t) in outputs and outputs[id(t)][0]() is t
        }
        units = _select_units(
            model, order, calls, shapes, inputs, macs, parent, first_compute, output_producers
        )
    finally:
        for m, flag in training:
            m.training = flag
    return units


def _select_units(
    model: nn.Module,
    order: Mapping[str, int],
    calls: Mapping[str, int],
    shapes: Mapping[str, Any],
    inputs: Mapping[str, torch.Tensor],
    macs: Mapping[str, int],
    parent: Mapping[str, tuple[nn.Module, str]],
    first_compute: Sequence[str],
    output_producers: set[str],
) -> list[RemovableUnit]:
    """Apply the unit rules to what the hooked forward pass recorded (model in eval mode)."""

    def _contains(unit_members: Sequence[str], target: str) -> bool:
        return any(target == m or target.startswith(m + ".") for m in unit_members)

    candidates: list[RemovableUnit] = []
    for name in sorted(inputs, key=lambda n: order[n]):
        module = model.get_submodule(name)
        if calls.get(name) != 1 or shapes.get(name) is None:
            continue
        seq, key = parent[name]
        if isinstance(module, nn.modules.conv._ConvNd):
            members = _run_members(seq, name[: len(name) - len(key)], key)
            kind = "layer"
        elif isinstance(module, nn.Linear) or not any(
            isinstance(m, _CONV_LINEAR) for m in module.modules()
        ):
            continue  # leaf linears (N2N keeps them) and parameter-free or norm-only modules
        elif isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            # A plain container (a ConvNeXt stage, a Conv2dNormActivation): its children are the
            # units, as N2N removes blocks and layers, not whole stages.
            continue
        else:
            if _projection(module):
                continue
            members = (name,)
            kind = "residual" if _has_identity_path(module, inputs[name]) else "block"
        if first_compute and _contains(members, first_compute[0]):
            continue
        if any(_contains(members, producer) for producer in output_producers):
            continue
        unit_modules = {id(p): p for m in members for p in model.get_submodule(m).parameters()}
        unit_macs = sum(v for n, v in macs.items() if _contains(members, n))
        candidates.append(
            RemovableUnit(
                name=name,
                kind=kind,
                params=sum(p.numel() for p in unit_modules.values()),
                macs=unit_macs,
                members=members,
                shape=shapes[name][1][1:],
            )
        )
    # Outermost units only: a block's inner layers go with the block.
    units: list[RemovableUnit] = []
    for unit in sorted(candidates, key=lambda u: (u.name.count("."), order[u.name])):
        if any(_contains(u.members, unit.name) for u in units):
            continue
        units.append(unit)
    units.sort(key=lambda u: order[u.name])
    for i, unit in enumerate(units):
        unit.index = i
    return units


def _flatten_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten_tensors(v)]
    return []


def remove_units(model: nn.Module, names: Iterable[str | RemovableUnit]) -> nn.Module:
    """Return a copy of ``model`` with the given units replaced by ``nn.Identity``.

    Args:
        model: The network; not modified.
        names: Units from :func:`find_removable_units`, or their names. A name that is a conv inside
            an ``nn.Sequential`` takes its norm/activation followers with it, as the unit does.

    Returns:
        The copy. Shapes are unchanged only for units that :func:`find_removable_units` lists; other
        names are replaced as asked and may break the forward pass.

    Raises:
        ValueError: A name that is not a submodule, or the empty name (the model itself).
    """
    members: list[str] = []
    for entry in names:
        if isinstance(entry, RemovableUnit):
            members.extend(entry.members or (entry.name,))
            continue
        if not entry:
            raise ValueError("cannot remove the model itself (empty unit name)")
        try:
            module = model.get_submodule(entry)
        except AttributeError as exc:
            raise ValueError(f"no submodule named {entry!r} to remove") from exc
        head, _, key = entry.rpartition(".")
        container = model.get_submodule(head) if head else model
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(container, nn.Sequential):
            members.extend(_run_members(container, f"{head}." if head else "", key))
        else:
            members.append(entry)
    result = copy.deepcopy(model)
    for name in dict.fromkeys(members):
        head, _, key = name.rpartition(".")
        try:
            container = result.get_submodule(head) if head else result
            container.get_submodule(key)
        except AttributeError as exc:
            raise ValueError(f"no submodule named {name!r} to remove") from exc
        setattr(container, key, nn.Identity())
    return result


