"""Everything a search does before its agent starts: teacher, data, device, measurements, cost model.

The chain: load the teacher and its data; decide how the device's latency is obtained here
(:func:`~hwcompress.measure.resolve.resolve_timing`); measure the teacher on the device in interleaved
rounds; resolve the budget against that measurement; build the cost model from the device's latency
LUT (loaded, or recorded here on demand and cached), fit it on students profiled layer by layer in this
run (``--context-students``, :mod:`hwcompress.search.context`; on by default), and anchor it on students
measured in this run; refuse a budget no student can meet, and report one the teacher already meets.

With ``--quantize`` the students are int8 (:mod:`hwcompress.search.quantized`): the teacher is
quantized once to learn which layers the runtime runs in int8, the LUT holds int8 entries beside the
float ones, the cost model prices each layer in its precision and is anchored on quantized students,
and every measurement after the teacher's (anchors, repair, verdict) times the Q/DQ model. The budget
stays the float teacher's.

A resumed search passes what it saved (the resolved budget, the teacher's reference measurement, the
anchors, the LUT it used and the fit in context): nothing is measured again, so the cost model, and with
it the policy, is the one the interrupted run had.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import torch

from hwcompress.budget import Budget
from hwcompress.devices import DeviceDescriptor, resolve_device
from hwcompress.errors import UserError
from hwcompress.lut.profiler import coverage_warning
from hwcompress.lut.record import default_lut_path, ensure_lut
from hwcompress.lut.table import LatencyTable
from hwcompress.measure.compare import PairedMeasurement
from hwcompress.measure.competition import Competition
from hwcompress.measure.contract import ProfileSettings
from hwcompress.measure.resolve import Timing, make_settings, resolve_timing
from hwcompress.model import embedded, scratch
from hwcompress.model.analysis import LayerSpec, analyze
from hwcompress.model.data import DataSplits, check_splits, held_in_memory, resolve_data, stratified_subset
from hwcompress.model.loading import LoadedModel, load_model
from hwcompress.model.training import evaluate
from hwcompress.search.amc.mixed import CHOICES
from hwcompress.search.anchors import Anchor, AnchoredLatency, MedianOf, anchor_latency
from hwcompress.search.config import SearchConfig
from hwcompress.search.context import ContextLatency, NoNodeTimes, fit_in_context, fit_summary
from hwcompress.search.cost import CostModel
from hwcompress.search.precision import ALL_FLOAT, LOW, check_int8_path
from hwcompress.search.quantized import QuantizedMeasurement, QuantizedStudents, measured_int8_teacher
from hwcompress.search.reference import add_matched_reference
from hwcompress.search.scoring import resolve_scoring_precision
from hwcompress.slim.pruning import ChannelGroup, find_channel_groups, prune_channels
from hwcompress.slim.quantize import reduced_weight_range, symmetric_int8

PRECISION_AGENTS = ("amc", "random")  # the agents that choose a precision per group under --quantize mixed

#: A config's ``model`` or ``data`` when the caller passed Python objects (hwcompress.api).
PYTHON_OBJECT = "<python object>"


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
    quantized: QuantizedStudents | None = None
    #: What the search evaluates float students in (:func:`~hwcompress.search.scoring.resolve_scoring_precision`), and why.
    scoring_precision: tuple[str, str] = ("fp32", "")
    #: The cost model fitted on students profiled in context (:mod:`hwcompress.search.context`); None: the LUT's.
    context: ContextLatency | None = None
    #: The anchors measured again before a budget just out of reach was refused (:func:`second_look`); None: not needed.
    second_look: dict[str, Any] | None = None
    #: The size-matched reference students near the budget are timed beside (:mod:`hwcompress.search.reference`).
    matched_reference: dict[str, Any] | None = None
    #: How the episodes' scores were raced (:meth:`~hwcompress.search.scoring.PolicyScorer.racing_summary`); None: they were not.
    racing: dict[str, Any] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)

    def use_precision(self, precision: dict[str, str] | None) -> None:
        """Price, score and measure from now on at the kept student's group precisions (``--quantize mixed``)."""
        if self.quantized is not None and precision:
            self.cost_model = self.cost_model.at_precision(precision)
            self.quantized.precision = dict(precision)

    def saved(self) -> dict[str, Any]:
        """What a resumed run reuses instead of measuring again."""
        return {"budget": self.budget.to_dict(), "teacher_reference": self.teacher_measured,
                "anchors": self.anchors, "lut": self.lut_path,
                "context": self.context.to_dict() if self.context is not None else None,
                "matched_reference": self.matched_reference,
                "scoring_precision": [*self.scoring_precision, self.config.scoring_precision]}


def _scoring_precision(config: SearchConfig, saved: dict[str, Any] | None) -> tuple[str, str]:
    """What the search evaluates float students in: a resumed search scores as the interrupted one did
    (its CPU's choice, so that it reaches the same policy) unless ``--resume-override`` changed the
    setting; a checkpoint from before the setting existed scored in fp32."""
    stored = (saved or {}).get("scoring_precision")
    if stored is None and saved:
        return "fp32", "the interrupted run predates --scoring-precision and scored in fp32"
    if stored is not None and stored[2:3] == [config.scoring_precision]:
        return stored[0], stored[1]
    return resolve_scoring_precision(config.scoring_precision)


def _search_command_with(*extra: str) -> str | None:
    """The ``hwcompress search ...`` command this process runs, with ``extra`` added; None outside the CLI
    (the Python API has no command line to repeat)."""
    import os
    import shlex
    import sys

    program = sys.argv[0].replace(os.sep, "/")
    cli = os.path.basename(program) == "hwcompress" or program.endswith("hwcompress/__main__.py")  # or python -m hwcompress
    return shlex.join(["hwcompress", *sys.argv[1:], *extra]) if cli and sys.argv[1:2] == ["search"] else None


def load_teacher(config: SearchConfig, teacher: LoadedModel | None, splits: DataSplits | None,
                 log: Callable[[str], None], resumed: bool = False) -> tuple[Any, dict[str, Any], DataSplits]:
    """The teacher module, its metadata and its data (given, or loaded from the config). ``resumed``: a resumed
    search, whose ``--resume-override`` of ``--train-teacher`` trains its teacher again (:func:`scratch.trained_teacher`)."""
    for what, spec, given in (("teacher", config.model, teacher), ("data", config.data, splits)):
        if spec == PYTHON_OBJECT and given is None:
            raise UserError(f"this search's {what} was a Python object; resume it from Python with the same objects: "
                            "hwcompress.resume(out, model=..., data=...)")
    if config.train_teacher and (teacher is not None or config.model is None):
        raise UserError("--train-teacher trains a torchvision architecture named by --model (e.g. -m resnet18) on --data; "
                        "this teacher comes trained (drop --train-teacher)")
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
        # The data decides the input size (digits: 32x32, image folders: their images', else 224) unless --input-shape says, or
        # the checkpoint records the size its model was trained at (a teacher.pt, a student.pt).
        size = config.input_shape[-1] if config.input_shape else None
        recorded = (teacher.metadata or {}).get("input_shape") if teacher.source == "checkpoint" else None
        if size is None and recorded:
            size = int(recorded[-1])
            log(f"input {size}x{size}: the size {teacher.name} was trained at, as its checkpoint records (--input-shape to change it)")
        splits = resolve_data(config.data, input_size=size, skip_bad_images=config.skip_bad_images)
    if teacher.source == "torchvision" and not config.weights:
        if not config.train_teacher:
            raise UserError(f"{teacher.name} from torchvision has random weights here (nothing is downloaded); pass the "
                            f"weights trained on your data (--weights FILE, a state dict, or a checkpoint as --model), "
                            "or train it here first: "
                            + (_search_command_with("--train-teacher", "30") or "add --train-teacher 30 (epochs) to this command"))
        module, trained = scratch.trained_teacher(teacher.name, splits, config.train_teacher, config.seed, config.out, log,
                                                  resumed=resumed)
        return module, {"name": teacher.name, "source": "torchvision, trained here", "trained": trained}, splits
    if config.train_teacher:
        raise UserError(f"--train-teacher trains a torchvision architecture from random weights; {teacher.name} "
                        "comes trained (drop --train-teacher)")
    return teacher.module, {"name": teacher.name, "source": teacher.source}, splits


def check_teacher_and_data(module: Any, splits: DataSplits, input_shape: tuple[int, ...]) -> None:
    """Refuse, before anything is measured, data the teacher cannot serve: fewer than two classes, a class
    missing from a split, images of another shape than the model takes, more classes than it outputs."""
    check_splits(splits)
    image = splits.train[0][0]
    if tuple(image.shape) != tuple(input_shape[1:]):
        raise UserError(f"the data's images are {'x'.join(map(str, image.shape))} but the input shape is "
                        f"{'x'.join(map(str, input_shape))}; pass --input-shape 1,{','.join(map(str, image.shape))}")
    with torch.no_grad():
        logits = module.eval()(torch.zeros(*input_shape))
    outputs = int(logits.shape[-1]) if hasattr(logits, "shape") else None
    if outputs is not None and outputs < splits.num_classes:
        raise UserError(f"the model outputs {outputs} classes and the data has {splits.num_classes}; give a model "
                        "whose classifier matches the data")


def latency_table(config: SearchConfig, descriptor: DeviceDescriptor, timing: Timing | None, teacher: Any,
                  input_shape: tuple[int, ...], settings: ProfileSettings, saved_lut: str | None,
                  log: Callable[[str], None]) -> tuple[LatencyTable, str]:
    table, path = _latency_table(config, descriptor, timing, teacher, input_shape, settings, saved_lut, log)
    check_int8_path(config.quantize, descriptor, None, table)  # --lut FILE: its entries must have int8
    measured = timing is not None and timing.measured
    why = ("the cost model is anchored on measured students, so the search goes on" if measured else
           "nothing is measured on a predicted device, so every prediction of this search inherits it")
    for model in map(table.predictor.current_calibration, table.models):  # checked as predictions read it
        for problem in model.get("checks") or []:
            log(f"note: the LUT's calibration of {model.get('name')} failed a check: {problem} ({why}; "
                "`hwcompress lut record --passes 2` re-records it)")
    if not measured:  # nothing here re-records what the table lacks: a teacher it does not cover is refused
        specs = analyze(teacher, tuple(input_shape)).layers
        name = config.model or "embedded"
        record = (f"hwcompress lut record {descriptor.option} --model {name} --input-shape "
                  f"{','.join(map(str, input_shape))} --out {path}")
        warning = coverage_warning(table, specs, table.predict_detail(specs), f"the teacher ({name})", record)
        if warning:
            log(f"note: {warning}")
    return table, path


def _latency_table(config: SearchConfig, descriptor: DeviceDescriptor, timing: Timing | None, teacher: Any,
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
                       min_ratio=config.lbound, precisions=(settings.precision, LOW) if config.quantize else None)
    return table, table.where()


def build_cost_model(prepared_layers: list[LayerSpec], groups: list[ChannelGroup], budget: Budget,
                     descriptor: DeviceDescriptor, lbound: float, table: LatencyTable | None,
                     quantized: QuantizedStudents | None = None) -> CostModel:
    """The cost model for the budget's metric; for latency, the LUT's calibrated prediction (each layer
    in its precision with ``quantized``)."""
    common: dict[str, Any] = dict(multiple=descriptor.channel_multiple, lbound=lbound)
    if quantized is not None:
        common.update(precision_of=quantized.plan.layer_precisions, teacher_precision=ALL_FLOAT)
    if not budget.is_latency:
        return CostModel(prepared_layers, groups, metric=budget.metric, **common)
    # Whole channel blocks from one block up: the LUT prices a count between blocks as the next block,
    # and ONNX Runtime runs a convolution fed a count between blocks off its blocked path.
    return CostModel(prepared_layers, groups, metric=budget.metric, quantum=table.quantum,
                     latency_of=lambda rows: float(table.predict(list(rows)).total_ms), **common)


def prepare(config: SearchConfig, *, teacher: LoadedModel | None = None, splits: DataSplits | None = None,
            saved: dict[str, Any] | None = None, log: Callable[[str], None] = print,
            checkpoint: Callable[[dict[str, Any]], None] | None = None, search: bool = True) -> Prepared:
    """Build the search: see the module docstring. ``saved`` is a resumed run's :meth:`Prepared.saved`;
    ``checkpoint(saved)`` is called as soon as the teacher's reference measurement and the budget are
    known, before the long LUT recording, so that a run killed during it resumes with them.

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
    if config.lut is not None:
        LatencyTable.load(config.lut)  # a missing or damaged LUT is refused before anything is measured
    notes = list(timing.notes) if timing is not None else []
    if timing is not None:
        notes += timing.check_settings(settings)
    check_int8_path(config.quantize, descriptor, timing)  # before anything is measured
    torch.manual_seed(config.seed)  # a factory model's initialisation, too, follows the seed
    module, meta, splits = load_teacher(config, teacher, splits, log, resumed=saved is not None)
    module.eval()
    input_shape = tuple(config.input_shape or splits.input_shape)
    example = torch.zeros(*input_shape)
    layers = analyze(module, input_shape).layers  # refuses an input shape the model cannot take, in one line
    check_teacher_and_data(module, splits, input_shape)
    if splits.skipped:
        notes.append(f"left out {len(splits.skipped)} image files that could not be read (--skip-bad-images), "
                     f"e.g. {splits.skipped[0]}")
    for note in splits.notes:  # how the data was read, e.g. an image folder's input size
        log(note)
        notes.append(note)
    groups = find_channel_groups(module, example)
    if not groups:
        raise UserError("the model has no prunable channel groups")
    val_set = splits.val
    if config.val_limit:
        val_set = stratified_subset(splits.val, config.val_limit)  # the classes in their proportions
    val_set, held = held_in_memory(val_set)  # every student is scored on it: an image folder is read once
    if held:
        notes.append(f"the {len(val_set)} reward-validation images are read once and held in memory ({held / 2**20:.1f} MB)")
    quantized = None
    if config.quantize:
        facts: dict[str, Any] = {}  # the device's: measured here or there, or as its LUT's recording found it
        if timing is not None and timing.measured:
            facts = timing.profiler.facts(settings)
        elif timing is not None and timing.table is not None:
            facts = timing.table.provenance.get("facts") or {}
        quantized = QuantizedStudents.for_teacher(config.quantize, module, input_shape, splits.train, groups,
                                                  reduce_range=reduced_weight_range(facts), symmetric=symmetric_int8(facts))
        if quantized.reduce_range:
            notes.append("int8 weights kept to 7 bits: this x86-64 CPU has no VNNI, so ONNX Runtime's 16-bit "
                         "intermediate sums could saturate (its quantization guide's reduce_range)")
        if quantized.symmetric:
            notes.append(f"symmetric int8 Q/DQ (signed activations, zero point 0): {descriptor.name}'s runtime reads "
                         "only that (TensorRT's explicit quantization); the accuracies are ONNX Runtime's run of the same file")
        plan = quantized.plan
        runs = "the device's runtime (explicit Q/DQ) runs" if quantized.symmetric else "ONNX Runtime runs"
        log(f"--quantize {config.quantize}: {runs} {len(plan.int8_layers)} layers of the teacher in int8"
            + (f"; {len(plan.choosable)} groups choose their precision" if plan.choosable else ""))
        if plan.float_layers:
            notes.append("kept in float (the quantizer or the runtime has no int8 path for them): " + ", ".join(
                f"{layer} ({why})" for layer, why in plan.float_layers.items()))

    scoring_precision = _scoring_precision(config, saved)
    measure = None
    teacher_measured = None
    if timing is not None and timing.measured:
        reference = (saved or {}).get("teacher_reference")
        if reference is None:
            log(f"measuring the teacher on {descriptor.name} with {timing.profiler.name}")
        else:
            log(f"reusing the teacher's reference measurement of the interrupted run ({reference['median']:.3f} ms)"
                + (f" and its budget, {Budget.from_dict(saved['budget'])}" if saved.get("budget") else ""))
        measure = PairedMeasurement(module, input_shape, timing, settings, reference=reference, log=log)
        teacher_measured = measure.teacher_measured
        # What other processes here got in the way while the teacher was timed (its halves, as recorded).
        busy = Competition.from_dict(teacher_measured["competition"]).note("the teacher was measured") \
            if reference is None and teacher_measured.get("competition") else None
        if busy:
            notes.append(busy + ("; the budget, a share of the teacher's latency, is a share of that one"
                                 if budget.ratio is not None else ""))
            log(notes[-1])
        if budget.is_latency and not (saved or {}).get("budget"):
            budget = budget.resolve(teacher_measured["median"])
            saved = {**(saved or {}), "budget": budget.to_dict(), "teacher_reference": teacher_measured}
            log(f"budget: {budget}")
        if checkpoint is not None:
            checkpoint({**(saved or {}), "teacher_reference": teacher_measured,
                        "scoring_precision": [*scoring_precision, config.scoring_precision]})
    meta = dict(meta)
    if "val_accuracy" not in meta:  # (a default argument would score the split even when meta has it)
        meta["val_accuracy"] = evaluate(module, splits.val)
    if "test_accuracy" not in meta:
        meta["test_accuracy"] = evaluate(module, splits.test)

    table, lut_path = None, None
    if budget.is_latency:
        table, lut_path = latency_table(config, descriptor, timing, module, input_shape, settings,
                                        (saved or {}).get("lut"), log)
        notes.append(f"latency cost model: LUT {lut_path} ({len(table)} entries)")
    cost_model = build_cost_model(layers, groups, budget, descriptor, config.lbound, table, quantized)

    if saved and saved.get("budget"):
        budget = Budget.from_dict(saved["budget"])  # resolved against the measured teacher, this run's or the interrupted one's
    elif budget.is_latency:
        budget = budget.resolve(cost_model.teacher_cost())  # predicted: nothing measures here
        log(f"budget: {budget} (predicted from the LUT)")
    else:
        budget = budget.resolve(cost_model.cost(cost_model.full_policy()))

    anchors: list[dict[str, Any]] = []
    if quantized is not None and measure is not None:
        measure = QuantizedMeasurement(measure, quantized)  # anchors, repair and verdict time int8 students
    context = None
    if budget.is_latency and config.context_count and measure is None and config.context_students:
        notes.append("--context-students: nothing measures on this device here, so the cost model is the LUT's prediction")
    if budget.is_latency and measure is not None and saved and saved.get("anchors"):
        # resumed: price as the interrupted run did, whatever --context-students says now (its anchors are on that prediction)
        context = ContextLatency.from_dict(saved["context"]) if saved.get("context") else None
    elif budget.is_latency and measure is not None and config.context_count:
        try:
            context = fit_in_context(SimpleNamespace(cost_model=cost_model, teacher=module, example=example, measure=measure,
                                                     quantized=quantized), config.context_count, config.seed, log)
        except NoNodeTimes:
            if config.context_students:  # asked for: refuse; the default falls back to the LUT and says so
                raise
            notes.append(f"the {measure.profiler.name} profiler reports no per-node times, so the latency cost model is "
                         "the LUT's prediction, not fitted in context")
    if context is not None:
        cost_model.set_latency(context)
        table = context  # a mixed student's prediction is split by precision off the fitted sum, as off a LUT's
        notes.append(fit_summary(context))
        log(notes[-1])
    matched = None  # sized by the cost model fitted in context where there is one
    if budget.is_latency and measure is not None:
        if saved and saved.get("anchors"):  # resumed: time beside what the interrupted run timed beside
            if saved.get("matched_reference"):
                matched = add_matched_reference(measure, module, example, cost_model, budget.target, quantized,
                                                saved["matched_reference"], log)
            if (matched is not None) != (config.reference == "matched"):
                notes.append(f"students are timed beside {'a size-matched reference' if matched else 'the teacher alone'}, as "
                             f"the interrupted run's anchors were; --reference {config.reference} applies to a new run")
        elif config.reference == "matched":
            matched = add_matched_reference(measure, module, example, cost_model, budget.target, quantized, None, log)
        if matched is not None and matched.get("note"):
            notes.append(matched["note"])
        if matched is not None:
            notes.append(f"students are timed beside the teacher or a uniform student at {matched['predicted_share']:.2f}x of it "
                         f"({matched['measured']['median']:.3f} ms measured on its own), whichever is nearer their size "
                         "(--reference matched)")
    if budget.is_latency and measure is not None:
        raw = cost_model.latency_of
        third_anchor = config.anchor_count >= 3  # the uniform student at the target (measured anyway when int8 stops paying)
        if saved and saved.get("anchors"):
            used = [Anchor.from_dict(a) for a in saved["anchors"]]
            if quantized is not None:
                quantized.install_anchors(cost_model, table, used)
            else:
                cost_model.set_latency(AnchoredLatency(raw, used))
            note = "cost model anchored on the students the interrupted run measured: " + ", ".join(
                f"{a.name} {a.measured_ms:.3f} ms" for a in used)
            log(note)
        else:
            def anchor(measured_by: Any) -> tuple[list[Anchor], str]:
                cost_model.set_latency(raw)
                if quantized is not None:
                    return quantized.anchor(cost_model, measured_by, module, example, budget.target, log, table, third_anchor)
                return anchor_latency(
                    cost_model, lambda keep, name: measured_by(prune_channels(module, example, keep), name)["median"],
                    measured_by.teacher_ms, budget.target, log, third_anchor)

            used, note = anchor(measure)
        anchors = [a.to_dict() for a in used]
        anchor_note = len(notes)
        notes.append(note)
    prepared = Prepared(config, budget, descriptor, timing, settings, module, meta, splits, example, layers, groups,
                        val_set, cost_model, measure, teacher_measured, lut_path, anchors, notes=notes, quantized=quantized,
                        scoring_precision=scoring_precision, context=context, matched_reference=matched)
    if search and budget.is_latency and measure is not None and not (saved and saved.get("anchors")):
        second_look(prepared, anchor, anchor_note, log)
    prepared.bounds = check_budget(prepared, refuse_infeasible=search)
    return prepared


#: A cheapest student priced over the search target by at most this factor gets its anchors measured
#: again before the budget is refused: one measurement can catch a slow moment of the machine that the
#: teacher's interleaved rounds do not (seen: a smallest mobilenet_v2 student at 0.114 ms, then 0.094-0.095
#: in three later measurements, which made a reachable budget look infeasible).
SECOND_LOOK = 1.25
#: How many times each anchor is measured on the second look; the middle measurement counts.
SECOND_LOOK_MEASUREMENTS = 3


def second_look(prepared: Prepared, anchor: Callable[[Any], tuple[list[Anchor], str]], note_at: int,
                log: Callable[[str], None]) -> None:
    """Before refusing a budget just out of reach, measure the anchors again (:data:`SECOND_LOOK`).

    ``anchor(measure)`` anchors the cost model with the measurements ``measure`` takes (its note is
    ``prepared.notes[note_at]``, which the new one replaces); here each anchor student is measured
    :data:`SECOND_LOOK_MEASUREMENTS` times (:class:`~hwcompress.search.anchors.MedianOf`) and those
    medians replace the first anchors, whether they make the budget reachable or not.
    """
    budget = prepared.budget
    if budget.met_by(teacher_cost(prepared)[0]):
        return  # the budget check reports that the teacher already meets it; nothing to look at again
    first, what = cheapest_student(prepared)
    if not budget.target < first <= SECOND_LOOK * budget.target:
        return
    log(f"the cheapest student ({what}) is priced {budget.format(first)}, {100 * (first / budget.target - 1):.1f}% over the "
        f"search target {budget.format(budget.target)}: measuring its anchors {SECOND_LOOK_MEASUREMENTS} times more "
        "before refusing the budget")
    used, note = anchor(MedianOf(prepared.measure, SECOND_LOOK_MEASUREMENTS))
    prepared.anchors = [a.to_dict() for a in used]
    after, _ = cheapest_student(prepared)
    note += (f"; measured again (the middle of {SECOND_LOOK_MEASUREMENTS} measurements each) because the first anchors put "
             f"the cheapest student at {budget.format(first)}, over the target; now {budget.format(after)}")
    prepared.notes[note_at] = note
    prepared.second_look = {"first_ms": round(first, 4), "after_ms": round(after, 4),
                            "measurements": SECOND_LOOK_MEASUREMENTS}


#: Uniform widths, as shares of the way from the smallest student to the teacher, at which the budget
#: check prices students: the smallest is not always the cheapest (int8 students at a few channels pay
#: their integer kernels' fixed costs; measured on the 32x32 ResNet-56: smallest 1.112 ms, whole 1.032).
UNIFORM_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def cheapest_student(prepared: Prepared) -> tuple[float, str]:
    """The cheapest student the search may reach, as the cost model prices it, and what it is.

    Uniformly pruned students from the smallest to the whole teacher are priced (int8 students do not
    always get cheaper with fewer channels); with ``--quantize`` the whole teacher in int8 counts as a
    student; with ``--quantize mixed`` and an agent that chooses precisions, each width is priced all in
    int8 and all in float. A quantized student measured while anchoring (the int8 teacher) counts at its
    measured latency.
    """
    model, config, quantized = prepared.cost_model, prepared.config, prepared.quantized
    views = [(model, " in int8" if quantized is not None else "")]
    if quantized is not None and quantized.plan.choosable and config.agent in PRECISION_AGENTS:
        views = [(model.at_precision({name: p for name in quantized.plan.choosable}), f" in {p}") for p in CHOICES]
    best, what = float("inf"), ""
    for view, label in views:
        for share in UNIFORM_SHARES if quantized is not None else (0.0,):
            ratio = config.lbound + share * (1 - config.lbound)
            policy = {g.name: min(g.channels, max(model.min_channels(g), model.round(g, ratio))) for g in model.groups}
            cost = view.cost(policy)
            if cost < best:
                best, what = cost, ("the whole teacher" if share == 1 else f"every group at {ratio:.0%} of its channels") + label
    measured = measured_int8_teacher(prepared.anchors) if quantized is not None and prepared.budget.is_latency else None
    if measured is not None and measured < best:
        best, what = measured, "the whole teacher in int8, measured"
    return best, what


def teacher_cost(prepared: Prepared) -> tuple[float, bool]:
    """The teacher's cost against the budget, and whether it was measured (a latency budget with the
    teacher measured on the device) rather than predicted."""
    measured = prepared.budget.is_latency and prepared.teacher_measured is not None
    return (prepared.teacher_measured["median"] if measured else prepared.cost_model.teacher_cost()), measured


def check_budget(prepared: Prepared, refuse_infeasible: bool = True) -> dict[str, float]:
    """Refuse a budget the cheapest student cannot meet (:func:`cheapest_student`); report a budget the
    teacher already meets.

    ``refuse_infeasible=False`` (a saved policy re-applied, ``search=False`` in :func:`prepare`): no
    search needs the budget to be reachable; the verdict says whether the policy meets it.

    Returns:
        ``{"teacher": cost, "smallest": cost}``, the reachable range (``smallest``: the cheapest student).
    """
    budget = prepared.budget
    teacher, measured = teacher_cost(prepared)
    if budget.met_by(teacher):
        raise BudgetAlreadyMet(f"the teacher already meets the budget: {budget.format(teacher)} <= "
                               f"{budget.format(budget.limit)}" + (" (measured)" if measured else ""))
    smallest, what = cheapest_student(prepared)
    if smallest > budget.target and refuse_infeasible:
        detail = "predicted by the cost model"
        if budget.is_latency and prepared.measure is not None:
            detail = f"measured on {prepared.descriptor.name}"  # the cost model is anchored on that measurement
            if prepared.second_look:
                detail += f", the middle of {prepared.second_look['measurements']} measurements"
        reachable = smallest / (1 - budget.margin) if budget.is_latency else smallest
        raise UserError(
            f"budget {budget.format(budget.limit)} is infeasible: the cheapest allowed student ({what}) reaches "
            f"{budget.format(smallest)} ({detail}); raise the budget to at least {budget.format(reachable)} or "
            "lower --lbound"
        )
    return {"teacher": teacher, "smallest": smallest}
