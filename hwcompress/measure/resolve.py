"""Timing is one decision: measure here, or predict from the device's LUT.

:func:`resolve_timing` is the only place that asks "is this machine the device?". It returns a
:class:`Timing` whose ``profiler`` follows the profiler contract either way: a measuring profiler from a
plugin (wrapped so that its failures name it), or a :class:`~hwcompress.lut.profiler.LutPredictor` over
the device's recorded table. Profile, compare, LUT recording and the search all take their numbers
from it, so they agree on what "on that device" means.

The rules:

1. ``lut=FILE`` predicts from that table.
2. Else, when the descriptor has a ``[transport]`` (ssh, adb, a pool of hosts), the device measures
   itself: a :class:`~hwcompress.measure.remote.RemoteProfiler` runs the timing there.
3. Else, when this machine is the device (its descriptor's ``detect`` rule), the first of the device's
   profilers (its own, then its fallbacks) that is installed and available measures.
4. Else the LUT the descriptor names (beside the descriptor, or in the user data folder's ``luts/``).
5. Else a one-line error saying why it cannot be measured here and how to record a LUT on the device.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from hwcompress.devices import DeviceDescriptor
from hwcompress.errors import PluginError, UserError
from hwcompress.lut.profiler import LutPredictor
from hwcompress.lut.table import LatencyTable
from hwcompress.measure.contract import Measurement, ModelArtifact, ProfileSettings
from hwcompress.measure.remote import remote_profiler
from hwcompress.plugins import registry
from hwcompress.validate import whole

MEASURED = "measured"
LUT = "lut"


def make_settings(descriptor: DeviceDescriptor, **overrides: Any) -> ProfileSettings:
    """The device's default settings with non-None ``overrides`` applied, validated.

    Raises:
        UserError: a count that is not a positive integer (warm-up may be 0), or an unknown precision.
    """
    known = {f.name for f in fields(ProfileSettings)}
    values = {k: v for k, v in descriptor.settings.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    settings = ProfileSettings(**values)
    for key, low in (("runs", 1), ("threads", 1), ("warmup", 0)):
        whole(getattr(settings, key), f"--{key}", low)
    if settings.precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"--precision must be fp32, fp16 or int8 (got {settings.precision!r})")
    return settings


class GuardedProfiler:
    """A plugin's profiler, with every failure turned into one line that names the plugin.

    A refusal (:class:`UserError`) stays a refusal (exit code 2) and gains the profiler's and the
    plugin's names; any other exception becomes a :class:`PluginError` (exit code 1, the traceback with
    ``--debug``). Facts that JSON cannot hold are converted to strings, with a note.
    """

    def __init__(self, profiler: Any, origin: str) -> None:
        self.inner = profiler
        self.origin = origin
        self.name = str(getattr(profiler, "name", "?"))
        self.description = str(getattr(profiler, "description", ""))
        # The precisions it can run (optional; ("fp32", "int8") for ONNX Runtime): --quantize asks.
        self.precisions = tuple(str(p) for p in (getattr(profiler, "precisions", None) or ()))
        if callable(getattr(profiler, "measure_unit", None)):
            self.measure_unit = self._measure_unit
        if callable(getattr(profiler, "layout_conversions", None)):
            # Optional: what the runtime's layout conversions cost (``lut record --off-path``). Until
            # 2026-11-27 this wrapper hid it, so LUTs recorded from the CLI had no conversion rates.
            self.layout_conversions = self._layout_conversions
        if callable(getattr(profiler, "non_layer_costs", None)):  # optional too: the work between layers
            self.non_layer_costs = self._non_layer_costs

    def __repr__(self) -> str:
        return f"GuardedProfiler({self.name!r} from {self.origin})"

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.inner, method)(*args)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as error:
            raise PluginError(f"profiler {self.name!r} from {self.origin} crashed in {method}(): "
                              f"{type(error).__name__}: {error}") from error

    def _refusal(self, error: UserError) -> UserError:
        text = str(error)
        prefix = f"profiler {self.name!r}"
        return UserError(text if text.startswith(prefix) else f"{prefix} ({self.origin}): {text}")

    def available(self) -> tuple[bool, str]:
        try:
            result = self._call("available")
        except UserError as error:
            return False, str(error)
        except PluginError as error:
            return False, str(error)
        if not (isinstance(result, tuple) and len(result) == 2):
            return False, f"profiler {self.name!r} from {self.origin} returned {result!r} from available(), not (bool, reason)"
        return bool(result[0]), str(result[1])

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        facts = self._run("facts", settings)
        notes: list[str] = []
        clean = json_safe_facts(facts if isinstance(facts, dict) else {"facts": facts}, notes)
        if notes:
            clean["facts_note"] = f"converted to text (not JSON values): {', '.join(notes)}"
        return clean

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        return self._checked(self._run("measure", artifact, settings), "measure")

    def _measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        return self._checked(self._run("measure_unit", artifact, settings), "measure_unit")

    def _layout_conversions(self, settings: ProfileSettings) -> Any:
        # Its answer is validated where it is stored (hwcompress.lut.record.valid_conversion_rates).
        return self._run("layout_conversions", settings)

    def _non_layer_costs(self, settings: ProfileSettings) -> Any:
        # Validated where it is stored (hwcompress.lut.nonlayer.valid_non_layer_rates).
        return self._run("non_layer_costs", settings)

    def _run(self, method: str, *args: Any) -> Any:
        try:
            return self._call(method, *args)
        except UserError as error:
            raise self._refusal(error) from None

    def _checked(self, measurement: Any, method: str) -> Measurement:
        if not isinstance(measurement, Measurement):
            raise PluginError(f"profiler {self.name!r} from {self.origin} returned {type(measurement).__name__} "
                              f"from {method}(), not a hwcompress Measurement")
        median = measurement.latency.median
        if not (isinstance(median, (int, float)) and math.isfinite(median) and median >= 0):
            raise PluginError(f"profiler {self.name!r} from {self.origin} reported a median latency of {median!r} ms")
        notes: list[str] = []
        measurement.facts = json_safe_facts(dict(measurement.facts or {}), notes)
        if notes:
            measurement.notes = [*measurement.notes, f"facts converted to text (not JSON values): {', '.join(notes)}"]
        return measurement


def json_safe_facts(facts: dict[str, Any], converted: list[str], prefix: str = "") -> dict[str, Any]:
    """``facts`` with every value JSON can hold kept and every other one turned into its ``str``;
    the keys converted are appended to ``converted``."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out[str(key)] = json_safe_facts(value, converted, f"{name}.")
            continue
        try:
            json.dumps(value, allow_nan=False)
            out[str(key)] = value
        except (TypeError, ValueError):
            out[str(key)] = str(value)
            converted.append(name)
    return out


@dataclass
class Timing:
    """How latency on a device is obtained here.

    Attributes:
        descriptor: the device.
        profiler: follows the profiler contract: measures (``source == "measured"``) or predicts from
            ``table`` (``source == "lut"``).
        source: ``measured`` or ``lut``.
        table: the LUT behind a prediction (None when measuring).
        notes: why this way (a fallback profiler, a LUT used because nothing can measure here).
    """

    descriptor: DeviceDescriptor
    profiler: Any
    source: str
    table: LatencyTable | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.source == MEASURED

    def describe(self) -> str:
        if self.measured:
            return f"measured on {self.descriptor.name} with {self.profiler.name}"
        return f"predicted for {self.descriptor.name} from LUT {self.table.where() if self.table else '?'}"

    def check_settings(self, settings: ProfileSettings) -> list[str]:
        """Notes about ``settings`` for this timing: more threads than the measuring machine has cores.

        Raises:
            UserError: more threads than the measuring machine (this one, or the remote device) has
                logical cores; a precision the measuring profiler does not run (it declares the ones it
                runs in ``precisions``; one that declares none is not asked).
        """
        if self.measured:
            check_precisions(self.profiler, self.descriptor.name, [settings.precision])
        remote = self.measured and self.descriptor.remote
        cores = (self.profiler.logical_cores() if remote else None) or os.cpu_count() or 1
        if self.measured and settings.threads > cores:
            machine = f"{self.descriptor.name}'s" if remote else "this machine's"
            raise UserError(f"--threads {settings.threads} is more than {machine} {cores} logical cores; "
                            f"use --threads {cores} or fewer")
        return []


def check_precisions(profiler: Any, device: str, asked: Sequence[str]) -> None:
    """Refuse a precision in ``asked`` that ``profiler`` does not run (it declares the ones it runs in
    ``precisions``; one that declares none is not asked)."""
    runs = tuple(getattr(profiler, "precisions", ()) or ())
    unrun = list(dict.fromkeys(p for p in asked if runs and p not in runs))
    if unrun:
        raise UserError(f"--precision {', '.join(unrun)}: the {profiler.name} profiler on {device} runs {', '.join(runs)}; "
                        f"use {' or '.join(runs)}")


def profiler_origin(name: str) -> str:
    entry = registry.profilers.entry(name)
    return entry.origin() if entry is not None else "hwcompress"


def installed_profiler(name: str) -> GuardedProfiler | None:
    """The registered profiler ``name`` behind its guard, or None when no plugin provides it."""
    entry = registry.profilers.entry(name)
    if entry is None:
        return None
    return GuardedProfiler(entry.resolve(), entry.origin())


def _first_available(descriptor: DeviceDescriptor) -> tuple[GuardedProfiler | None, list[tuple[str, str]]]:
    """The first of the descriptor's profilers (its own, then its fallbacks) that works here, and
    ``[(name, why not), ...]`` for the installed ones tried before it."""
    skipped: list[tuple[str, str]] = []
    for name in descriptor.profiler_names:
        profiler = installed_profiler(name)
        if profiler is None:
            continue
        ok, reason = profiler.available()
        if ok:
            return profiler, skipped
        skipped.append((name, reason))
    return None, skipped


def _joined(skipped: list[tuple[str, str]]) -> str:
    """``profiler 'a' is unavailable: why; profiler 'b' is unavailable: why``, repeated reasons once."""
    parts: list[str] = []
    for name, reason in skipped:
        if not any(reason in part for part in parts):
            parts.append(f"profiler {name!r} is unavailable: {reason}")
    return "; ".join(parts)


def _why_not_measured(descriptor: DeviceDescriptor, skipped: list[tuple[str, str]]) -> str:
    if descriptor.profiler not in registry.profilers:
        return (f"device {descriptor.name!r} needs the {descriptor.profiler!r} profiler, which is not installed; "
                f"install hwcompress-profiler-{descriptor.profiler} (see `hwcompress plugins`)")
    return _joined(skipped)


def _record_hint(descriptor: DeviceDescriptor) -> str:
    return descriptor.record_hint or f"hwcompress lut record {descriptor.option} --model MODEL --out FILE"


def resolve_timing(descriptor: DeviceDescriptor, lut: str | os.PathLike[str] | None = None) -> Timing:
    """How latency on ``descriptor`` is obtained here (see the module docstring for the rules).

    Raises:
        UserError: neither measurable here nor predictable from a LUT: one line with the reasons and
            the command that records a LUT on the device.
    """
    if lut is not None:
        return _lut_timing(descriptor, Path(lut), [])
    if descriptor.remote:
        return Timing(descriptor, remote_profiler(descriptor), MEASURED)
    local, why_not = descriptor.is_local()
    notes: list[str] = []
    if local:
        profiler, skipped = _first_available(descriptor)
        if profiler is not None:
            if skipped:
                notes.append(f"measured with the {profiler.name!r} profiler because {_joined(skipped)}")
            return Timing(descriptor, profiler, MEASURED, notes=notes)
        why_not = _why_not_measured(descriptor, skipped)
    configured = descriptor.lut_path()
    if configured is not None and configured.exists():
        return _lut_timing(descriptor, configured, [f"not measured: {why_not}"] if local else [])
    if local:
        raise UserError(why_not)
    raise UserError(f"{why_not}; predicting {descriptor.name} latency here needs a LUT recorded on the device "
                    f"(pass --lut FILE). Record one there: {_record_hint(descriptor)}")


def _lut_timing(descriptor: DeviceDescriptor, path: Path, notes: list[str]) -> Timing:
    table = LatencyTable.load(path)
    local_facts = None
    if descriptor.is_local()[0]:
        # On the device itself, the table's runtime version can be checked against the installed one.
        recorded_with = installed_profiler(str(table.provenance.get("profiler")))
        if recorded_with is not None and recorded_with.available()[0]:
            try:
                local_facts = recorded_with.facts(ProfileSettings())
            except (UserError, PluginError):  # facts are best effort: the check is skipped, not the prediction
                local_facts = None
    return Timing(descriptor, LutPredictor(table, descriptor, local_facts), LUT, table=table, notes=notes)


def measuring_profiler(descriptor: DeviceDescriptor, name: str | None = None) -> tuple[GuardedProfiler, list[str]]:
    """The profiler that records a LUT on this device: ``name``, else the device's own (or a fallback),
    else ONNX Runtime when none of those works here (a Jetson without the TensorRT plugin still records
    with ONNX Runtime). A device with a ``[transport]`` records through its runner (``name`` selects
    the profiler there). Returns the profiler and notes about the choice.

    Raises:
        UserError: this machine is not the device, or nothing can measure here.
    """
    if descriptor.remote:
        profiler = remote_profiler(descriptor, name)
        return profiler, [f"recording on {', '.join(h.label for h in profiler.hosts)} over {profiler.kind}"]
    local, why_not = descriptor.is_local()
    if not local:
        raise UserError(f"`hwcompress lut record` times layers on the device itself and this machine is not it "
                        f"({why_not}); run it there: {_record_hint(descriptor)}")
    if name:
        profiler = installed_profiler(name)
        if profiler is None:
            raise UserError(f"no profiler named {name!r} is installed (see `hwcompress plugins`)")
        ok, reason = profiler.available()
        if not ok:
            raise UserError(f"profiler {name!r} is unavailable: {reason}")
        return profiler, []
    profiler, skipped = _first_available(descriptor)
    if profiler is not None:
        notes = [f"recording with the {profiler.name!r} profiler because {_joined(skipped)}"] if skipped else []
        return profiler, notes
    why_not = _why_not_measured(descriptor, skipped)
    fallback = installed_profiler("onnxruntime")
    if fallback is None or descriptor.profiler == "onnxruntime" or not fallback.available()[0]:
        raise UserError(why_not)
    return fallback, [f"{why_not}; recording with onnxruntime instead"]


def device_status(descriptor: DeviceDescriptor) -> tuple[str, str]:
    """How ``descriptor`` can be served here: ``("measured" | "lut" | "unavailable", reason)``: the
    same decision as :func:`resolve_timing`, with the reasons stated for ``hwcompress devices``. A
    remote device is probed (each host connected to, its runner started): ``measured`` when at least
    one host answers, the reason listing every host."""
    if descriptor.remote:
        statuses = remote_profiler(descriptor).probe()
        reason = "; ".join(f"{s.host} {s.detail}" if s.up else f"{s.host} down: {s.detail}" for s in statuses)
        return (MEASURED if any(s.up for s in statuses) else "unavailable"), reason
    try:
        timing = resolve_timing(descriptor)
    except UserError as error:
        local, why_not = descriptor.is_local()
        if local and descriptor.profiler in registry.profilers:
            _, skipped = _first_available(descriptor)
            reasons: list[str] = []
            for _, reason in skipped:
                if not any(reason in known for known in reasons):  # a fallback's reason often repeats the first's
                    reasons.append(reason)
            return "unavailable", "; ".join(reasons) or str(error)
        return "unavailable", str(error)
    if timing.measured:
        return MEASURED, (f"with {timing.profiler.name!r}: " + "; ".join(timing.notes)) if timing.notes else ""
    return LUT, f"LUT {timing.table.where()}" + (f" ({'; '.join(timing.notes)})" if timing.notes else "")
