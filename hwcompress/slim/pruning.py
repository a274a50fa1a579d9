"""Channel pruning: find the channel groups of a model and remove channels physically (torch-pruning).

The surgery returns a *new* plain ``nn.Module`` and never changes the model it is given, so a search
can try hundreds of candidates from one teacher::

    groups = find_channel_groups(model, x)                    # list[ChannelGroup], forward order
    keep = {g.name: round_channels(g.channels, 0.5, 8) for g in groups}
    student = prune_channels(model, x, keep)                  # importance="l1" | "l2" | "amc"

Channel groups (AMC's prunable layers, N2N's shrinkage targets)
    :func:`find_channel_groups` traces the model once with torch-pruning's ``DependencyGraph`` and
    returns one :class:`ChannelGroup` per set of channels that must shrink together:

    - ``name`` is the first (in forward execution order) conv/linear whose output channels the group
      prunes, ``index`` the group's position in that order; both are stable for a given model.
    - ``producers``: conv/linear layers whose *output* channels (weight dim 0) shrink. Identity
      residual adds couple several of them into one group (a ResNet stage's block ``conv2`` s, its
      stem or projection shortcut).
    - ``consumers``: conv/linear layers whose *input* channels shrink (weight dim 1).
    - ``depthwise``: depthwise convs (``groups == in == out``) carried along: they are neither
      producers nor consumers, their input and output channels both shrink with the group (AMC's
      "buffer" layers). Norm layers shrink too but are not listed.

    Never a group: the model's input channels, anything that reaches the model's output (the
    classifier's ``out_features``), groups that touch a grouped (not depthwise) conv (a keep count
    would have to respect its ``groups``), and groups made only of depthwise convs.

:func:`prune_channels` (model, example input, ``{group name: channels to keep}``)
    keeps, in each named group, the channels with the largest group L1 norm (torch-pruning's
    ``GroupMagnitudeImportance(p=1, normalizer=None)``: the mean over every coupled conv/linear/norm
    weight slice) and physically removes the rest. Unnamed groups are untouched. The graph analysis
    of a model is cached (keyed weakly by the model object and checked against a structural
    fingerprint), and importance is computed from the live weights on every call, so repeated calls
    cost one ``deepcopy`` plus the index selection (no re-trace). The cuts are torch-pruning's own
    pruning functions, applied with the group's index maps recorded from the trace (checked against
    torch-pruning's ``Group.prune`` in the tests); models whose index maps lose the root channel
    (grouped-query attention ``repeat``) fall back to ``Group.prune`` on a traced copy. The result
    records the kept indices of every pruned conv/linear (:func:`kept_channels`), which
    :func:`reconstruct_least_squares` uses.

:func:`round_channels`
    AMC's channel rounding to a hardware-friendly multiple.

Removing whole units (N2N) is :mod:`hwcompress.slim.units`; AMC's least-squares reconstruction
of pruned layers is :mod:`hwcompress.slim.reconstruct`.

torch-pruning 1.6.1 notes (why the code looks the way it does): ``build_dependency`` calls
``model.eval()`` and needs autograd (so we save and restore training flags, and trace under
``torch.enable_grad``); ``get_all_groups`` yields groups in the order of its backward graph walk
(classifier first), rooted at whichever layer that walk met first, so we rename and sort them; a model
output produced directly by a module (``fc``) gets no output node, so the classifier group must be
found and excluded by us; its reshape index mapping divides by zero on ShuffleNetV2's channel
shuffle (reported as :class:`UnsupportedModelError`); its ``__version__`` says 1.6.0 although the
installed distribution is 1.6.1.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops

__all__ = [
    "ChannelGroup",
    "find_channel_groups",
    "prune_channels",
    "round_channels",
    "kept_channels",
    "IMPORTANCE_CRITERIA",
    "UnsupportedModelError",
]

#: Channel-selection criteria accepted by :func:`prune_channels`.
#: ``l1``/``l2``: torch-pruning's group magnitude (mean over all coupled weight slices);
#: ``amc``: AMC's original criterion, the L1 norm of the consumers' input-channel weights only.
IMPORTANCE_CRITERIA = ("l1", "l2", "amc")

#: Attribute on a pruned model holding the kept indices (see :func:`kept_channels`).
_KEPT_ATTR = "_hwcompress_kept_channels"

_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


class UnsupportedModelError(RuntimeError):
    """torch-pruning cannot trace the model's channel dependencies, so no channel can be pruned."""


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, as one decision of the search.

    Attributes:
        index: Position in the search's walk (forward execution order of ``name``), 0-based.
        name: Fully qualified name of the group's first producer in execution order; the key for
            :func:`prune_channels`.
        channels: Current number of channels in the group.
        producers: Conv/linear layers whose output channels (weight dim 0) shrink.
        consumers: Conv/linear layers whose input channels (weight dim 1) shrink.
        depthwise: Depthwise convs whose channels (in and out) shrink with the group.
        min_channels: Smallest count :func:`prune_channels` accepts.
    """

    index: int
    name: str
    channels: int
    producers: list[str]
    consumers: list[str]
    depthwise: list[str]
    min_channels: int = 1


# --------------------------------------------------------------------------------------------------
# Channel rounding
# --------------------------------------------------------------------------------------------------


def round_channels(channels: int, ratio: float, multiple: int, quantum: int = 1) -> int:
    """AMC's rounding of a preserve ratio to a channel count that is a multiple of ``multiple``.

    ``d = max(round(c * ratio), 1)``, rounded *up* to a multiple; if that exceeds ``c`` it is floored
    to a multiple instead. The result is never above ``c`` and never below ``multiple`` unless
    ``c < multiple``, in which case it is ``min(c, max(1, round(c * ratio)))`` (no multiple fits).
    ``round`` is Python's (half to even), as NumPy's in the original code.

    ``quantum`` is the runtime's channel block (a LUT's detected ``channel_quantum``, a multiple of
    ``multiple``): at or above it, counts are whole blocks (rounded up, floored when that exceeds ``c``).
    A count between blocks runs as the next block at best (ONNX Runtime pads a convolution's output
    channels to its NCHWc block) and, as the input of the next convolution, off the blocked path at
    worst (ONNX Runtime runs a convolution whose input channels are at least a block and not a whole
    number of blocks in plain NCHW, with layout conversions around it). Below one block, ``multiple``
    steps stay (the NCHWc kernels take fewer input channels than a block directly, and such a network
    runs faster: 0.66x the time of the same network at one block); the latency cost model charges them
    the kept share of a block (:meth:`hwcompress.search.cost.CostModel.layers_for`).

    Args:
        channels: Current channel count ``c`` (>= 1).
        ratio: Preserve ratio (>= 0; values above 1 are treated as 1).
        multiple: Channel multiple (>= 1; 1 means no rounding).
        quantum: The runtime's channel block (1, or not a multiple of ``multiple``: not used).

    Returns:
        The channel count to keep.

    Raises:
        ValueError: ``channels < 1``, ``multiple < 1`` or ``ratio`` negative or not finite.
    """
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")
    if int(quantum) != quantum or quantum < 1:
        raise ValueError(f"quantum must be a positive integer, got {quantum!r}")
    channels, multiple = int(channels), int(multiple)
    wanted = min(channels, max(int(round(channels * min(ratio, 1.0))), 1))
    if channels < multiple:
        return wanted
    rounded = math.ceil(wanted / multiple) * multiple
    if rounded > channels:
        rounded = (channels // multiple) * multiple
    quantum = int(quantum)
    if quantum > multiple and quantum % multiple == 0 and rounded >= quantum:
        blocks = math.ceil(rounded / quantum) * quantum
        rounded = blocks if blocks <= channels else (channels // quantum) * quantum
    return rounded


# --------------------------------------------------------------------------------------------------
# Dependency analysis (cached per model)
# --------------------------------------------------------------------------------------------------


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not _is_depthwise(module)


@dataclass
class _Item:
    """One (module, pruning function) entry of a full group, in the original model's coordinates."""

    module: str  # qualified module or parameter name
    handler: Callable[..., Any]  # bound pruning method of a torch-pruning pruner singleton
    pruning_dim: int
    idxs: torch.Tensor  # indices along the pruned dim, aligned with root_idxs
    root_idxs: torch.Tensor  # group (root) channel of each entry of idxs
    kind: str  # "out" | "in" | "dw" | "norm" | "other"
    is_param: bool = False


@dataclass
class _GroupPlan:
    group: ChannelGroup
    items: list[_Item]
    tp_root: str  # module torch-pruning rooted the group at (for the fallback path)
    tp_root_out: bool  # whether tp's root op is an out-channel pruning


@dataclass
class _Plan:
    fingerprint: tuple
    groups: list[_GroupPlan]
    exact: bool  # False: the fast path cannot map indices; use torch-pruning on a copy
    by_name: dict[str, _GroupPlan] = field(default_factory=dict)


# Plans keyed weakly by the model object: the search prunes one teacher hundreds of times, and the
# dependency trace is the expensive part. The plan holds names and index tensors only (never the
# model), so the entry dies with the model.
_PLANS: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()


def _input_signature(example_input: Any) -> tuple:
    if isinstance(example_input, torch.Tensor):
        return (tuple(example_input.shape), str(example_input.dtype), str(example_input.device))
    if isinstance(example_input, (list, tuple)):
        return tuple(_input_signature(x) for x in example_input)
    if isinstance(example_input, dict):
        return tuple((k, _input_signature(v)) for k, v in sorted(example_input.items()))
    return (type(example_input).__name__,)


def _fingerprint(model: nn.Module, example_input: Any) -> tuple:
    """Structure only: module identities and types, parameter shapes, the input's shape.

    Weight values are deliberately left out: importance is recomputed from the live weights on every
    call, so training the model between calls needs no invalidation.
    """
    modules = tuple((name, id(m), type(m)) for name, m in model.named_modules())
    params = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    convs = tuple(
        (m.in_channels, m.out_channels, m.groups)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    )
    return (modules, params, convs, _input_signature(example_input))


class _TracingState:
    """Context manager: grad enabled, every parameter requiring grad, training flags restored after.

    torch-pruning traces through autograd and calls ``model.eval()``; neither may leak to the caller.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> "_TracingState":
        self.training = [(m, m.training) for m in self.model.modules()]
        self.requires = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.requires:
            p.requires_grad_(True)
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_grad_enabled(self.grad)
        for p, flag in self.requires:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag


def _build_graph(model: nn.Module, example_input: Any) -> tuple[Any, dict[nn.Module, int]]:
    """Trace ``model`` with torch-pruning; also return each module's first execution position."""
    order: dict[nn.Module, int] = {}

    def _record(module: nn.Module, _inputs: Any) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_pre_hook(_record) for m in model.modules()]
    try:
        with _TracingState(model):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as exc:  # noqa: BLE001 - torch-pruning fails in many ways on graphs it cannot map
        raise UnsupportedModelError(
            f"torch-pruning {getattr(tp, '__version__', '?')} cannot trace this model's channel "
            f"dependencies ({type(exc).__name__}: {exc}); channel pruning is unavailable for it "
            "(known cases: channel shuffle built from view+transpose, as in ShuffleNetV2). "
            "Unit removal (find_removable_units) does not need the trace."
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    return graph, order


def _terminal_modules(graph: Any) -> set[Any]:
    """Graph nodes' modules whose output is a model output (no node consumes them)."""
    return {node.module for node in graph.module2node.values() if len(node.outputs) == 0}


def _classify(graph: Any, module: Any, handler: Callable[..., Any]) -> str:
    if _is_depthwise(module):
        return "dw"
    if isinstance(module, _CONV_LINEAR):
        if graph.is_out_channel_pruning_fn(handler):
            return "out"
        return "in"
    if isinstance(module, _NORMS):
        return "norm"
    return "other"


def _analyse(model: nn.Module, example_input: Any) -> _Plan:
    """Trace once and turn torch-pruning's groups into named, ordered, model-free plans."""
    graph, order = _build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    terminal = _terminal_modules(graph)
    # The classifier (the module producing the output) is excluded as a root; groups that merely
    # reach it or an output node are dropped below.
    ignored = [m for m in terminal if isinstance(m, nn.Module) and m in names]
    plans: list[_GroupPlan] = []
    exact = True
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        items: list[_Item] = []
        usable = True
        for item in group:
            dep, idxs = item.dep, item.idxs
            node, module, handler = dep.target, dep.target.module, dep.handler
            reaches_output = module in terminal and graph.is_out_channel_pruning_fn(handler)
            if node.type == tp_ops.OPTYPE.OUTPUT or reaches_output:
                usable = False  # pruning would change the model's output shape
                break
            if _is_grouped(module):
                usable = False  # a keep count would have to divide by its groups
                break
            if not isinstance(module, (nn.Module, nn.Parameter)) or (
                isinstance(module, nn.Module) and module not in names
            ):
                continue  # torch-pruning's placeholder ops (add, cat, reshape): nothing to cut
            is_param = isinstance(module, nn.Parameter)
            if is_param:
                qual = graph._param_to_name.get(module, "")
            else:
                qual = names[module]
            root_idxs = item.root_idxs
            if root_idxs is None or any(r is None for r in root_idxs):
                exact = False
                root_idxs = [-1] * len(idxs)
            items.append(
                _Item(
                    module=qual,
                    handler=handler,
                    pruning_dim=node.pruning_dim,
                    idxs=torch.as_tensor(list(idxs), dtype=torch.long),
                    root_idxs=torch.as_tensor(list(root_idxs), dtype=torch.long),
                    kind="param" if is_param else _classify(graph, module, handler),
                    is_param=is_param,
                )
            )
        if not usable:
            continue
        producers = [it.module for it in items if it.kind == "out"]
        if not producers:
            continue  # e.g. a depthwise conv on the network input: its channels are the input's
        def position(n: str) -> int:
            return order.get(_get_module(model, n), 1 << 30)

        producers.sort(key=position)
        channels = len(group[0].idxs)
        # Name the group after its first producer that carries all of the group's channels
        # (identity-coupled); concat couplings can give producers that only hold a slice.
        full = [p for p in producers if _out_size(_get_module(model, p)) == channels]
        name = (full or producers)[0]
        consumers = sorted({it.module for it in items if it.kind == "in"}, key=position)
        depthwise = sorted({it.module for it in items if it.kind == "dw"}, key=position)
        root_dep = group[0].dep
        plans.append(
            _GroupPlan(
                group=ChannelGroup(
                    index=0,
                    name=name,
                    channels=channels,
                    producers=producers,
                    consumers=consumers,
                    depthwise=depthwise,
                ),
                items=items,
                tp_root=names.get(root_dep.target.module, ""),
                tp_root_out=graph.is_out_channel_pruning_fn(root_dep.handler),
            )
        )
    plans.sort(key=lambda gp: (order.get(_get_module(model, gp.group.name), 1 << 30), gp.group.name))
    for i, gp in enumerate(plans):
        gp.group.index = i
    plan = _Plan(fingerprint=_fingerprint(model, example_input), groups=plans, exact=exact)
    plan.by_name = {gp.group.name: gp for gp in plans}
    return plan


def _plan_for(model: nn.Module, example_input: Any) -> _Plan:
    fingerprint = _fingerprint(model, example_input)
    try:
        plan = _PLANS.get(model)
    except TypeError:  # a model class with __eq__ but no __hash__: analyse every time
        return _analyse(model, example_input)
    if plan is None or plan.fingerprint != fingerprint:
        plan = _analyse(model, example_input)
        _PLANS[model] = plan
    return plan


def _out_size(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features


def _in_size(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features


def _get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def find_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """List the prunable channel groups of ``model`` in forward order.

    Args:
        model: The network; it is traced but not changed (training flags are restored).
        example_input: An input the model accepts, e.g. ``torch.randn(1, 3, 32, 32)``.

    Returns:
        One :class:`ChannelGroup` per independent pruning decision, sorted by ``index``. The objects
        are copies; changing them changes nothing.
    """
    plan = _plan_for(model, example_input)
    return [
        replace(
            gp.group,
            producers=list(gp.group.producers),
            consumers=list(gp.group.consumers),
            depthwise=list(gp.group.depthwise),
        )
        for gp in plan.groups
    ]


# --------------------------------------------------------------------------------------------------
# Importance and pruning
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _group_importance(
    modules: Mapping[str, nn.Module],
    gp: _GroupPlan,
    criterion: str,
    cache: dict[tuple[str, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance of each group channel, from the live weights.

    ``l1``/``l2`` reproduce ``tp.importance.GroupMagnitudeImportance(p, group_reduction="mean",
    normalizer=None)``: every conv/linear output slice, conv/linear input slice and norm scale of the
    group contributes ``sum |w|^p``, averaged over contributors (depthwise convs do not contribute,
    as in torch-pruning). ``amc`` sums only the consumers' input slices (AMC, section 1.5).
    ``cache`` (one per :func:`prune_channels` call) shares the per-layer sums between groups.
    """
    cache = {} if cache is None else cache

    def magnitude(name: str, weight: torch.Tensor, dim: int) -> torch.Tensor:
        """sum |w|^p over every dim but ``dim`` (no transposed copy; p = 1 avoids a pow pass)."""
        key = (name, dim)
        if key not in cache:
            if (name, -1) not in cache:  # |w|^p once per layer, shared by its out and in sums
                w = weight.detach()
                cache[(name, -1)] = w.abs() if criterion != "l2" else w.square()
            w = cache[(name, -1)]
            other = [d for d in range(w.dim()) if d != dim]
            cache[key] = (w.sum(dim=other) if other else w).to(torch.float64).cpu()
        return cache[key]

    total = torch.zeros(gp.group.channels, dtype=torch.float64)
    contributors = 0
    for it in gp.items:
        if it.is_param or (criterion == "amc" and it.kind != "in"):
            continue
        module = modules[it.module]
        transposed = bool(getattr(module, "transposed", False))
        if it.kind == "out":
            local = magnitude(it.module, module.weight, 1 if transposed else 0)[it.idxs]
        elif it.kind == "in":
            local = magnitude(it.module, module.weight, 0 if transposed else 1)[it.idxs]
        elif it.kind == "norm" and getattr(module, "weight", None) is not None and module.weight.dim() == 1:
            local = magnitude(it.module, module.weight, 0)[it.idxs]
        else:
            continue
        if (it.root_idxs < 0).any():
            continue
        total.scatter_add_(0, it.root_idxs, local)
        contributors += 1
    if contributors:
        total /= contributors
    return total


def _removed_roots(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the group channels to remove: all but the ``keep`` highest scores.

    A stable descending sort makes ties deterministic (the lower index survives).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    mask[order[:keep]] = False
    return mask


def _validate_keep(plan: _Plan, keep: Mapping[str, int]) -> dict[str, int]:
    unknown = [name for name in keep if name not in plan.by_name]
    if unknown:
        known = ", ".join(gp.group.name for gp in plan.groups[:12])
        more = f" (+{len(plan.groups) - 12} more)" if len(plan.groups) > 12 else ""
        raise ValueError(
            f"unknown channel group(s) {unknown}; groups are named after their first producer layer: "
            f"{known}{more}. See find_channel_groups()."
        )
    checked: dict[str, int] = {}
    for name, count in keep.items():
        group = plan.by_name[name].group
        if isinstance(count, bool) or int(count) != count:
            raise ValueError(f"keep[{name!r}] must be an integer channel count, got {count!r}")
        count = int(count)
        if not group.min_channels <= count <= group.channels:
            raise ValueError(
                f"keep[{name!r}] = {count} is out of range: the group has {group.channels} channels, "
                f"keep must be in {group.min_channels}..{group.channels}"
            )
        checked[name] = count
    return checked


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    keep: Mapping[str, int],
    importance: str = "l1",
) -> nn.Module:
    """Return a copy of ``model`` with each named channel group cut to ``keep[name]`` channels.

    Args:
        model: The network; not modified.
        example_input: An input the model accepts (its shape keys the cached analysis).
        keep: Group name (see :func:`find_channel_groups`) -> channels to keep, ``1..channels``.
            Groups not named keep all their channels.
        importance: Channel criterion, one of :data:`IMPORTANCE_CRITERIA`; the highest-scoring
            channels are kept.

    Returns:
        A deep copy with the channels physically removed (same training/eval flags as ``model``).
        :func:`kept_channels` on it gives the kept indices of every pruned conv/linear.

    Raises:
        ValueError: An unknown group name, a keep count outside ``1..channels``, or an unknown
            criterion.
    """
    if importance not in IMPORTANCE_CRITERIA:
        raise ValueError(f"importance must be one of {IMPORTANCE_CRITERIA}, got {importance!r}")
    plan = _plan_for(model, example_input)
    counts = _validate_keep(plan, keep)
    modules = dict(model.named_modules())
    removal: dict[str, torch.Tensor] = {}
    cache: dict[tuple[str, int], torch.Tensor] = {}
    for name, count in counts.items():
        gp = plan.by_name[name]
        if count < gp.group.channels:
            removal[name] = _removed_roots(_group_importance(modules, gp, importance, cache), count)
    pruned = copy.deepcopy(model)
    if not removal:
        return pruned
    if plan.exact:
        _apply_plan(pruned, plan, removal)
    else:
        _apply_with_torch_pruning(pruned, model, example_input, plan, removal)
    return pruned


def _apply_plan(pruned: nn.Module, plan: _Plan, removal: Mapping[str, torch.Tensor]) -> None:
    """Cut the copy directly: all indices are in the original coordinates, merged per (module, op).

    Every (module, pruning function) pair is applied once with the union of the indices all groups
    remove from it, so the order of groups cannot shift a later group's indices (concat consumers).
    """
    cuts: dict[tuple[str, Any], tuple[_Item, set[int]]] = {}
    for name, mask in removal.items():
        for it in plan.by_name[name].items:
            idxs = it.idxs[mask[it.root_idxs]].tolist()
            if not idxs:
                continue
            key = (it.module, it.handler)
            if key in cuts:
                cuts[key][1].update(idxs)
            else:
                cuts[key] = (it, set(idxs))
    modules = dict(pruned.named_modules())
    previous = getattr(pruned, _KEPT_ATTR, None) or {}
    record: dict[str, dict[str, list[int]]] = {}
    for (qual, _handler), (it, idxs) in cuts.items():
        ordered = sorted(idxs)
        # Dependency.__call__ sets the pruner singleton's dim before each call; so do we.
        it.handler.__self__.pruning_dim = it.pruning_dim
        if it.is_param:
            # An nn.Parameter used directly in forward (torch-pruning's "unwrapped parameter"):
            # the pruner returns a new Parameter that must be put back on its owner.
            owner_name, _, attr = qual.rpartition(".")
            owner = modules[owner_name]
            setattr(owner, attr, it.handler(getattr(owner, attr), ordered))
            continue
        module = modules[qual]
        if isinstance(module, _CONV_LINEAR) and it.kind in ("out", "in", "dw"):
            size = _in_size(module) if it.kind == "in" else _out_size(module)
            kept = sorted(set(range(size)) - idxs)
            entry = record.setdefault(qual, {})
            for dim in (("out", "in") if it.kind == "dw" else (it.kind,)):
                entry[dim] = kept
        it.handler(module, ordered)
    _store_record(pruned, previous, record)


def _apply_with_torch_pruning(
    pruned: nn.Module,
    original: nn.Module,
    example_input: Any,
    plan: _Plan,
    removal: Mapping[str, torch.Tensor],
) -> None:
    """Reference path: trace the copy and let torch-pruning cut one group at a time."""
    graph, _ = _build_graph(pruned, example_input)
    for module, flag in zip(pruned.modules(), (m.training for m in original.modules())):
        module.training = flag
    for name, mask in removal.items():
        gp = plan.by_name[name]
        root = pruned.get_submodule(gp.tp_root)
        pruner = graph.get_pruner_of_module(root)
        fn = pruner.prune_out_channels if gp.tp_root_out else pruner.prune_in_channels
        group = graph.get_pruning_group(root, fn, torch.nonzero(mask).flatten().tolist())
        group.prune()
    # Kept indices are not tracked on this path; reconstruction will refuse such a model.
    if hasattr(pruned, _KEPT_ATTR):
        delattr(pruned, _KEPT_ATTR)


def _store_record(pruned: nn.Module, previous: Mapping[str, Mapping[str, list[int]]], record: dict) -> None:
    """Compose this call's kept indices with an earlier pruning's, relative to the unpruned model."""
    merged = {k: dict(v) for k, v in previous.items()}
    for qual, dims in record.items():
        entry = merged.setdefault(qual, {})
        for dim, kept in dims.items():
            if dim in entry:
                entry[dim] = [entry[dim][i] for i in kept]
            else:
                entry[dim] = kept
    object.__setattr__(pruned, _KEPT_ATTR, merged)


def kept_channels(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """Kept channel indices recorded by :func:`prune_channels`.

    Args:
        model: A model returned by :func:`prune_channels` (possibly pruned several times).

    Returns:
        ``{layer name: {"out": [...], "in": [...]}}`` for every pruned conv/linear, indices into the
        unpruned model's weight dims 0 (``out``) and 1 (``in``); a dim not pruned is absent. Empty
        for a model that was not pruned by this module.
    """
    return copy.deepcopy(getattr(model, _KEPT_ATTR, None) or {})


def _reference_prune(
    model: nn.Module, example_input: torch.Tensor, keep: Mapping[str, int], importance: str = "l1"
) -> nn.Module:
    """:func:`prune_channels` through torch-pruning's own ``Group.prune`` (for tests and debugging)."""
    plan = _plan_for(model, example_input)
    counts = _validate_keep(plan, keep)
    modules = dict(model.named_modules())
    removal = {
        name: _removed_roots(_group_importance(modules, plan.by_name[name], importance), count)
        for name, count in counts.items()
        if count < plan.by_name[name].group.channels
    }
    pruned = copy.deepcopy(model)
    _apply_with_torch_pruning(pruned, model, example_input, plan, removal)
    return pruned


# --------------------------------------------------------------------------------------------------
# Removable units
# --------------------------------------------------------------------------------------------------

