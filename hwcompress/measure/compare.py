"""Compare models on one device: measured in interleaved rounds, quoted as paired ratios.

A shared machine's speed wanders by 10% and more within minutes, so two models profiled one after the
other can swap places. Measuring them in rounds, each round timing every model once (the order
rotating from round to round so that none is always first), and taking the ratio of each round's
medians cancels what the machine does between rounds; the median of the per-round ratios, with their
range, is the comparison, with a distribution-free interval for that median (:func:`median_interval`).
The search's budget verdict uses the same rounds (:class:`PairedMeasurement`: a student against its
teacher), and takes more of them while the interval still holds the budget.

Pairing does not cancel a slow spell of the machine: on this project's VMs everything runs 1.5-1.9x
slower for seconds at a time, the small model more (1.85x against the teacher's 1.55x), and a paired
measurement lasts milliseconds, so all its rounds land inside one spell. A paired measurement whose
reference model (the teacher, or the size-matched one below) ran more than :data:`SPELL` times slower
than its own measurement is therefore taken again after a pause (:data:`SPELL_PAUSES`), and the one
whose reference ran fastest is kept: chosen by the reference's time, never by the student's, and every
discarded measurement is reported (``slow_spell``). A reference's own measurement is taken twice, a
pause apart, and the faster half is kept when they disagree by more than :data:`SPELL`; a half during
which this process waited for a CPU held by another process is left out when the other did not wait.
``HWCOMPRESS_SPELL_PAUSE_S`` sets the pause (default 2 s).

Pairing with the teacher does not cancel what other processes do to a large model and a small one
differently: one sharing the measuring core (the scheduler's turns of a few milliseconds cut into every
2.4 ms run and few 0.15 ms ones) slowed a resnet18 teacher 2.7x and left its 0.15 ms student as it was, so the student's ratio to the teacher fell by 63% and it looked
2.7x faster than it is (``bench/verdict_stability.py``). A search therefore adds a *size-matched
reference* (:meth:`PairedMeasurement.add_reference`): a uniform student at the budget, measured on its
own at preparation as the teacher is; each student is then timed beside whichever reference is nearest
its size (one session of the student picks it), and its verdict is its ratio to that reference times
the reference's own latency. With it, the same load moved the verdict by 1.4%.

On a device that is not this machine, the models are predicted from its LUT instead
(:func:`~hwcompress.measure.resolve.resolve_timing`), and the ratio is a ratio of predictions
(``source: "lut"``).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from hwcompress.devices import resolve_device
from hwcompress.errors import UserError
from hwcompress.measure.competition import Competition, watch
from hwcompress.measure.contract import Measurement, ModelArtifact, ProfileSettings
from hwcompress.measure.resolve import Timing, make_settings, resolve_timing
from hwcompress.model.analysis import analyze, analyze_onnx
from hwcompress.model.export import export_onnx
from hwcompress.model.loading import resolve_model
from hwcompress.validate import whole

COMPARE_SCHEMA = "hwcompress.compare/1"


#: The confidence asked of :func:`median_interval` (met by 5 rounds and more).
INTERVAL_CONFIDENCE = 0.9
#: A paired measurement whose reference model ran this many times slower than its own latency fell in a slow spell
#: (the machine's ordinary drift stays within 10-15%; a spell is 1.5-1.9x).
SPELL = 1.25
#: The pauses before each new try of a measurement that fell in a slow spell (spells last seconds), in
#: units of ``HWCOMPRESS_SPELL_PAUSE_S`` (default 2 s; 0 retries at once, as the test suite does).
SPELL_PAUSES = (1.0, 2.5)


def _pause(units: float) -> None:
    text = os.environ.get("HWCOMPRESS_SPELL_PAUSE_S", "2")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 600:
        raise UserError(f"HWCOMPRESS_SPELL_PAUSE_S={text!r}: give the pause after a slow spell in seconds, 0-600 (default 2)")
    time.sleep(units * seconds)


def median_interval(values: Sequence[float], confidence: float = INTERVAL_CONFIDENCE) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of ``values``: the order statistics
    ``x(k)`` and ``x(n+1-k)`` with the largest ``k`` whose coverage, ``1 - 2 P(Binomial(n, 1/2) < k)``,
    is at least ``confidence`` (no assumption about the noise's shape; the rounds must be independent).

    Returns:
        ``(low, high, coverage)``; with too few values for ``confidence`` (under 5 for 0.9), the whole
        range and the coverage it has.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    k, below = 1, 1 / 2 ** n  # below: P(Binomial(n, 1/2) <= k - 1)
    while k + 1 <= (n + 1) // 2:
        widened = below + math.comb(n, k) / 2 ** n
        if 1 - 2 * widened < confidence:
            break
        k, below = k + 1, widened
    return ordered[k - 1], ordered[n - k], max(0.0, 1 - 2 * below)


def measure_interleaved(profiler: Any, artifacts: Sequence[ModelArtifact], settings: ProfileSettings,
                        rounds: int, first_round: int = 0) -> list[list[Measurement]]:
    """Measure every artifact once per round, the starting model rotating each round.

    ``first_round``: the index of the first round (more rounds added to a measurement keep rotating).

    Returns:
        One list per artifact with its ``rounds`` measurements, in round order.
    """
    count = len(artifacts)
    results: list[list[Measurement]] = [[] for _ in artifacts]
    whole = replace(settings, per_layer=False)
    for round_index in range(first_round, first_round + rounds):
        for offset in range(count):
            index = (round_index + offset) % count
            results[index].append(profiler.measure(artifacts[index], whole))
    return results


def paired_ratios(results: Sequence[Measurement], reference: Sequence[Measurement]) -> list[float]:
    """Per round, the model's median over the reference's median."""
    return [m.latency.median / r.latency.median for m, r in zip(results, reference)]


@dataclass
class Reference:
    """A model students are timed beside: its name, its file and its own measurement (``median`` in ms)."""

    name: str
    artifact: ModelArtifact
    measured: dict[str, Any]

    @property
    def ms(self) -> float:
        return float(self.measured["median"])


class PairedMeasurement:
    """Measure students on the device as ratios to a reference model (the teacher, or one of their size), in
    interleaved rounds.

    A shared machine's speed wanders by 10% and more within minutes (measured here: a student timed at
    1.14 ms ran at 1.29 ms a few minutes later, the teacher moving with it). Timing the student and a
    reference alternately and taking the median of the per-round ratios cancels that drift as far as the
    two drift together; the ratio times the reference's own latency is the student's latency.

    Constructing it exports the teacher once. ``teacher_measured`` is the reference: given (a resumed
    search reuses its saved one), or measured now in ``reference_rounds`` rounds (their median, with
    the spread of the round medians). :meth:`add_reference` adds a size-matched reference (module
    docstring); each student is then paired with the reference nearest its size.
    """

    def __init__(self, teacher: Any, input_shape: tuple[int, ...], timing: Timing, settings: ProfileSettings,
                 rounds: int = 3, reference: dict[str, Any] | None = None, reference_rounds: int = 3,
                 log: Any = None) -> None:
        #: Every measurement taken again after a slow spell: its name and its ``slow_spell`` record.
        self.spells: list[dict[str, Any]] = []
        self.log = log
        self.folder = tempfile.TemporaryDirectory(prefix="hwcompress-")
        self.teacher = teacher
        self.teacher_onnx = Path(self.folder.name) / "teacher.onnx"
        info = export_onnx(teacher, input_shape, self.teacher_onnx)
        self.input_shape, self.timing, self.settings, self.rounds = tuple(input_shape), timing, settings, rounds
        self.profiler = timing.profiler
        #: The models are timed on this machine (not on a device reached over ssh or adb): its measurements
        #: record what other processes here got in the way (``competition``).
        self.here = not getattr(getattr(timing, "descriptor", None), "remote", False)
        if reference is None:
            reference = self._measure_reference(max(1, reference_rounds), info.max_abs_diff)
        self.teacher_measured = reference
        self.teacher_ms = float(reference["median"])
        self.reference_rounds = max(1, reference_rounds)
        self._exported = 0
        #: The models students are timed beside, the teacher first.
        self.references = [Reference("teacher", self._teacher_artifact(), reference)]

    def _teacher_artifact(self) -> ModelArtifact:
        return ModelArtifact(self.teacher_onnx, self.input_shape, self.teacher, "teacher")

    def add_reference(self, module: Any, name: str, onnx_path: str | os.PathLike[str] | None = None,
                      measured: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add a reference that students near its size are timed beside; returns its measurement.

        ``measured``: its measurement from before (a resumed search); otherwise it is measured now on its
        own, as the teacher's reference is (:meth:`measure_alone`). ``onnx_path``: time this file (a
        quantized model) instead of exporting ``module``.
        """
        artifact = self.artifact(module, name, onnx_path)
        if measured is None:
            measured = self.measure_alone(artifact)
        self.references.append(Reference(name, artifact, measured))
        return measured

    def artifact(self, module: Any, name: str, onnx_path: str | os.PathLike[str] | None = None) -> ModelArtifact:
        """``module`` as the profiler times it: exported to a file of its own, or ``onnx_path`` (a quantized model)."""
        if onnx_path is None:
            self._exported += 1
            path = Path(self.folder.name) / f"reference-{self._exported}.onnx"
            export_onnx(module, self.input_shape, path)
        else:
            path = Path(onnx_path)
        return ModelArtifact(path, self.input_shape, module, name)

    def measure_alone(self, artifact: ModelArtifact) -> dict[str, Any]:
        """A model's own latency, measured as the teacher's reference is: two halves a pause apart, a slow half left out."""
        return self._measure_reference(self.reference_rounds, None, artifact)

    def nearest_reference(self, artifact: ModelArtifact) -> Reference:
        """The reference nearest ``artifact`` in size: one session of it, against each reference's latency (in log)."""
        if len(self.references) == 1:
            return self.references[0]
        probe = self.profiler.measure(artifact, replace(self.settings, per_layer=False)).latency.median
        return min(self.references, key=lambda r: abs(math.log(max(probe, 1e-9) / max(r.ms, 1e-9))))

    def _measure_reference(self, rounds: int, max_abs_diff: float | None, artifact: ModelArtifact | None = None) -> dict[str, Any]:
        """A reference's measurement (the teacher's unless ``artifact``): ``rounds`` rounds, and as many again
        after a pause. A half during which this process waited for a CPU held by other processes
        (:mod:`hwcompress.measure.competition`: another process sharing the core slows a large model's runs,
        by 2.55x for resnet18 at 64 px, before its median says so) is left out when the other did not wait;
        when both did, a third half is taken after a longer pause. Of the halves kept, one whose median is
        more than :data:`SPELL` times the fastest fell in a slow spell and is left out too."""
        artifact = artifact or self._teacher_artifact()
        halves = [self._half(artifact, rounds)]
        _pause(SPELL_PAUSES[0])
        halves.append(self._half(artifact, rounds))
        if all(_waited(watched) for _, watched in halves):
            _pause(SPELL_PAUSES[1])
            halves.append(self._half(artifact, rounds))
        quiet = [half for half in halves if not _waited(half[1])]
        kept = quiet or halves
        fastest = min(_median_ms(runs) for runs, _ in kept)
        spell = [runs for runs, _ in kept if _median_ms(runs) > SPELL * fastest]
        runs = [m for half, _ in kept if _median_ms(half) <= SPELL * fastest for m in half]
        medians = [m.latency.median for m in runs]
        middle = sorted(runs, key=lambda m: m.latency.median)[len(runs) // 2]
        reference = {**middle.latency.to_dict(), "median": statistics.median(medians),
                     "round_medians_ms": medians, "rounds": len(runs),
                     "round_spread_ms": max(medians) - min(medians),
                     "source": middle.source, "profiler": self.profiler.name,
                     "onnx_max_abs_diff": max_abs_diff, "facts": middle.facts}
        if spell:
            reference["slow_spell"] = {"left_out_round_medians_ms": [m.latency.median for half in spell for m in half]}
        watched = [w for _, w in halves if w is not None]
        if watched:  # over every half measured, the pauses between them left out
            reference["competition"] = Competition.combined(watched).to_dict()
            reference["halves_waited_share"] = [None if w.waited_share is None else round(w.waited_share, 4) for w in watched]
        if quiet and len(quiet) < len(halves):
            reference["waited"] = {"left_out_round_medians_ms": [m.latency.median for half, w in halves
                                                                 if _waited(w) for m in half]}
        return reference

    def _half(self, artifact: ModelArtifact, rounds: int) -> tuple[list[Measurement], Competition | None]:
        """``rounds`` rounds of one model, and how much other processes here got in the way meanwhile (None:
        measured on a device reached over ssh or adb, whose waiting is not this machine's)."""
        with watch(self.here) as watched:
            runs = measure_interleaved(self.profiler, [artifact], self.settings, rounds)[0]
        return runs, watched.result

    def __call__(self, module: Any, name: str, rounds: int | None = None,
                 onnx_path: str | os.PathLike[str] | None = None, decide_ms: float | None = None,
                 max_rounds: int | None = None) -> dict[str, Any]:
        """Measure ``module`` beside the reference nearest its size (the teacher, or one added by
        :meth:`add_reference`); ``median`` is the verdict, every statistic is on its scale.

        ``onnx_path``: time this file, built beforehand from ``module`` (a quantized student), instead of
        exporting the module. ``decide_ms`` (a budget): while the interval of the median ratio
        (:func:`median_interval`) still holds ``decide_ms`` on the reference's scale, two more rounds are
        taken, up to ``max_rounds``; ``decided`` says whether the interval left the budget out in the end.
        ``competition``: how much other processes here got in the way meanwhile (measured on this machine).
        """
        with watch(self.here) as watched:
            measured = self._measure(module, name, rounds, onnx_path, decide_ms, max_rounds)
        if watched.result is not None:
            measured["competition"] = watched.result.to_dict()
        return measured

    def _measure(self, module: Any, name: str, rounds: int | None, onnx_path: str | os.PathLike[str] | None,
                 decide_ms: float | None, max_rounds: int | None) -> dict[str, Any]:
        if onnx_path is None:
            path = Path(self.folder.name) / f"{name}.onnx"
            max_abs_diff = export_onnx(module, self.input_shape, path).max_abs_diff
        else:
            path, max_abs_diff = Path(onnx_path), None
        asked = rounds or self.rounds
        artifact = ModelArtifact(path, self.input_shape, module, name)
        reference = self.nearest_reference(artifact)
        scale = reference.ms if reference.ms > 0 else 1.0  # (a profiler that timed nothing: the ratio itself)
        pair = [artifact, reference.artifact]
        limit = None if decide_ms is None else decide_ms / scale
        tries = [self._paired_rounds(pair, asked, limit, max_rounds)]
        slowdowns = [_median_ms(tries[0][1]) / scale]
        for pause in SPELL_PAUSES:  # a try whose reference ran slow fell in a spell: pause and try again
            if slowdowns[-1] <= SPELL:
                break
            _pause(pause)
            tries.append(self._paired_rounds(pair, asked, limit, max_rounds))
            slowdowns.append(_median_ms(tries[-1][1]) / scale)
        student, beside, ratios = tries[slowdowns.index(min(slowdowns))]
        rounds = len(ratios)
        spell = None
        if len(tries) > 1:
            slowdowns = [round(x, 3) for x in slowdowns]
            spell = {"tries": len(tries), "reference_slowdowns": slowdowns,
                     "paired_medians_ms": [statistics.median(t[2]) * scale for t in tries]}
            self.spells.append({"name": name, **spell})
            if self.log is not None:
                self.log(f"{name}: the {reference.name} ran x{slowdowns[0]:.2f} its reference (a slow spell of the machine); "
                         f"measured {len(tries)} times, a pause apart, keeping the try whose {reference.name} ran fastest "
                         f"(x{min(slowdowns):.2f})")
        low, high, coverage = median_interval(ratios)
        ratio = statistics.median(ratios)
        middle = sorted(student, key=lambda m: m.latency.median)[len(student) // 2]
        verdict = ratio * scale
        # Every statistic on the verdict's scale: the middle round's spread, scaled as its median was.
        factor = verdict / middle.latency.median if middle.latency.median > 0 else 1.0
        stats = {key: (value * factor if key != "runs" else value) for key, value in middle.latency.to_dict().items()}
        return {
            **stats,
            "median": verdict,
            "paired_ratio": ratio,
            "reference": reference.name,
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "interval_ms": [low * scale, high * scale],
            "interval_coverage": round(coverage, 4),
            **({} if limit is None else {"decided": not low <= limit <= high, "extra_rounds": rounds - asked}),
            **({} if spell is None else {"slow_spell": spell}),
            "raw_median": statistics.median(m.latency.median for m in student),
            "reference_ms": scale,
            "reference_now_ms": _median_ms(beside),
            "teacher_reference_ms": self.teacher_ms,
            "rounds": rounds,
            "source": middle.source,
            "method": (f"median = paired ratio to the {reference.name} (median of the rounds) x its reference latency, measured "
                       "on its own; the other statistics are the middle round's, on the same scale; raw_median "
                       "is as timed"),
            "profiler": self.profiler.name,
            "onnx_max_abs_diff": max_abs_diff,
            "facts": middle.facts,
        }

    def _paired_rounds(self, pair: list[ModelArtifact], rounds: int, limit: float | None,
                       max_rounds: int | None) -> tuple[list[Measurement], list[Measurement], list[float]]:
        """``rounds`` interleaved rounds of the pair, two more at a time while the interval holds ``limit``."""
        student, teacher = measure_interleaved(self.profiler, pair, self.settings, rounds)
        ratios = paired_ratios(student, teacher)
        while limit is not None and len(ratios) + 2 <= (max_rounds or 0) and undecided(ratios, limit):
            more_student, more_teacher = measure_interleaved(self.profiler, pair, self.settings, 2, first_round=len(ratios))
            student, teacher = student + more_student, teacher + more_teacher
            ratios = paired_ratios(student, teacher)
        return student, teacher, ratios


def _waited(watched: Competition | None) -> bool:
    """Whether a measurement waited for a CPU held by other processes (:attr:`Competition.busy`)."""
    return watched is not None and watched.busy


def _median_ms(runs: Sequence[Measurement]) -> float:
    """The median of a model's round medians."""
    return statistics.median(m.latency.median for m in runs)


def undecided(ratios: Sequence[float], limit: float) -> bool:
    """Whether the confidence interval of the median of ``ratios`` (:func:`median_interval`) holds
    ``limit`` (its ends included): the rounds cannot yet say on which side of it the median lies."""
    low, high, _ = median_interval(ratios)
    return low <= limit <= high


@dataclass
class CompareReport:
    """What :func:`compare_models` returns; :meth:`to_dict` is the ``hwcompress.compare/1`` document."""

    device: dict[str, Any]
    profiler: str
    source: str
    input_shape: list[int]
    rounds: int
    settings: dict[str, Any]
    models: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    #: What other processes took of this machine while the models were measured here
    #: (:class:`hwcompress.measure.competition.Competition`); None when measured elsewhere or predicted.
    competition: dict[str, Any] | None = None

    @property
    def reference(self) -> str:
        return self.models[0]["name"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "device": self.device,
            "profiler": self.profiler,
            "source": self.source,
            "input_shape": self.input_shape,
            "rounds": self.rounds,
            "settings": self.settings,
            "reference": self.reference,
            "models": self.models,
            "notes": self.notes,
            "competition": self.competition,
        }


def compare_models(
    models: Sequence[Any],
    *,
    device: str | None = "cpu",
    device_file: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    lut: str | None = None,
    rounds: int = 5,
    **setting_overrides: Any,
) -> CompareReport:
    """Compare the latency of ``models`` on a device; the first is the reference.

    Args:
        models: two or more ``nn.Module`` objects or ``--model`` strings (torchvision name,
            ``pkg.module:factory``, checkpoint, ``.onnx`` file, ``embedded``).
        device, device_file: the device, as for ``hwcompress profile``.
        input_shape: the shape every model is run at (default: each model's usual shape; they must
            agree). Required when a model is an ``nn.Module``.
        lut: predict from this LUT instead of measuring.
        rounds: interleaved measurement rounds (each times every model once).
        **setting_overrides: ``runs``, ``warmup``, ``threads``, ``precision``.

    Raises:
        UserError: fewer than two models, rounds < 1, shapes that differ, or a device that is neither
            this machine nor has a LUT.
    """
    if len(models) < 2:
        raise UserError("give at least two models to compare (the first is the reference)")
    whole(rounds, "--rounds", 1)
    descriptor = resolve_device(device, device_file)
    settings = make_settings(descriptor, per_layer=False, **setting_overrides)
    timing = resolve_timing(descriptor, lut)
    notes = list(timing.notes) + timing.check_settings(settings)
    loaded = [resolve_model(spec, input_shape=input_shape) for spec in models]
    shapes = {tuple(input_shape or m.input_shape) for m in loaded}
    if len(shapes) > 1:
        listed = ", ".join(f"{m.name} {'x'.join(map(str, input_shape or m.input_shape))}" for m in loaded)
        raise UserError(f"the models take different input shapes ({listed}); give one with --input-shape")
    shape = shapes.pop()
    rounds = rounds if timing.measured else 1  # a prediction is the same every time
    analyses = []
    for model in loaded:  # before anything is exported: a model that cannot run on the shape is named
        try:
            analyses.append(analyze(model.module, shape) if model.module is not None else analyze_onnx(model.onnx_path, shape))
        except UserError as error:
            raise UserError(f"{model.name}: {error}") from None

    with tempfile.TemporaryDirectory(prefix="hwcompress-compare-") as folder:
        artifacts = []
        for index, model in enumerate(loaded):
            path = model.onnx_path
            if model.module is not None and timing.measured:
                path = Path(export_onnx(model.module, shape, Path(folder) / f"model{index}.onnx").path)
            artifacts.append(ModelArtifact(onnx_path=path, input_shape=shape, module=model.module, name=model.name))
        with watch(timing.measured and not descriptor.remote) as watched:
            results = measure_interleaved(timing.profiler, artifacts, settings, rounds)
    competition = watched.result
    busy = competition.note("these were measured") if competition is not None else None
    if busy:
        notes.append(busy + "; the ratios, taken round by round, hold better than the medians")
    rows: list[dict[str, Any]] = []
    for model, measured, analysis in zip(loaded, results, analyses):
        ratios = paired_ratios(measured, results[0])
        row = {"name": model.name, "latency_ms": statistics.median(m.latency.median for m in measured),
               "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "macs": analysis.macs, "params": analysis.params}
        if timing.measured:
            row["round_medians_ms"] = [m.latency.median for m in measured]
            low, high, coverage = median_interval(ratios)
            row["ratio_interval"], row["interval_coverage"] = [low, high], round(coverage, 4)
        rows.append(row)
    for result in results:
        notes.extend(n for m in result for n in m.notes if n not in notes)
    return CompareReport(
        device={**descriptor.to_dict(), "facts": results[0][-1].facts},
        profiler=timing.profiler.name,
        source=timing.source,
        input_shape=list(shape),
        rounds=rounds if timing.measured else 0,
        settings=settings.to_dict(),
        models=rows,
        notes=notes,
        competition=None if competition is None else competition.to_dict(),
    )
