"""Everything a search does before its agent starts: teacher, data, device, measurements, cost model.

The chain: load the teacher and its data; decide how the device's latency is obtained here
(:func:`~hwcompress.measure.resolve.resolve_timing`); measure the teacher on the device in interleaved
rounds; resolve the budget against that measurement; build the cost model from the device's latency
LUT (loaded, or recorded here on demand and cached) and anchor it on students measured in this run;
refuse a budget no student can meet, and report one the teacher already meets.

A resumed search passes what it saved (the resolved budget, the teacher's reference measurement, the
anchors and the LUT it used): nothing is measured again, so the cost model, and with it the policy,
is the one the interrupted run had.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hwcompress.budget import Budget
from hwcompress.devices import DeviceDescriptor, resolve_device
from hwcompress.errors import UserError
from hwcompress.lut.record import default_lut_path, ensure_lut
from hwcompress.lut.table import LatencyTable
from hwcompress.measure.compare import PairedMeasurement
from hwcompress.measure.contract import ProfileSettings
from hwcompress.measure.resolve import Timing, make_settings, resolve_timing
from hwcompress.model import embedded
from hwcompress.model.analysis import LayerSpec, analyze
from hwcompress.model.data import DataSplits, resolve_data
from hwcompress.model.loading import LoadedModel, load_model
from hwcompress.model.training import evaluate
from hwcompress.search.anchors import Anchor, AnchoredLatency, anchor_latency
from hwcompress.search.config import SearchConfig
from hwcompress.search.cost import CostModel
from hwcompress.slim.pruning import ChannelGroup, find_channel_groups, prune_channels

#: A config's ``model`` or ``data`` when the caller passed Python objects (hwcompress.api).
PYTHON_OBJECT = "<python object>"
#: Interleaved rounds of the final student's measurement; the anchors and repairs use 3.
VERDICT_ROUNDS = 5


class BudgetAlreadyMet(Exception):
    """The teacher meets the budget: nothing to search."""


@dataclass
class Prepared:
    """A search ready for its agent (see the module docstring)."""

    config: SearchConfig
    budget: Budget
    descriptor: DeviceDescriptor
    timing: Timing | None
    settings: ProfileSettings
    teacher: Any
    teacher_meta: dict[str, Any]
    splits: DataSplits
    example: Any
    layers: list[LayerSpec]
    groups: list[ChannelGroup]
    val_set: Any
    cost_model: CostModel
    measure: PairedMeasurement | None
    teacher_measured: dict[str, Any] | None
    lut_path: str | None = None
    anchors: list[dict[str, Any]] = field(default_factory=list)
    bounds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)

    def saved(self) -> dict[str, Any]:
        """What a resumed run reuses instead of measuring again."""
        return {"budget": self.budget.to_dict(), "teacher_reference": self.teacher_measured,
                "anchors": self.anchors, "lut": self.lut_path}


def load_teacher(config: SearchConfig, teacher: LoadedModel | None, splits: DataSplits | None,
                 log: Callable[[str], None]) -> tuple[Any, dict[str, Any], DataSplits]:
    """The teacher module, its metadata and its data (given, or loaded from the config)."""
    for what, spec, given in (("teacher", config.model, teacher), ("data", config.data, splits)):
        if spec == PYTHON_OBJECT and given is None:
            raise UserError(f"this search's {what} was a Python object; resume it from Python with the same objects: "
                            "hwcompress.resume(out, model=..., data=...)")
    if teacher is None and config.model is None:
        if config.data not in (None, "digits") or splits is not None:
            raise UserError("the embedded default teacher goes with the digits data; pass a model too to use other data")
        log("teacher: ResNet-56 on scikit-learn digits (trained on first use, then cached)")
        module, meta = embedded.default_teacher(progress=True)
        return module, meta, resolve_data(None)
    if teacher is None:
        if config.data is None and splits is None:
            raise UserError("--model needs --data (an ImageFolder folder or pkg.module:factory) to score and fine-tune students")
        teacher = load_model(config.model, weights=config.weights, input_shape=config.input_shape)
    if teacher.module is None:
        raise UserError("search needs a PyTorch model (an .onnx file cannot be pruned); pass the PyTorch model")
    if splits is None:
        # The data decides the input size (digits: 32x32, image folders: 224) unless --input-shape says.
        splits = resolve_data(config.data, input_size=config.input_shape[-1] if config.input_shape else None)
    return teacher.module, {"name": teacher.name, "source": teacher.source}, splits


def latency_table(config: SearchConfig, descriptor: DeviceDescriptor, timing: Timing | None, teacher: Any,
                  input_shape: tuple[int, ...], settings: ProfileSettings, saved_lut: str | None,
                  log: Callable[[str], None]) -> tuple[LatencyTable, str]:
    """The LUT the latency cost model predicts from, and where it lives.

    ``--lut FILE`` (or a resumed run's table) is loaded and checked against the device and settings;
    a device predicted from its LUT uses that one; on a device measured here the teacher's layers are
    recorded over the channel grid the search visits and cached, so later searches only load.
    """
    path = config.lut or saved_lut
    if path is None and timing is not None and not timing.measured:
        table = timing.table
        path = table.where()
    elif path is not None:
        table = LatencyTable.load(path)
    else:
        table = None
    if table is not None:
        local_facts = timing.profiler.facts(settings) if timing is not None and timing.measured else None
        for note in table.check_request(descriptor, settings, int(input_shape[0]), local_facts):
            log(f"note: {note}")
        return table, str(path)
    # Per-entry timings need fewer runs than a headline number: thousands of entries, medians of 30.
    recording = dataclasses.replace(settings, runs=min(int(settings.runs), 30), per_layer=False)
    cached = default_lut_path(descriptor, recording, int(input_shape[0]))
    if cached.exists():
        log(f"latency LUT for {descriptor.name}: {cached} (recording only what this model adds)")
    else:
        log(f"recording the latency LUT of the teacher's layers on {descriptor.name} (first use; cached at {cached})")
    table = ensure_lut(teacher, tuple(input_shape), descriptor, recording, profiler=timing.profiler,
                       min_ratio=config.lbound)
    return table, table.where()


def build_cost_model(prepared_layers: list[LayerSpec], groups: list[ChannelGroup], budget: Budget,
                     descriptor: DeviceDescriptor, lbound: float, table: LatencyTable | None) -> CostModel:
    """The cost model for the budget's metric; for latency, the LUT's calibrated prediction."""
    common = dict(multiple=descriptor.channel_multiple, lbound=lbound)
    if not budget.is_latency:
        return CostModel(prepared_layers, groups, metric=budget.metric, **common)
    return CostModel(prepared_layers, groups, metric=budget.metric,
                     latency_of=lambda rows: float(table.predict(list(rows)).total_ms), **common)


def prepare(config: SearchConfig, *, teacher: LoadedModel | None = None, splits: DataSplits | None = None,
            saved: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> Prepared:
    """Build the search: see the module docstring. ``saved`` is a resumed run's :meth:`Prepared.saved`.

    Raises:
        UserError: bad input, an unusable device or LUT, an infeasible budget.
        BudgetAlreadyMet: the teacher already meets the budget.
    """
    budget = config.budget
    descriptor = resolve_device(config.device, config.device_file)
    settings = make_settings(descriptor, runs=config.runs, threads=config.threads, per_layer=False)
    try:
        timing = resolve_timing(descriptor)
    except UserError:
        if config.lut is None and budget.is_latency:
            raise
        timing = resolve_timing(descriptor, config.lut) if config.lut is not None else None
    notes = list(timing.notes) if timing is not None else []
    if timing is not None:
        notes += timing.check_settings(settings)
    torch.manual_seed(config.seed)  # a factory model's initialisation, too, follows the seed
    module, meta, splits = load_teacher(config, teacher, splits, log)
    module.eval()
    input_shape = tuple(config.input_shape or splits.input_shape)
    example = torch.zeros(*input_shape)
    layers = analyze(module, input_shape).layers
    groups = find_channel_groups(module, example)
    if not groups:
        raise UserError("the model has no prunable channel groups")
    val_set = splits.val
    if config.val_limit:
        val_set = torch.utils.data.Subset(splits.val, range(min(config.val_limit, len(splits.val))))

    measure = None
    teacher_measured = None
    if timing is not None and timing.measured:
        reference = (saved or {}).get("teacher_reference")
        if reference is None:
            log(f"measuring the teacher on {descriptor.name} with {timing.profiler.name}")
        else:
            log(f"reusing the teacher's reference measurement of the interrupted run ({reference['median']:.3f} ms)")
        measure = PairedMeasurement(module, input_shape, timing, settings, reference=reference)
        teacher_measured = measure.teacher_measured
    meta = {**meta, "val_accuracy": meta.get("val_accuracy", evaluate(module, splits.val))}
    if "test_accuracy" not in meta:
        meta["test_accuracy"] = evaluate(module, splits.test)

    table, lut_path = None, None
    if budget.is_latency:
        table, lut_path = latency_table(config, descriptor, timing, module, input_shape, settings,
                                        (saved or {}).get("lut"), log)
        notes.append(f"latency cost model: LUT {lut_path} ({len(table)} entries)")
    cost_model = build_cost_model(layers, groups, budget, descriptor, config.lbound, table)

    if saved and saved.get("budget"):
        budget = Budget.from_dict(saved["budget"])
        log(f"budget of the interrupted run: {budget}")
    elif budget.is_latency:
        reference_ms = teacher_measured["median"] if teacher_measured else cost_model.cost(cost_model.full_policy())
        budget = budget.resolve(reference_ms)
        if config.budget.ratio is not None:
            log(f"budget: {budget}")
    else:
        budget = budget.resolve(cost_model.cost(cost_model.full_policy()))

    anchors: list[dict[str, Any]] = []
    if budget.is_latency and measure is not None:
        raw = cost_model.latency_of
        if saved and saved.get("anchors"):
            used = [Anchor(a["name"], a["predicted_ms"], a["measured_ms"]) for a in saved["anchors"]]
            cost_model.set_latency(AnchoredLatency(raw, used))
            note = "cost model anchored on the students the interrupted run measured: " + ", ".join(
                f"{a.name} {a.measured_ms:.3f} ms" for a in used)
            log(note)
        else:
            used, note = anchor_latency(
                cost_model, lambda keep, name: measure(prune_channels(module, example, keep), name)["median"],
                measure.teacher_ms, budget.target if config.anchors >= 3 else None, log)
        anchors = [a.to_dict() for a in used]
        notes.append(note)
    prepared = Prepared(config, budget, descriptor, timing, settings, module, meta, splits, example, layers, groups,
                        val_set, cost_model, measure, teacher_measured, lut_path, anchors, notes=notes)
    prepared.bounds = check_budget(prepared)
    return prepared


def check_budget(prepared: Prepared) -> dict[str, float]:
    """Refuse a budget the smallest student cannot meet; report a budget the teacher already meets.

    Returns:
        ``{"teacher": cost, "smallest": cost}``, the reachable range.
    """
    budget, model = prepared.budget, prepared.cost_model
    teacher_cost = model.cost(model.full_policy())
    measured = budget.is_latency and prepared.teacher_measured is not None
    if measured:
        teacher_cost = prepared.teacher_measured["median"]
    if budget.met_by(teacher_cost):
        raise BudgetAlreadyMet(f"the teacher already meets the budget: {budget.format(teacher_cost)} <= "
                               f"{budget.format(budget.limit)}" + (" (measured)" if measured else ""))
    smallest = model.cost(model.min_policy())
    if smallest > budget.target:
        detail = "predicted by the cost model"
        if budget.is_latency and prepared.measure is not None:
            detail = f"measured on {prepared.descriptor.name}"  # the cost model is anchored on that measurement
        reachable = smallest / (1 - budget.margin) if budget.is_latency else smallest
        raise UserError(
            f"budget {budget.format(budget.limit)} is infeasible: the smallest allowed student (every group at "
            f"{prepared.config.lbound:.0%} of its channels) reaches {budget.format(smallest)} ({detail}); "
            f"raise the budget to at least {budget.format(reachable)} or lower --lbound"
        )
    return {"teacher": teacher_cost, "smallest": smallest}
