"""Latency lookup tables (LUTs): record per-layer latency ON a device, predict models from it anywhere.

Mobile and edge devices cannot run the search, so their latency comes from a table recorded on the
device itself (``hwcompress lut record``). For every layer of a model the recorder times a tiny model
made of that layer *as the runtime executes it inside the network* (Conv2d with the BatchNorm and
activation that follow it, which runtimes fold into one kernel; depthwise convolutions with their
groups; Linear), over a grid of channel counts, so that channel-pruned variants are predicted by
interpolation. It also times the whole model, and copies of it uniformly pruned to a few widths: the
ratio between each measurement and the sum of its layers is the *calibration* stored with the table
and applied to every prediction (interpolated between the widths by layer sum). Devices without a
usable PyTorch (phones) time a *plan* exported elsewhere (:func:`export_plan`, :func:`record_plan`).

Public API: :class:`LatencyTable` (``load``, ``save``, ``merge``, ``predict_layer``, ``predict``,
``predict_detail``, ``check_request``, ``summary``), :func:`record_lut`, :func:`ensure_lut`,
:func:`export_plan`, :func:`record_plan`, :class:`Recorder` (time any list of configurations),
:func:`model_units`, :func:`grid_configs`, :class:`LutProfiler` and :func:`predict_report`.

The file format (JSON, ``"schema": "hwcompress.lut/1"``)::

    {"schema": "hwcompress.lut/1",
     "provenance": {"device", "profiler", "runtime", "runtime_version", "precision", "batch", "threads",
                    "governor", "clocks", "date", "updated", "recorder", "host", "timing",
                    "channel_multiple", "channel_quantum", "session_overhead_ms", "facts", ...},
     "entries": [{"op": "Conv2d", "batch": 1, "in_hw": [56, 56], "cin": 64, "cout": 64,
                  "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "groups": 1,
                  "fused": ["BatchNorm2d", "ReLU"], "median": 1.21, "p90": 1.25, "std": 0.02, "runs": 50}, ...],
     "models": [{"name": "resnet18", "input_shape": [1, 3, 224, 224], "families": [...],
                 "layer_sum_ms": 20.1, "measured_ms": 23.2, "scale": 1.154, "offset_ms": 3.1,
                 "points": [{"width": 1.0, "layer_sum_ms": 20.1, "measured_ms": 23.2, "ratio": 1.154}, ...]}]}

An entry is keyed by op, batch, input H x W, cin, cout, kernel, stride, padding and groups. Two
timing modes exist (``provenance.timing``):

* ``kernels``: the profiler's own ``measure_unit(artifact, settings) -> Measurement``, the in-network
  time of the unit: the sum of the runtime's per-node kernel times inside the tiny model, leaving out
  the layout conversions at its edges (ONNX Runtime's NCHWc ``ReorderInput``/``ReorderOutput``,
  TensorRT's reformatting layers), which a layer inside a network does not pay. ONNX Runtime and
  TensorRT offer it; measured: on mobilenet_v2 the sum of standalone ONNX Runtime sessions
  over-estimates the network by 55 %, the sum of kernels is within 1 %.
* ``session``: the whole standalone run through the profiler's ``measure``, minus the fixed per-call
  overhead (timed once on a trivial model), for profilers without ``measure_unit``.

Channel quantum: many kernels work on blocks of channels (ONNX Runtime's NCHWc uses 16 with AVX-512,
8 with AVX2), so 56 channels cost what 64 cost. The recorder detects that step once per table
(``channel_quantum``) and interpolates on channel counts rounded up to it; ``hwcompress lut show``
reports it because pruning to a multiple of it is what turns MACs into time.

Predictions name their coverage: per layer ``exact`` (recorded configuration), ``interpolated``
(bilinear over the recorded (cin, cout) grid, or scaled from the nearest grid point outside it, counted
as ``extrapolated`` too), ``missing`` (no configuration of that shape recorded; estimated from the
nearest configuration of the same op scaled by MACs, else 0), and ``fused`` (a BatchNorm folded into
the convolution before it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from hwcompress.analysis import OTHER, LayerSpec, ModelAnalysis
from hwcompress.errors import UserError
from hwcompress.profiler import LatencyStats, Measurement, ModelArtifact, ProfileSettings

SCHEMA = "hwcompress.lut/1"
SCHEMA_PREFIX = "hwcompress.lut/"

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

_PROVENANCE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "device": str,
    "profiler": str,
    "runtime": str,
    "runtime_version": str,
    "precision": str,
    "batch": int,
    "threads": int,
    "date": str,
    "recorder": str,
    "timing": str,
    "channel_quantum": int,
}
_ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "op": str,
    "batch": int,
    "in_hw": list,
    "cin": int,
    "cout": int,
    "groups": int,
    "median": (int, float),
    "p90": (int, float),
    "std": (int, float),
    "runs": int,
}
_MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "families": list,
    "layer_sum_ms": (int, float),
    "measured_ms": (int, float),
    "scale": (int, float),
}


# --------------------------------------------------------------------------------------------------
# Keys


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

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def diagonal(self) -> bool:
        """Channels that move together (depthwise convolutions, norms): a one-axis grid."""
        return self.depthwise or (self.op in NORM_OPS and self.cin == self.cout)

    def key(self) -> str:
        return (
            f"{self.op}|b{self.batch}|{_dims(self.in_hw)}|{self.cin}>{self.cout}|k{_dims(self.kernel)}"
            f"|s{_dims(self.stride)}|p{_dims(self.padding)}|g{self.groups}"
        )

    def family(self) -> str:
        """Everything but the channel counts: the configurations one interpolation grid spans."""
        groups = "dw" if self.depthwise else f"g{self.groups}"
        return f"{self.op}|b{self.batch}|{_dims(self.in_hw)}|k{_dims(self.kernel)}|s{_dims(self.stride)}|p{_dims(self.padding)}|{groups}"

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
        """Multiply-accumulates (the same convention as :mod:`hwcompress.analysis`)."""
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
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerConfig":
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
        )


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
        }


class Prediction(NamedTuple):
    """What :meth:`LatencyTable.predict` returns (unpacks as ``total_ms, per_layer_ms, coverage``)."""

    total_ms: float
    per_layer_ms: dict[str, float]
    coverage: dict[str, Any]


@dataclass
class PredictionDetail:
    """A prediction with everything behind it.

    Attributes:
        total_ms: calibrated prediction of the whole model.
        per_layer_ms: calibrated per-layer predictions (they add up to ``total_ms`` minus ``offset_ms``).
        status: per layer, ``exact`` | ``interpolated`` | ``missing`` | ``fused``.
        layer_sum_ms: the uncalibrated sum of the layers.
        std_ms: spread of the prediction (the entries' robust spreads, see :attr:`LutEntry.spread`,
            combined as independent).
        scale, offset_ms: the calibration applied (``total = scale * layer_sum + offset``).
        calibration: which recorded model the calibration came from (None when uncalibrated).
        extrapolated: layers outside the recorded channel grid (a subset of the interpolated ones).
    """

    total_ms: float
    per_layer_ms: dict[str, float]
    status: dict[str, str]
    layer_sum_ms: float
    std_ms: float
    scale: float
    offset_ms: float
    calibration: dict[str, Any] | None
    extrapolated: list[str] = field(default_factory=list)

    def coverage(self) -> dict[str, Any]:
        counts = {EXACT: 0, INTERPOLATED: 0, MISSING: 0, FUSED: 0}
        for status in self.status.values():
            counts[status] += 1
        predicted = counts[EXACT] + counts[INTERPOLATED] + counts[MISSING]
        return {
            "layers": predicted,
            EXACT: counts[EXACT],
            INTERPOLATED: counts[INTERPOLATED],
            MISSING: counts[MISSING],
            FUSED: counts[FUSED],
            "extrapolated": len(self.extrapolated),
            "missing_layers": [name for name, status in self.status.items() if status == MISSING],
            "calibration_scale": round(self.scale, 4),
            "calibration_model": self.calibration.get("name") if self.calibration else None,
        }

    def as_tuple(self) -> Prediction:
        return Prediction(self.total_ms, dict(self.per_layer_ms), self.coverage())


# --------------------------------------------------------------------------------------------------
# The table


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step if step > 1 else value


class LatencyTable:
    """A device's latency lookup table: load (validated), save (atomically), merge, predict.

    Example:
        >>> table = LatencyTable.load("raspberry-pi-5.lut.json")          # doctest: +SKIP
        >>> total, per_layer, coverage = table.predict(analysis)          # doctest: +SKIP
    """

    def __init__(
        self,
        provenance: dict[str, Any],
        entries: Iterable[LutEntry] = (),
        models: Iterable[dict[str, Any]] = (),
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.provenance = dict(provenance)
        self.entries: dict[str, LutEntry] = {}
        for entry in entries:
            self.entries[entry.config.key()] = entry
        self.models: list[dict[str, Any]] = [dict(m) for m in models]
        self.path = Path(path) if path is not None else None
        self._index: dict[str, dict[tuple[int, int], tuple[float, float]]] | None = None
        self._cache: dict[str, tuple[float, float, str, bool]] = {}

    # ---- basic properties ------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return str(self.provenance.get("device", ""))

    @property
    def quantum(self) -> int:
        return max(1, int(self.provenance.get("channel_quantum", 1) or 1))

    @property
    def timing(self) -> str:
        return str(self.provenance.get("timing", TIMING_SESSION))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, config: LayerConfig) -> bool:
        return config.key() in self.entries

    def add(self, entry: LutEntry) -> None:
        self.entries[entry.config.key()] = entry
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the interpolation index (after entries or the channel quantum changed)."""
        self._index = None
        self._cache = {}

    def where(self) -> str:
        return str(self.path) if self.path else "(in memory)"

    # ---- files -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        entries = sorted(self.entries.values(), key=lambda e: (e.config.family(), e.config.cin, e.config.cout))
        return {
            "schema": SCHEMA,
            "provenance": self.provenance,
            "entries": [entry.to_dict() for entry in entries],
            "models": self.models,
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the table atomically (temporary file, then rename: an interrupted write leaves the old one)."""
        from hwcompress.report import write_json_atomic

        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path to save the LUT to")
        self.provenance["updated"] = _now()
        write_json_atomic(self.to_dict(), target)
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatencyTable":
        """Read and validate a LUT file.

        Raises:
            UserError: missing, unreadable, truncated or malformed file, another schema version, or
                missing/invalid fields: one line naming the file and the problem.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"LUT file {path} not found") from None
        except IsADirectoryError:
            raise UserError(f"LUT file {path} is a folder, not a file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read LUT file {path}: {error}") from None
        if not text.strip():
            raise UserError(f"LUT file {path} is empty")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"LUT file {path} is not valid JSON (truncated or corrupted?): {error.msg} at line {error.lineno} column {error.colno}"
            ) from None
        return cls.from_dict(document, source=str(path))

    @classmethod
    def from_dict(cls, document: Any, source: str = "(in memory)") -> "LatencyTable":
        """Validate a parsed LUT document (see :meth:`load`)."""
        where = f"LUT file {source}"
        if not isinstance(document, dict):
            raise UserError(f"{where} is not a hwcompress LUT (a JSON object with \"schema\": \"{SCHEMA}\" expected)")
        schema = document.get("schema")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
                raise UserError(f"{where} has schema {schema!r}, this hwcompress reads {SCHEMA!r}; re-record it or upgrade hwcompress")
            raise UserError(f"{where} is not a hwcompress LUT (schema {schema!r}, expected {SCHEMA!r})")
        provenance = document.get("provenance")
        if not isinstance(provenance, dict):
            raise UserError(f"{where} has no provenance block")
        for name, kind in _PROVENANCE_FIELDS.items():
            _check_field(provenance, name, kind, f"{where}: provenance")
        if provenance["timing"] not in (TIMING_KERNELS, TIMING_SESSION):
            raise UserError(f"{where}: provenance field 'timing' must be {TIMING_KERNELS!r} or {TIMING_SESSION!r}")
        for name in ("batch", "threads", "channel_quantum"):
            if provenance[name] < 1:
                raise UserError(f"{where}: provenance field {name!r} must be at least 1")
        raw_entries = document.get("entries")
        if not isinstance(raw_entries, list):
            raise UserError(f"{where} has no 'entries' list")
        entries = []
        for number, raw in enumerate(raw_entries):
            label = f"{where}: entry {number}"
            if not isinstance(raw, dict):
                raise UserError(f"{label} is not an object")
            for name, kind in _ENTRY_FIELDS.items():
                _check_field(raw, name, kind, label)
            for name in ("median", "p90", "std"):
                value = float(raw[name])
                if not math.isfinite(value) or value < 0:
                    raise UserError(f"{label} has an invalid {name} ({raw[name]!r}): latencies are finite and >= 0 ms")
            if raw["runs"] < 0 or raw["cin"] < 1 or raw["cout"] < 1 or raw["batch"] < 1 or raw["groups"] < 1:
                raise UserError(f"{label} has a non-positive batch, cin, cout, groups or negative runs")
            try:
                config = LayerConfig.from_dict(raw)
            except (TypeError, ValueError) as error:
                raise UserError(f"{label} has a malformed shape field: {error}") from None
            fused = raw.get("fused", [])
            if not isinstance(fused, list) or not all(isinstance(f, str) for f in fused):
                raise UserError(f"{label}: 'fused' must be a list of op names")
            passes = raw.get("passes", 1)
            if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
                raise UserError(f"{label}: 'passes' must be a positive integer")
            entries.append(LutEntry(config, float(raw["median"]), float(raw["p90"]), float(raw["std"]), int(raw["runs"]), tuple(fused), passes))
        models = document.get("models", [])
        if not isinstance(models, list):
            raise UserError(f"{where}: 'models' must be a list")
        for number, model in enumerate(models):
            label = f"{where}: model {number}"
            if not isinstance(model, dict):
                raise UserError(f"{label} is not an object")
            for name, kind in _MODEL_FIELDS.items():
                _check_field(model, name, kind, label)
            for name in ("layer_sum_ms", "measured_ms", "scale"):
                value = float(model[name])
                if not math.isfinite(value) or value < 0:
                    raise UserError(f"{label} has an invalid {name} ({model[name]!r})")
        return cls(provenance, entries, models, path=source if source != "(in memory)" else None)

    # ---- compatibility ---------------------------------------------------------------------------

    def settings_key(self) -> dict[str, Any]:
        """What must agree between two tables (or a table and a request) for their times to mix."""
        p = self.provenance
        return {
            "device": p.get("device"),
            "profiler": p.get("profiler"),
            "runtime_version": p.get("runtime_version"),
            "precision": p.get("precision"),
            "batch": p.get("batch"),
            "threads": p.get("threads"),
            "timing": p.get("timing"),
        }

    def check_request(
        self,
        descriptor: Any,
        settings: ProfileSettings,
        batch: int | None = None,
        local_facts: dict[str, Any] | None = None,
    ) -> list[str]:
        """Refuse a LUT that does not describe this request; return notes about what cannot be checked.

        Refused (:class:`UserError`): another device, another precision, batch or thread count, another
        runtime version than the one installed here when the device is this machine.
        Noted: a runtime other than the descriptor's usual profiler (a Jetson LUT recorded with ONNX
        Runtime predicts ONNX Runtime on the Jetson), and a runtime version that cannot be checked
        from here.

        Args:
            descriptor: the :class:`~hwcompress.devices.DeviceDescriptor` asked for.
            settings: the profile settings asked for.
            batch: the input's batch size.
            local_facts: the local profiler's facts when the device is this machine.
        """
        p = self.provenance
        where = f"LUT {self.where()}"
        names = {descriptor.name, *getattr(descriptor, "aliases", [])}
        if p["device"] not in names:
            raise UserError(
                f"{where} was recorded for device {p['device']!r}, not {descriptor.name!r}; "
                f"record one on the {descriptor.name} (hwcompress lut record --device {descriptor.name} ...)"
            )
        if str(settings.precision) != p["precision"]:
            raise UserError(
                f"{where} was recorded at precision {p['precision']}, the profile asks for {settings.precision}; "
                f"pass --precision {p['precision']} or record a {settings.precision} LUT"
            )
        if int(settings.threads) != int(p["threads"]):
            raise UserError(
                f"{where} was recorded with {p['threads']} thread(s), the profile asks for {settings.threads}; "
                f"pass --threads {p['threads']} or record a LUT with --threads {settings.threads}"
            )
        if batch is not None and int(batch) != int(p["batch"]):
            raise UserError(
                f"{where} was recorded at batch {p['batch']}, the input has batch {batch}; "
                f"use --input-shape with batch {p['batch']} or record a LUT at batch {batch}"
            )
        notes = []
        if local_facts is not None:
            version = local_facts.get("runtime_version")
            runtime = local_facts.get("runtime", p.get("profiler"))
            if runtime == p.get("runtime") and version and version != p["runtime_version"]:
                raise UserError(
                    f"{where} was recorded with {p['runtime']} {p['runtime_version']}, this machine runs {version}; "
                    f"re-record it (hwcompress lut record --device {descriptor.name} ...)"
                )
        else:
            notes.append(f"recorded with {p['runtime']} {p['runtime_version']} on {p.get('host', '?')} ({p['date'][:10]}); the runtime on the device is not checked from here")
        profiler = getattr(descriptor, "profiler", None)
        if profiler and profiler != p["profiler"]:
            notes.append(
                f"this LUT was recorded with the {p['profiler']} profiler; {descriptor.name} is normally measured with "
                f"{profiler}, so the prediction describes {p['profiler']} on the device"
            )
        return notes

    def check_mergeable(self, other: "LatencyTable") -> None:
        """Refuse to mix tables recorded on different devices or under different settings."""
        mine, theirs = self.settings_key(), other.settings_key()
        for name, value in mine.items():
            if theirs[name] != value:
                raise UserError(
                    f"cannot merge LUT {other.where()} into {self.where()}: {name} differs ({theirs[name]!r} vs {value!r}); "
                    "only tables recorded on the same device with the same runtime and settings mix"
                )

    def merge(self, other: "LatencyTable") -> "LatencyTable":
        """Add ``other``'s entries and calibrations (in place); where both timed a configuration,
        the measurement with more runs wins (``other``'s on a tie). Returns ``self``."""
        self.check_mergeable(other)
        for key, entry in other.entries.items():
            mine = self.entries.get(key)
            if mine is None or entry.runs >= mine.runs:
                self.entries[key] = entry
        known = {_model_id(m): i for i, m in enumerate(self.models)}
        for model in other.models:
            if _model_id(model) in known:
                self.models[known[_model_id(model)]] = dict(model)
            else:
                self.models.append(dict(model))
        if other.quantum != self.quantum:
            warnings.warn(
                f"LUT {other.where()} detected channel quantum {other.quantum}, {self.where()} {self.quantum}; keeping {self.quantum}",
                stacklevel=2,
            )
        sources = list(self.provenance.get("merged_from", [])) + [other.where()]
        self.provenance["merged_from"] = sources
        self.invalidate()
        return self

    # ---- prediction --------------------------------------------------------------------------------

    def _entry_ms(self, entry: LutEntry) -> float:
        """The in-network time of an entry (session timings lose the fixed per-call overhead)."""
        if self.timing == TIMING_SESSION:
            overhead = float(self.provenance.get("session_overhead_ms", 0.0) or 0.0)
            # Never below a tenth of the timing: the overhead estimate is itself a measurement.
            return max(entry.median - overhead, 0.1 * entry.median)
        return entry.median

    def _families(self) -> dict[str, dict[tuple[int, int], tuple[float, float]]]:
        """Per family, ``(x(cin), x(cout)) -> (ms, std)`` on channel counts rounded up to the quantum
        (56 channels run as 64 on 16-channel blocks), built once and reused by every lookup."""
        if self._index is None:
            grouped: dict[str, dict[tuple[int, int], list[LutEntry]]] = {}
            for entry in self.entries.values():
                xy = (self._x(entry.config.cin), self._x(entry.config.cout))
                grouped.setdefault(entry.config.family(), {}).setdefault(xy, []).append(entry)
            self._index = {
                family: {
                    xy: (statistics.fmean(self._entry_ms(e) for e in es), statistics.fmean(e.spread for e in es))
                    for xy, es in points.items()
                }
                for family, points in grouped.items()
            }
            self._cache = {}
        return self._index

    def _x(self, channels: int) -> int:
        # Counts of a block or more run padded to whole blocks; smaller ones are their own case.
        return channels if channels < self.quantum else _ceil_to(channels, self.quantum)

    def lookup(self, config: LayerConfig) -> tuple[float, float, str, bool]:
        """Predict one configuration: ``(ms, std_ms, status, extrapolated)`` (uncalibrated)."""
        key = config.key()
        entry = self.entries.get(key)
        if entry is not None:
            return self._entry_ms(entry), entry.spread, EXACT, False
        families = self._families()
        cached = self._cache.get(key)
        if cached is None:
            values = families.get(config.family())
            cached = self._interpolate(config, values) if values else self._nearest(config)
            self._cache[key] = cached
        return cached

    def _interpolate(self, config: LayerConfig, values: dict[tuple[int, int], tuple[float, float]]) -> tuple[float, float, str, bool]:
        qx, qy = self._x(config.cin), self._x(config.cout)
        if config.diagonal:
            line = {x: v for (x, y), v in values.items() if x == y}
            if line:
                return self._interpolate_1d(qx, line)
        xs = sorted({x for x, _ in values})
        ys = sorted({y for _, y in values})
        # Rectangles around the query whose four corners were all recorded; the tightest wins.
        lows_x = [x for x in reversed(xs) if x <= qx][:4]
        highs_x = [x for x in xs if x >= qx][:4]
        lows_y = [y for y in reversed(ys) if y <= qy][:4]
        highs_y = [y for y in ys if y >= qy][:4]
        best = None
        for x0 in lows_x:
            for x1 in highs_x:
                for y0 in lows_y:
                    for y1 in highs_y:
                        if all(c in values for c in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))):
                            area = (x1 - x0 + 1) * (y1 - y0 + 1)
                            if best is None or area < best[0]:
                                best = (area, x0, x1, y0, y1)
        if best is not None:
            _, x0, x1, y0, y1 = best
            tx = 0.0 if x1 == x0 else (qx - x0) / (x1 - x0)
            ty = 0.0 if y1 == y0 else (qy - y0) / (y1 - y0)
            ms = var = 0.0
            for corner, weight in (((x0, y0), (1 - tx) * (1 - ty)), ((x0, y1), (1 - tx) * ty), ((x1, y0), tx * (1 - ty)), ((x1, y1), tx * ty)):
                value, std = values[corner]
                ms += weight * value
                var += (weight * std) ** 2
            return ms, math.sqrt(var), INTERPOLATED, False
        # Outside the grid (or a sparse one): the nearest recorded point, scaled by the work ratio.
        nearest = min(values, key=lambda xy: abs(math.log(xy[0] / qx)) + abs(math.log(xy[1] / qy)))
        ratio = (qx / nearest[0]) * (qy / nearest[1])
        value, std = values[nearest]
        return value * ratio, std * ratio, INTERPOLATED, True

    @staticmethod
    def _interpolate_1d(q: int, line: dict[int, tuple[float, float]]) -> tuple[float, float, str, bool]:
        xs = sorted(line)
        if q in line:
            value, std = line[q]
            return value, std, INTERPOLATED, False
        lower = [x for x in xs if x < q]
        upper = [x for x in xs if x > q]
        if lower and upper:
            x0, x1 = lower[-1], upper[0]
            t = (q - x0) / (x1 - x0)
            value = (1 - t) * line[x0][0] + t * line[x1][0]
            std = math.hypot((1 - t) * line[x0][1], t * line[x1][1])
            return value, std, INTERPOLATED, False
        anchor = lower[-1] if lower else upper[0]
        ratio = q / anchor  # depthwise work grows linearly with the channels
        return line[anchor][0] * ratio, line[anchor][1] * ratio, INTERPOLATED, True

    def _nearest(self, config: LayerConfig) -> tuple[float, float, str, bool]:
        """A configuration of a shape never recorded: the closest one of the same op, scaled by MACs."""
        macs = config.macs()
        candidates = [e for e in self.entries.values() if e.config.op == config.op and e.config.depthwise == config.depthwise]
        if not candidates or macs <= 0:
            return 0.0, 0.0, MISSING, False

        def distance(entry: LutEntry) -> float:
            other = entry.config
            d = abs(math.log(max(other.macs(), 1) / macs))
            d += 0.0 if other.kernel == config.kernel else 1.0
            d += 0.0 if other.stride == config.stride else 0.5
            return d

        entry = min(candidates, key=distance)
        ratio = macs / max(entry.config.macs(), 1)
        return self._entry_ms(entry) * ratio, entry.spread * ratio, MISSING, False

    def predict_layer(self, spec: LayerSpec) -> tuple[float, str]:
        """Uncalibrated latency (ms) of one layer and how it was found: exact | interpolated | missing."""
        config = LayerConfig.from_spec(spec)
        if config is None:
            return 0.0, MISSING
        ms, _, status, _ = self.lookup(config)
        return ms, status

    def calibration_for(self, layers: Sequence[LayerSpec]) -> dict[str, Any] | None:
        """The recorded model whose layer shapes overlap ``layers`` most (a pruned resnet18 has the
        shapes of resnet18, whatever its channel counts), or None when nothing overlaps."""
        if not self.models:
            return None
        families = {c.family() for c in (LayerConfig.from_spec(s) for s in layers) if c is not None}
        best, best_score = None, 0.0
        for model in self.models:
            recorded = set(model.get("families", []))
            if not recorded or not families:
                continue
            score = len(recorded & families) / len(recorded | families)
            if score > best_score:
                best, best_score = model, score
        return best

    def predict_detail(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale") -> PredictionDetail:
        """Predict a model from its analysed layers, with the calibration applied.

        Args:
            layers: a :class:`~hwcompress.analysis.ModelAnalysis` or its ``layers``.
            calibration: ``scale`` (multiply the layer sum by measured / sum of the closest recorded
                model, interpolated between its calibration points by layer sum: what fits pruned
                variants, whose missing work shrinks with the layers), ``offset`` (add the full
                model's measured - sum), or ``none``.
        """
        specs = list(layers.layers if isinstance(layers, ModelAnalysis) else layers)
        raw: dict[str, float] = {}
        status: dict[str, str] = {}
        variance = 0.0
        extrapolated: list[str] = []
        previous: LayerSpec | None = None
        for spec in specs:
            if spec.name == OTHER:
                previous = spec
                continue
            if _is_fused_norm(spec, previous):
                raw[spec.name] = 0.0
                status[spec.name] = FUSED
                previous = spec
                continue
            config = LayerConfig.from_spec(spec)
            if config is None:
                raw[spec.name], status[spec.name] = 0.0, MISSING
            else:
                ms, std, state, extra = self.lookup(config)
                raw[spec.name], status[spec.name] = ms, state
                variance += std**2
                if extra:
                    extrapolated.append(spec.name)
            previous = spec
        layer_sum = sum(raw.values())
        model = self.calibration_for(specs) if calibration != "none" else None
        scale, offset = 1.0, 0.0
        if model is not None and calibration == "scale":
            scale = calibration_ratio(model, layer_sum)
        elif model is not None and calibration == "offset":
            offset = float(model["measured_ms"]) - float(model["layer_sum_ms"])
        per_layer = {name: ms * scale for name, ms in raw.items()}
        total = max(layer_sum * scale + offset, 0.0)
        return PredictionDetail(
            total_ms=total,
            per_layer_ms=per_layer,
            status=status,
            layer_sum_ms=layer_sum,
            std_ms=math.sqrt(variance) * scale,
            scale=scale,
            offset_ms=offset,
            calibration=model,
            extrapolated=extrapolated,
        )

    def predict(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale") -> Prediction:
        """``(total_ms, per_layer_ms, coverage)`` for a model's analysed layers (calibrated)."""
        return self.predict_detail(layers, calibration).as_tuple()

    # ---- summary -----------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What ``hwcompress lut show`` prints."""
        ops: dict[str, int] = {}
        for entry in self.entries.values():
            label = f"{entry.config.op} (depthwise)" if entry.config.depthwise else entry.config.op
            ops[label] = ops.get(label, 0) + 1
        return {
            "file": self.where(),
            "schema": SCHEMA,
            "provenance": self.provenance,
            "entries": len(self.entries),
            "families": len(self._families()),
            "ops": dict(sorted(ops.items())),
            "models": [
                {
                    "name": m.get("name"),
                    "input_shape": m.get("input_shape"),
                    "measured_ms": m.get("measured_ms"),
                    "layer_sum_ms": m.get("layer_sum_ms"),
                    "scale": m.get("scale"),
                    "offset_ms": m.get("offset_ms"),
                    "layers": m.get("layers"),
                    "macs": m.get("macs"),
                    "points": [
                        {"width": q.get("width"), "ratio": q.get("ratio"), "measured_ms": q.get("measured_ms"), "layer_sum_ms": q.get("layer_sum_ms")}
                        for q in m.get("points") or []
                    ],
                }
                for m in self.models
            ],
        }


def calibration_ratio(model: dict[str, Any], layer_sum: float) -> float:
    """measured / layer sum for a model whose layers sum to ``layer_sum``: interpolated between the
    recorded calibration points (full model and uniformly pruned copies) by layer sum, held constant
    beyond them; the full model's ``scale`` when only it was measured."""
    points = sorted(
        (float(p["layer_sum_ms"]), float(p["ratio"]))
        for p in model.get("points", [])
        if isinstance(p, dict) and float(p.get("layer_sum_ms", 0)) > 0
    )
    if len(points) < 2:
        return float(model["scale"])
    if layer_sum <= points[0][0]:
        return points[0][1]
    if layer_sum >= points[-1][0]:
        return points[-1][1]
    for (x0, r0), (x1, r1) in zip(points, points[1:]):
        if x0 <= layer_sum <= x1:
            t = 0.0 if x1 == x0 else (layer_sum - x0) / (x1 - x0)
            return r0 + t * (r1 - r0)
    return float(model["scale"])


def _check_field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> None:
    if name not in data:
        raise UserError(f"{where} has no field {name!r}")
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise UserError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")


def _model_id(model: dict[str, Any]) -> tuple[Any, ...]:
    return (model.get("name"), tuple(model.get("input_shape") or ()), model.get("fingerprint"))


def _is_fused_norm(spec: LayerSpec, previous: LayerSpec | None) -> bool:
    """A BatchNorm right after the convolution (or Linear) that feeds it is folded into it."""
    return (
        spec.op in NORM_OPS
        and previous is not None
        and (previous.op in CONV_OPS or previous.op == "Linear")
        and previous.cout is not None
        and previous.cout == spec.cin
    )


# --------------------------------------------------------------------------------------------------
# Recording


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

    from hwcompress.analysis import analyze

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
) -> list[tuple[LayerConfig, UnitTemplate]]:
    """Every configuration to record for ``units`` (deduplicated), with the template that builds it.

    Counts are multiples of ``lcm(multiple, quantum)``: what the search visits, on the runtime's blocks.
    Dense layers get a 2-D (cin x cout) grid; depthwise convolutions and norms one axis; grouped
    convolutions and other modules only their own configuration.
    """
    step = math.lcm(max(1, multiple), max(1, quantum))

    def grid(full: int, fixed: bool) -> list[int]:
        return channel_grid(full, multiple, step, points, min_ratio, fixed)

    seen: dict[str, tuple[LayerConfig, UnitTemplate]] = {}
    for unit in units:
        config = unit.config
        op = config.op
        grouped = config.groups > 1 and not config.depthwise
        if (op in CONV_OPS and config.depthwise) or (op in NORM_OPS and config.cin == config.cout):
            pairs = [(c, c) for c in grid(config.cin, unit.cin_fixed or unit.cout_fixed)]
        elif (op in CONV_OPS and not grouped) or op == "Linear":
            cins = grid(config.cin, unit.cin_fixed)
            couts = grid(config.cout, unit.cout_fixed)
            pairs = [(ci, co) for ci in cins for co in couts]
        else:
            pairs = [(config.cin, config.cout)]
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


@dataclass
class UnitTimer:
    """How one tiny model is timed: ``time(artifact, settings) -> LatencyStats`` and what it measures."""

    timing: str
    time: Callable[[ModelArtifact, ProfileSettings], LatencyStats]


def unit_timer(profiler: Any) -> UnitTimer:
    """The best way ``profiler`` can time a layer as it runs inside a network.

    The profiler's own ``measure_unit`` (in-network time of the unit) when it has one; else its
    whole-session ``measure`` (the table then also stores the fixed per-call overhead, subtracted at
    prediction).
    """
    own = getattr(profiler, "measure_unit", None)
    if callable(own):
        return UnitTimer(TIMING_KERNELS, lambda artifact, settings: own(artifact, settings).latency)

    def session(artifact: ModelArtifact, settings: ProfileSettings) -> LatencyStats:
        return profiler.measure(artifact, replace(settings, per_layer=False)).latency

    return UnitTimer(TIMING_SESSION, session)


#: MB streamed between timed runs of a layer (``settings.options["cache_flush_mb"]`` overrides; 0 = off).
#: Measured on a 2-core Xeon: 16 MB brings a 480x1000 Linear from 0.033 to 0.078 ms (0.084 inside
#: mobilenet_v2) and 1x1 convolutions at 7x7 within 5 % of their in-network times; larger flushes
#: also evict the activations a layer finds warm inside a network and over-predict memory-bound
#: layers (mobilenet_v2's layer sum +20 % at 48 MB), so the remainder is left to the calibration.
DEFAULT_CACHE_FLUSH_MB = 16


def cache_flush_mb(settings: ProfileSettings) -> float:
    return float(settings.options.get("cache_flush_mb", DEFAULT_CACHE_FLUSH_MB))


def cache_flusher(settings: ProfileSettings) -> Callable[[], None]:
    """Evict the layer's weights from the core's private caches between timed runs (for a CPU
    profiler's ``measure_unit``; ``settings.options["cache_flush_mb"]`` sets the size, 0 turns it off).

    Inside a network the rest of the layers run between two uses of a layer's weights, so they come
    from the shared cache or memory; a layer timed alone in a loop keeps them in L2 and looks faster
    (measured: a 480x1000 Linear 2.1x, 1x1 convolutions with 500-900 channels at 7x7 10-19 %). The
    input stays warm: the runtime's layout conversion rewrites it right before the layer, as the
    previous layer would have.
    """
    megabytes = cache_flush_mb(settings)
    if megabytes <= 0:
        return lambda: None
    import numpy as np

    buffer = np.zeros(int(megabytes * (1 << 20)), dtype=np.uint8)

    def flush() -> None:
        # Read and write every byte (touching one byte per line measured as evicting less).
        np.add(buffer, 1, out=buffer)

    return flush


def recording_profiler(descriptor: Any, name: str | None = None) -> Any:
    """The profiler to record with: ``name``, else the device's, else ONNX Runtime when the device's
    profiler is unavailable here (a Jetson without the TensorRT plugin still records with ONNX Runtime)."""
    from hwcompress import plugins
    from hwcompress.profiling import get_available_profiler

    if name:
        profiler = plugins.get_profilers().get(name)
        if profiler is None:
            raise UserError(f"no profiler named {name!r} is installed (see `hwcompress plugins`)")
        ok, reason = profiler.available()
        if not ok:
            raise UserError(f"profiler {name!r} is unavailable: {reason}")
    else:
        try:
            profiler = get_available_profiler(descriptor)
        except UserError as first:
            fallback = plugins.get_profilers().get("onnxruntime")
            if fallback is None or descriptor.profiler == "onnxruntime" or not fallback.available()[0]:
                raise first from None
            warnings.warn(f"{first}; recording with onnxruntime instead", stacklevel=2)
            profiler = fallback
    if getattr(profiler, "name", "") == LutProfiler.name:
        raise UserError("a LUT is recorded with a measuring profiler (onnxruntime, tensorrt...), not with 'lut'")
    return profiler


def read_clocks() -> dict[str, Any]:
    """CPU governor and frequencies, GPU clocks and temperature, where this OS exposes them."""
    found: dict[str, Any] = {}

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        found["governor"] = governor
    for key, path in (
        ("cpu_cur_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        ("cpu_max_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
        ("thermal_zone0_mC", "/sys/class/thermal/thermal_zone0/temp"),
    ):
        value = read(path)
        if value and value.lstrip("-").isdigit():
            found[key] = int(value)
    # Jetson and other SoC GPUs expose devfreq; desktop NVIDIA clocks come from the profiler's facts.
    for folder in sorted(Path("/sys/class/devfreq").glob("*")) if Path("/sys/class/devfreq").is_dir() else []:
        if "gpu" in folder.name.lower() or "gv11b" in folder.name or "ga10b" in folder.name:
            current = read(str(folder / "cur_freq"))
            if current and current.isdigit():
                found[f"gpu_{folder.name}_hz"] = int(current)
            gpu_governor = read(str(folder / "governor"))
            if gpu_governor:
                found[f"gpu_{folder.name}_governor"] = gpu_governor
    nvpmodel = read("/etc/nvpmodel.conf")
    if nvpmodel is not None:
        found["nvpmodel_conf"] = True
    return found


def new_provenance(descriptor: Any, profiler: Any, settings: ProfileSettings, batch: int, timing: str) -> dict[str, Any]:
    """The provenance block of a table recorded here and now."""
    from hwcompress import __version__

    facts = dict(profiler.facts(settings))
    clocks = read_clocks()
    now = _now()
    return {
        "device": descriptor.name,
        "device_aliases": list(getattr(descriptor, "aliases", [])),
        "profiler": profiler.name,
        "runtime": str(facts.get("runtime", profiler.name)),
        "runtime_version": str(facts.get("runtime_version", "unknown")),
        "precision": str(settings.precision),
        "batch": int(batch),
        "threads": int(settings.threads),
        "runs": int(settings.runs),
        "warmup": int(settings.warmup),
        "options": dict(settings.options),
        "governor": clocks.get("governor"),
        "clocks": clocks,
        "date": now,
        "updated": now,
        "recorder": f"hwcompress {__version__}",
        "host": platform.node(),
        "machine": platform.machine(),
        "timing": timing,
        "channel_multiple": int(getattr(descriptor, "channel_multiple", 8)),
        "channel_quantum": 1,
        "session_overhead_ms": 0.0,
        "cache_flush_mb": cache_flush_mb(settings) if timing == TIMING_KERNELS else 0.0,
        "facts": facts,
    }


def _model_fingerprint(units: Sequence[UnitTemplate]) -> str:
    import hashlib

    text = ";".join(f"{u.name}={u.config.key()}" for u in units)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ProgressCallback = Callable[[int, int, str], None]

#: Uniform preserve ratios of the pruned copies the calibration measures beside the full model.
CALIBRATION_WIDTHS = (0.75, 0.5, 0.3)


class Recorder:
    """Times layer configurations into a :class:`LatencyTable`, saving as it goes (resumable).

    Args:
        table: the table to fill (entries already in it are never re-measured).
        profiler: a measuring profiler available here.
        settings: measurement settings (``per_layer`` is ignored).
        path: where to save; None keeps the table in memory.
        progress: ``progress(done, total, label)`` after each configuration; raising from it stops the
            recording, and what was measured is saved.
        save_every_s: save at most this often while recording (and always at the end or on error).
    """

    def __init__(
        self,
        table: LatencyTable,
        profiler: Any,
        settings: ProfileSettings,
        path: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        save_every_s: float = 5.0,
    ) -> None:
        self.table = table
        self.profiler = profiler
        self.settings = replace(settings, per_layer=False)
        flush = table.provenance.get("cache_flush_mb")
        if flush is not None:
            # Every entry of a table is timed with the same flush, whoever records into it.
            self.settings = replace(self.settings, options={**settings.options, "cache_flush_mb": float(flush)})
        self.path = Path(path) if path is not None else None
        self.progress = progress
        self.save_every_s = save_every_s
        self.timer = unit_timer(profiler)
        self.measured = 0
        self._last_save = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="hwcompress-lut-")

    def close(self) -> None:
        self._tmp.cleanup()

    def save(self) -> None:
        if self.path is not None:
            self.table.save(self.path)
        self._last_save = time.monotonic()

    def time_config(self, config: LayerConfig, source: "UnitTemplate | PlannedUnit | None" = None) -> LatencyStats:
        """Time one configuration (not stored): built from its template and exported here, or, for a
        :class:`PlannedUnit`, the ONNX file exported beforehand (no PyTorch needed on the device)."""
        if isinstance(source, PlannedUnit):
            artifact = ModelArtifact(onnx_path=source.onnx_path, input_shape=source.input_shape, name=config.key())
            return self.timer.time(artifact, self.settings)
        from hwcompress.export import export_onnx

        module, shape = build_unit(config, source)
        onnx_path = Path(self._tmp.name) / "unit.onnx"
        export_onnx(module, shape, onnx_path, verify=False)
        artifact = ModelArtifact(onnx_path=onnx_path, input_shape=shape, module=module, name=config.key())
        return self.timer.time(artifact, self.settings)

    def record(
        self,
        configs: Sequence[tuple[LayerConfig, "UnitTemplate | PlannedUnit | None"]],
        passes: int = 1,
        every: int = 0,
        between: Callable[[], None] | None = None,
    ) -> LatencyTable:
        """Time every configuration not yet in the table (``passes`` times); returns the table.

        Args:
            configs: configurations with what times them: the template that builds the layer, a
                :class:`PlannedUnit` (an exported file), or None (a bare layer).
            passes: time each configuration in this many passes over the whole list and keep the
                lowest median: a burst of load or a thermal throttle slows a whole timing down for a
                moment, never speeds it up, and passes minutes apart rarely both meet one.
            every, between: call ``between()`` after every ``every`` new timings (the whole-model
                measurements of the calibration are spread over the recording this way).
        """
        passes = max(1, int(passes))
        total = len(configs) * passes

        def have(config: LayerConfig) -> int:
            entry = self.table.entries.get(config.key())
            return 0 if entry is None else min(entry.passes, passes)

        done = sum(have(c) for c, _ in configs)
        if self.progress:
            self.progress(done, total, "")
        try:
            for current in range(1, passes + 1):
                for config, template in configs:
                    if have(config) >= current:
                        continue
                    stats = self.time_config(config, template)
                    fused = template.fused if template is not None else ()
                    old = self.table.entries.get(config.key())
                    if old is None:
                        self.table.add(LutEntry(config, stats.median, stats.p90, stats.std, stats.runs, fused))
                    elif stats.median < old.median:
                        self.table.add(LutEntry(config, stats.median, stats.p90, stats.std, stats.runs, old.fused or fused, old.passes + 1))
                    else:
                        old.passes += 1
                    self.measured += 1
                    done += 1
                    if time.monotonic() - self._last_save >= self.save_every_s:
                        self.save()
                    if between is not None and every and self.measured % every == 0 and done < total:
                        between()
                    if self.progress:
                        self.progress(done, total, config.key())
        finally:
            # Also on KeyboardInterrupt or an error: an interrupted recording keeps what it measured.
            if self.measured:
                self.save()
        return self.table

    def detect_quantum(self, batch: int, multiple: int) -> tuple[int, list[list[float]]]:
        """The channel step the runtime works in: time a 3x3 convolution at 64, 64+m, ... 64+8m output
        channels and pick the step that explains the times best (a staircase of 2m when kernels work
        on blocks of 2m channels)."""
        probes = quantum_probe_configs(batch, multiple)
        return self.detect_quantum_from([(config, None) for config in probes], multiple)

    def detect_quantum_from(self, probes: Sequence[tuple[LayerConfig, "PlannedUnit | None"]], multiple: int) -> tuple[int, list[list[float]]]:
        """:meth:`detect_quantum` on given probe configurations (exported beforehand for a plan)."""
        counts = [config.cout for config, _ in probes]
        saved = self.settings
        # Steps are a few per cent of the time: more runs than a layer needs make them stand out, and
        # the median of three passes drops the one stray point that turns 16 into 8 (measured here on
        # an idle machine: 2 of 20 single-pass probes said 8, 0 of 20 three-pass probes).
        self.settings = replace(saved, runs=max(int(saved.runs), 30))
        try:
            passes = [[self.time_config(config, source).median for config, source in probes]
                      for _ in range(QUANTUM_PROBE_PASSES)]
            times = [statistics.median(column) for column in zip(*passes)]
        finally:
            self.settings = saved
        return fit_quantum(counts, times, multiple), [[c, round(t, 6)] for c, t in zip(counts, times)]

    def session_overhead(self) -> float:
        """The fixed cost of one call on a trivial model (subtracted from session-timed entries)."""
        config = LayerConfig("Conv2d", 1, (1, 1), 8, 8, (1, 1), (1, 1), (0, 0), 1)
        return self.time_config(config).median


#: Passes over the quantum probe; each configuration keeps the median of its pass medians.
QUANTUM_PROBE_PASSES = 3


def quantum_probe_configs(batch: int, multiple: int) -> list[LayerConfig]:
    """The probe of :meth:`Recorder.detect_quantum`: a 3x3 convolution at 28x28, 64 input channels,
    64, 64 + m, ..., 64 + 8m output channels."""
    base = LayerConfig("Conv2d", batch, (28, 28), 64, 64, (3, 3), (1, 1), (1, 1), 1)
    return [base.with_channels(64, 64 + i * multiple) for i in range(9)]


def fit_quantum(counts: Sequence[int], times: Sequence[float], multiple: int) -> int:
    """The step ``q`` (a multiple of ``multiple``) for which ``time ~ a + b * ceil(count / q) * q`` fits
    best; a coarser step must halve the residual to be chosen over a finer one.

    The line is fitted robustly (Theil-Sen: the median of the pairwise slopes) and scored by the median
    absolute residual, so one stray point does not decide. A least-squares fit read this machine's
    probe ``0.344, 0.439, 0.452, 0.496, 0.505, 0.505, 0.562, 0.63, 0.632`` ms (one point low) as a step
    of 8 where ONNX Runtime works in blocks of 16, and the LUT recorded on it then under-predicted
    pruned resnet18s by 8-14 % instead of 3-5 %.
    """

    def residual(step: int) -> float:
        xs = [_ceil_to(c, step) for c in counts]
        slopes = [(times[j] - times[i]) / (xs[j] - xs[i])
                  for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
        slope = statistics.median(slopes) if slopes else 0.0
        intercept = statistics.median(y - slope * x for x, y in zip(xs, times))
        return statistics.median(abs(y - intercept - slope * x) for x, y in zip(xs, times))

    span = max(counts) - min(counts)
    best, best_residual = multiple, residual(multiple)
    for factor in (2, 4):
        step = multiple * factor
        if step * 2 > span:
            break
        value = residual(step)
        if value < 0.5 * best_residual:
            best, best_residual = step, value
    return best


def open_table(
    path: str | os.PathLike[str] | None,
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    batch: int,
    *,
    overwrite: bool = False,
) -> LatencyTable:
    """The table at ``path`` to resume (checked to be the same device and settings), or a new one."""
    timing = unit_timer(profiler).timing
    fresh = LatencyTable(new_provenance(descriptor, profiler, settings, batch, timing))
    if path is None or overwrite or not Path(path).exists():
        return fresh
    existing = LatencyTable.load(path)
    mine, theirs = fresh.settings_key(), existing.settings_key()
    for name, value in mine.items():
        if theirs[name] != value:
            raise UserError(
                f"LUT {path} was recorded with {name} {theirs[name]!r}, this recording uses {value!r}; "
                "record into another file or pass --overwrite to start afresh"
            )
    return existing


def record_lut(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    out_path: str | os.PathLike[str] | None,
    *,
    model_name: str | None = None,
    points: int = 5,
    min_ratio: float = 0.2,
    quantum: int | None = None,
    passes: int = 1,
    widths: Sequence[float] = CALIBRATION_WIDTHS,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    calibrate: bool = True,
    save_every_s: float = 5.0,
) -> LatencyTable:
    """Record (or complete) the LUT of ``model_module`` on this device; resumable.

    Every layer is timed over a grid of channel counts (``points`` per axis between ``min_ratio`` and
    the full count, on multiples of the device's channel multiple and of the runtime's channel
    quantum), identical configurations once; then the whole model once, for the calibration. Entries
    already in ``out_path`` are kept and not re-measured, so an interrupted run continues where it
    stopped, and a table recorded for one model grows when another is recorded into it.

    Args:
        model_module: the ``torch.nn.Module``.
        input_shape: e.g. ``(1, 3, 224, 224)``; its batch is the table's batch.
        descriptor: the device (a :class:`~hwcompress.devices.DeviceDescriptor`); this machine must be it.
        profiler: a measuring profiler available here (see :func:`recording_profiler`).
        settings: measurement settings (threads, precision, runs, warmup).
        out_path: the LUT file (created, or resumed); None records in memory only.
        model_name: name stored with the calibration (default: the module's class name).
        points: grid points per channel axis (1 records only the model's own configurations).
        min_ratio: the smallest preserve ratio the grid covers.
        quantum: the runtime's channel step; None detects it (once per table).
        passes: passes over the configurations; each keeps the lowest median (see :meth:`Recorder.record`).
        widths: uniform preserve ratios of the pruned copies measured for the calibration besides
            the full model (``()``: the full model only).
        progress: ``progress(done, total, label)`` after each configuration.
        overwrite: start a new table even if ``out_path`` exists.
        calibrate: also time the whole model (the calibration term); skipped when already recorded.
        save_every_s: how often to save while recording.

    Returns:
        The table (also saved at ``out_path``).
    """
    from hwcompress.analysis import analyze
    from hwcompress.export import export_onnx

    input_shape = tuple(int(d) for d in input_shape)
    table = open_table(out_path, descriptor, profiler, settings, input_shape[0], overwrite=overwrite)
    units = model_units(model_module, input_shape)
    multiple = int(getattr(descriptor, "channel_multiple", 8) or 8)
    recorder = Recorder(table, profiler, settings, out_path, progress, save_every_s)
    try:
        if quantum is not None:
            table.provenance["channel_quantum"] = int(quantum)
            table.provenance["channel_quantum_source"] = "given"
        elif "channel_quantum_source" not in table.provenance:
            detected, probe = recorder.detect_quantum(input_shape[0], multiple)
            table.provenance.update(channel_quantum=detected, channel_quantum_source="detected", quantum_probe=probe)
        table.invalidate()
        configs = grid_configs(units, multiple, table.quantum, points, min_ratio)
        fingerprint = _model_fingerprint(units)
        name = model_name or type(model_module).__name__
        calibration = None
        if calibrate and not any(m.get("fingerprint") == fingerprint for m in table.models):
            fixed = [u.name for u in units if u.cout_fixed]
            variants = [(1.0, model_module)] + uniform_variants(model_module, input_shape, widths, multiple, fixed)
            calibration_points = []
            for width, variant in variants:
                onnx_path = Path(recorder._tmp.name) / f"model-{width:.2f}.onnx"
                export_onnx(variant, input_shape, onnx_path, verify=False)
                analysis = analyze(variant, input_shape)
                artifact = ModelArtifact(onnx_path=onnx_path, input_shape=input_shape, module=variant, name=name)
                calibration_points.append({"width": width, "artifact": artifact, "specs": analysis.layers, "macs": analysis.macs})
            calibration = {
                "name": name, "input_shape": input_shape, "fingerprint": fingerprint,
                "configs": [u.config for u in units], "points": calibration_points,
            }
        _record_with_calibration(table, recorder, profiler, settings, configs, passes, calibration)
        if out_path is not None:
            table.save(out_path)
    finally:
        recorder.close()
    return table


def _record_with_calibration(
    table: LatencyTable,
    recorder: "Recorder",
    profiler: Any,
    settings: ProfileSettings,
    configs: Sequence[tuple[LayerConfig, Any]],
    passes: int,
    calibration: dict[str, Any] | None,
) -> None:
    """Record ``configs``; with ``calibration``, time its whole models before, during and after."""
    if table.timing == TIMING_SESSION and not table.provenance.get("session_overhead_ms"):
        table.provenance["session_overhead_ms"] = round(recorder.session_overhead(), 6)
    if calibration is None:
        recorder.record(configs, passes=passes)
        return
    whole_settings = replace(settings, per_layer=False)
    points = [dict(point, wholes=[]) for point in calibration["points"]]

    def between() -> None:
        for point in points:
            point["wholes"].append(profiler.measure(point["artifact"], whole_settings).latency)

    # The whole model (at each calibration width) is timed before, during and after its layers, so
    # that the calibration sees the same conditions (load, temperature, clocks) as the entries do.
    between()
    recorder.record(configs, passes=passes, every=max(10, len(configs) * max(1, passes) // 6), between=between)
    between()
    table.models.append(
        calibration_record(table, calibration["input_shape"], calibration["name"], calibration["fingerprint"], points, calibration["configs"])
    )


def uniform_variants(
    module: Any,
    input_shape: tuple[int, ...],
    widths: Sequence[float],
    multiple: int,
    fixed: Sequence[str] = (),
) -> list[tuple[float, Any]]:
    """Copies of ``module`` with every prunable channel group kept at ``width`` (physically pruned).

    The calibration measures these beside the full model: what separate layers miss is not the same
    share of a pruned model as of the full one (measured on this project's 2-core Xeon: measured/sum
    1.01 for mobilenet_v2, 0.75 at width 0.3). Channel groups come from
    :func:`hwcompress.pruning.find_channel_groups` (the search's own), else from torch-pruning's
    dependency graph directly; layers in ``fixed`` (the model's outputs) are kept whole. A model that
    cannot be pruned yields no variants: the calibration then uses the full model alone.
    """
    import torch

    widths = [w for w in widths if 0 < w < 1]
    if not widths:
        return []
    example = torch.zeros(*input_shape)
    try:
        from hwcompress import pruning
    except Exception:  # the shared module needs torch-pruning too; fall back below
        pruning = None
    out: list[tuple[float, Any]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if pruning is not None:
                groups = pruning.find_channel_groups(module, example)
                for width in widths:
                    keep = {g.name: max(g.min_channels, pruning.round_channels(g.channels, width, multiple)) for g in groups}
                    out.append((width, pruning.prune_channels(module, example, keep).eval()))
            else:
                out = [(width, _prune_uniform_tp(module, example, width, multiple, fixed)) for width in widths]
            for _, model in out:
                with torch.no_grad():
                    model(example)
    except Exception as error:  # calibration falls back to the full model; never fatal
        warnings.warn(f"calibration variants skipped: the model could not be pruned ({type(error).__name__}: {error})", stacklevel=2)
        return []
    return out


def _prune_uniform_tp(module: Any, example: Any, width: float, multiple: int, fixed: Sequence[str]) -> Any:
    """Uniform pruning with torch-pruning alone (when :mod:`hwcompress.pruning` is unavailable)."""
    import copy

    import torch
    import torch_pruning as tp

    model = copy.deepcopy(module).eval()
    named = dict(model.named_modules())
    ignored = [named[name] for name in fixed if name in named]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    roots = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    for group in list(graph.get_all_groups(ignored_layers=ignored, root_module_types=roots)):
        root = group[0].dep.target.module
        linear = isinstance(root, torch.nn.Linear)
        channels = root.out_features if linear else root.out_channels
        keep = max(multiple, min(channels, int(round(channels * width / multiple)) * multiple))
        if keep >= channels:
            continue
        handler = tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels
        pruning = graph.get_pruning_group(root, handler, idxs=list(range(keep, channels)))
        if graph.check_pruning_group(pruning):
            pruning.prune()
    return model


def calibration_record(
    table: LatencyTable,
    input_shape: Sequence[int],
    name: str,
    fingerprint: str,
    points: Sequence[dict[str, Any]],
    configs: Sequence[LayerConfig],
) -> dict[str, Any]:
    """The calibration of one model: measured whole-model medians against the sums of the layers.

    Each point (the full model first, then uniformly pruned copies) brings its analysed layers
    (``specs``), ``macs`` and whole-model timings (``wholes``); it gets the median of those medians and
    its layer sum as the table predicts it. ``scale`` is the full model's ratio; predictions
    interpolate the ratio between points by layer sum (:func:`calibration_ratio`).
    """
    rows = []
    for point in points:
        layer_sum = table.predict_detail(list(point["specs"]), calibration="none").layer_sum_ms
        medians = [w.median for w in point["wholes"]]
        measured = statistics.median(medians)
        rows.append({
            "width": point["width"],
            "macs": point["macs"],
            "layer_sum_ms": round(layer_sum, 6),
            "measured_ms": round(measured, 6),
            "measurements_ms": [round(m, 6) for m in medians],
            "ratio": round(measured / layer_sum, 6) if layer_sum > 0 else 1.0,
        })
    full = rows[0]
    closest = min(points[0]["wholes"], key=lambda w: abs(w.median - full["measured_ms"]))
    return {
        "name": name,
        "input_shape": list(input_shape),
        "fingerprint": fingerprint,
        "families": sorted({c.family() for c in configs}),
        "layers": len(configs),
        "macs": full["macs"],
        "measured_ms": full["measured_ms"],
        "measured": {k: round(v, 6) if isinstance(v, float) else v for k, v in closest.to_dict().items()},
        "layer_sum_ms": full["layer_sum_ms"],
        "scale": full["ratio"],
        "offset_ms": round(full["measured_ms"] - full["layer_sum_ms"], 6),
        "points": rows,
        "date": _now(),
    }


# --------------------------------------------------------------------------------------------------
# Plans: export on a workstation, time on a device that has ONNX Runtime but no PyTorch

PLAN_SCHEMA = "hwcompress.lut-plan/1"


def export_plan(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    out_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    points: int = 5,
    min_ratio: float = 0.2,
    quantum: int | None = None,
    widths: Sequence[float] = CALIBRATION_WIDTHS,
    calibrate: bool = True,
) -> Path:
    """Export everything :func:`record_lut` would time, for :func:`record_plan` to time on the device.

    Phones (Termux) and some boards have ONNX Runtime but no usable PyTorch; the layers, the channel
    grid, the calibration models and the quantum probe are exported here as ONNX files with a
    ``manifest.json``. Without ``quantum`` the grid is planned on the device's channel multiple and
    the device still detects its quantum from the probe, for interpolation.

    Returns:
        The manifest's path.
    """
    from hwcompress import __version__
    from hwcompress.analysis import analyze
    from hwcompress.export import export_onnx

    out = Path(out_dir)
    (out / "units").mkdir(parents=True, exist_ok=True)
    input_shape = tuple(int(d) for d in input_shape)
    units = model_units(model_module, input_shape)
    multiple = int(getattr(descriptor, "channel_multiple", 8) or 8)
    configs = grid_configs(units, multiple, quantum or multiple, points, min_ratio)
    name = model_name or type(model_module).__name__

    def export(module: Any, shape: tuple[int, ...], relative: str) -> str:
        export_onnx(module, shape, out / relative, verify=False)
        return relative

    planned = []
    for index, (config, template) in enumerate(configs):
        module, shape = build_unit(config, template)
        planned.append({"config": config.to_dict(), "fused": list(template.fused), "input_shape": list(shape),
                        "onnx": export(module, shape, f"units/{index:04d}.onnx")})
    probe = []
    if quantum is None:
        for index, config in enumerate(quantum_probe_configs(input_shape[0], multiple)):
            module, shape = build_unit(config)
            probe.append({"config": config.to_dict(), "input_shape": list(shape), "onnx": export(module, shape, f"probe/{index}.onnx")})
    calibration = None
    if calibrate:
        fixed = [u.name for u in units if u.cout_fixed]
        variants = [(1.0, model_module)] + uniform_variants(model_module, input_shape, widths, multiple, fixed)
        calibration = {"name": name, "fingerprint": _model_fingerprint(units), "configs": [u.config.to_dict() for u in units], "points": []}
        for width, variant in variants:
            analysis = analyze(variant, input_shape)
            calibration["points"].append({
                "width": width, "macs": analysis.macs, "specs": [spec.to_dict() for spec in analysis.layers],
                "onnx": export(variant, input_shape, f"models/{width:.2f}.onnx"),
            })
    manifest = {
        "schema": PLAN_SCHEMA,
        "device": descriptor.name,
        "model": name,
        "input_shape": list(input_shape),
        "channel_multiple": multiple,
        "channel_quantum": quantum,
        "grid": {"points": points, "min_ratio": min_ratio},
        "planner": f"hwcompress {__version__}",
        "date": _now(),
        "units": planned,
        "probe": probe,
        "calibration": calibration,
    }
    from hwcompress.report import write_json_atomic

    write_json_atomic(manifest, out / "manifest.json")
    return out / "manifest.json"


def load_plan(plan: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read a plan folder (or its ``manifest.json``); one-line errors for anything missing."""
    path = Path(plan)
    manifest = path / "manifest.json" if path.is_dir() else path
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"LUT plan {manifest} not found (make one with `hwcompress lut plan`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"LUT plan {manifest} is unreadable (truncated or corrupted?): {error}") from None
    if not isinstance(document, dict) or document.get("schema") != PLAN_SCHEMA:
        raise UserError(f"{manifest} is not a hwcompress LUT plan (schema {PLAN_SCHEMA!r} expected)")
    for key in ("device", "input_shape", "units"):
        if key not in document:
            raise UserError(f"LUT plan {manifest} has no field {key!r}")
    folder = manifest.parent
    for item in document["units"] + document.get("probe", []) + ((document.get("calibration") or {}).get("points") or []):
        if not (folder / item["onnx"]).is_file():
            raise UserError(f"LUT plan {manifest}: {item['onnx']} is missing; copy the whole plan folder")
    return folder, document


def record_plan(
    plan: str | os.PathLike[str],
    descriptor: Any,
    profiler: Any,
    settings: ProfileSettings,
    out_path: str | os.PathLike[str] | None,
    *,
    passes: int = 1,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    save_every_s: float = 5.0,
) -> LatencyTable:
    """Time an exported plan (:func:`export_plan`) on this device into a LUT; resumable like
    :func:`record_lut`, and needs only ONNX Runtime (no PyTorch)."""
    folder, document = load_plan(plan)
    if document["device"] not in {descriptor.name, *getattr(descriptor, "aliases", [])}:
        raise UserError(f"LUT plan {folder} was made for device {document['device']!r}, not {descriptor.name!r}")
    input_shape = tuple(int(d) for d in document["input_shape"])
    table = open_table(out_path, descriptor, profiler, settings, input_shape[0], overwrite=overwrite)
    recorder = Recorder(table, profiler, settings, out_path, progress, save_every_s)
    try:
        multiple = int(document.get("channel_multiple") or getattr(descriptor, "channel_multiple", 8))
        if document.get("channel_quantum"):
            table.provenance.update(channel_quantum=int(document["channel_quantum"]), channel_quantum_source="given")
        elif "channel_quantum_source" not in table.provenance and document.get("probe"):
            probes = [(LayerConfig.from_dict(p["config"]), PlannedUnit(folder / p["onnx"], tuple(p["input_shape"]))) for p in document["probe"]]
            detected, probe = recorder.detect_quantum_from(probes, multiple)
            table.provenance.update(channel_quantum=detected, channel_quantum_source="detected", quantum_probe=probe)
        table.invalidate()
        configs = [
            (LayerConfig.from_dict(u["config"]), PlannedUnit(folder / u["onnx"], tuple(u["input_shape"]), tuple(u.get("fused", []))))
            for u in document["units"]
        ]
        source = document.get("calibration")
        calibration = None
        if source and not any(m.get("fingerprint") == source["fingerprint"] for m in table.models):
            points = []
            for point in source["points"]:
                specs = [LayerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}) for spec in point["specs"]]
                artifact = ModelArtifact(onnx_path=folder / point["onnx"], input_shape=input_shape, name=source["name"])
                points.append({"width": point["width"], "artifact": artifact, "specs": specs, "macs": point["macs"]})
            calibration = {
                "name": source["name"], "input_shape": input_shape, "fingerprint": source["fingerprint"],
                "configs": [LayerConfig.from_dict(c) for c in source["configs"]], "points": points,
            }
        _record_with_calibration(table, recorder, profiler, settings, configs, passes, calibration)
        table.provenance["plan"] = {"model": document.get("model"), "planner": document.get("planner"), "date": document.get("date")}
        if out_path is not None:
            table.save(out_path)
    finally:
        recorder.close()
    return table


def default_lut_path(descriptor: Any, settings: ProfileSettings, batch: int = 1) -> Path:
    """Where the on-demand cost model of a local device is cached (the user data folder's ``luts/``)."""
    from hwcompress.devices import user_data_dir

    name = f"{descriptor.name}-{settings.precision}-t{settings.threads}-b{batch}.lut.json"
    return user_data_dir() / "luts" / name


def ensure_lut(
    model_module: Any,
    input_shape: tuple[int, ...],
    descriptor: Any,
    settings: ProfileSettings,
    path: str | os.PathLike[str] | None = None,
    profiler: Any | None = None,
    **options: Any,
) -> LatencyTable:
    """The cost model of a *local* device for this model: the cached table, completed where needed.

    The search calls this before it starts: the first call records (minutes), later ones only load
    (and record what a new model adds). A cache recorded with another runtime version or other
    settings, or a damaged one, is recorded afresh: it is ours to replace.

    Args:
        path: the cache file (default :func:`default_lut_path`).
        options: passed to :func:`record_lut` (``points``, ``min_ratio``, ``passes``, ``progress``...).
    """
    profiler = profiler or recording_profiler(descriptor)
    batch = int(input_shape[0])
    path = Path(path) if path is not None else default_lut_path(descriptor, settings, batch)
    if "overwrite" not in options and path.exists():
        try:
            cached = LatencyTable.load(path)
            fresh = LatencyTable(new_provenance(descriptor, profiler, settings, batch, unit_timer(profiler).timing))
            options["overwrite"] = cached.settings_key() != fresh.settings_key()
        except UserError:
            options["overwrite"] = True
    return record_lut(model_module, input_shape, descriptor, profiler, settings, path, **options)


# --------------------------------------------------------------------------------------------------
# Profiler and report


class LutProfiler:
    """The ``lut`` profiler: predicts latency from a recorded table instead of measuring.

    The registered instance has no table, and its :meth:`measure` says how to get a prediction
    (``hwcompress profile --lut FILE``). Built with a table (``LutProfiler(LatencyTable.load(f))``) it
    follows the :class:`~hwcompress.profiler.Profiler` protocol as a predictor: ``measure`` analyses the
    artifact's torch module and returns the calibrated prediction with ``runs = 0``.
    """

    name = "lut"
    description = "Predicted from a latency lookup table recorded on the device (hwcompress lut record)"

    def __init__(self, table: LatencyTable | None = None) -> None:
        self.table = table

    def available(self) -> tuple[bool, str]:
        return True, ""

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        if self.table is None:
            return {"runtime": "lut"}
        return lut_facts(self.table)

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        if self.table is None:
            raise UserError(
                "the 'lut' profiler predicts from a recorded table rather than measuring; "
                "pass --lut FILE (record one with `hwcompress lut record` on the device)"
            )
        if artifact.module is None:
            raise UserError("LUT prediction needs the PyTorch model (its layers), not only an ONNX file")
        from hwcompress.analysis import analyze

        detail = self.table.predict_detail(analyze(artifact.module, artifact.input_shape))
        return Measurement(latency=predicted_stats(detail), node_ms=None, facts=self.facts(settings), notes=calibration_notes(detail))


def lut_facts(table: LatencyTable) -> dict[str, Any]:
    """The recorded provenance as report facts."""
    p = table.provenance
    facts = {
        "lut": table.where(),
        "recorded_on": p.get("host"),
        "recorded": p.get("date"),
        "runtime": p.get("runtime"),
        "runtime_version": p.get("runtime_version"),
        "recorded_precision": p.get("precision"),
        "recorded_threads": p.get("threads"),
        "recorded_batch": p.get("batch"),
        "governor": p.get("governor"),
        "recorder": p.get("recorder"),
        "timing": p.get("timing"),
        "channel_quantum": p.get("channel_quantum"),
    }
    inner = p.get("facts") or {}
    for key in ("cpu", "gpu", "logical_cores", "machine"):
        if key in inner:
            facts[f"recorded_{key}"] = inner[key]
    return {k: v for k, v in facts.items() if v is not None}


def predicted_stats(detail: PredictionDetail) -> LatencyStats:
    """LatencyStats of a prediction (``runs = 0``: nothing was timed for it).

    ``median`` and ``mean`` are the calibrated prediction. The spread is a whole-model property
    (preemption, clock changes, the runtime's own jitter), so it is taken relative from the
    calibration model's measured statistics on the device (p90/median, p99/median, min, max, std)
    and applied to the prediction; without a calibration, the entries' robust spreads are combined
    as independent and normal quantiles give p90 and p99.
    """
    median = detail.total_ms
    measured = (detail.calibration or {}).get("measured") or {}
    base = float(measured.get("median") or 0.0)
    if base > 0 and all(isinstance(measured.get(k), (int, float)) for k in ("p90", "p99", "std", "min", "max")):
        rel = {k: float(measured[k]) / base for k in ("p90", "p99", "std", "min", "max")}
        return LatencyStats(
            median=median,
            mean=median,
            p90=median * rel["p90"],
            p99=median * rel["p99"],
            std=median * rel["std"],
            min=median * rel["min"],
            max=median * rel["max"],
            runs=0,
        )
    std = detail.std_ms
    return LatencyStats(
        median=median,
        mean=median,
        p90=median + 1.2816 * std,
        p99=median + 2.3263 * std,
        std=std,
        min=max(0.0, median - 2.3263 * std),
        max=median + 2.3263 * std,
        runs=0,
    )


def calibration_notes(detail: PredictionDetail) -> list[str]:
    model = detail.calibration
    if model is None:
        return ["uncalibrated: no whole-model measurement in this LUT shares this model's layer shapes; "
                "the prediction is the plain sum of its layers"]
    points = model.get("points") or []
    widths = ", ".join(f"{p['width']:.2f}: x{p['ratio']:.3f}" for p in points) if len(points) > 1 else ""
    return [
        f"calibrated with {model['name']} measured whole on the device ({model['measured_ms']:.3f} ms vs "
        f"{model['layer_sum_ms']:.3f} ms summed over its layers"
        + (f"; measured/sum at widths {widths}" if widths else "")
        + f"): layer sums scaled by {detail.scale:.3f}, which covers what separate layers miss "
        "(residual adds, pooling, cache misses, per-run overhead)"
    ]


def predict_report(
    loaded: Any,
    analysis: ModelAnalysis,
    descriptor: Any,
    lut_path: str | os.PathLike[str],
    settings: ProfileSettings,
    model_info: dict[str, Any],
) -> Any:
    """``hwcompress profile`` from a LUT: a :class:`~hwcompress.report.ProfileReport` with source ``lut``.

    Raises:
        UserError: unreadable or malformed LUT, another device, or other settings than requested.
    """
    from hwcompress.report import ProfileReport

    table = LatencyTable.load(lut_path)
    if not analysis.layers:
        raise UserError(
            f"predicting from LUT {lut_path} needs the model's layers; an .onnx model has none here, "
            "pass the PyTorch model (torchvision name, pkg.module:factory or checkpoint)"
        )
    local_facts = None
    local, _ = descriptor.is_local()
    if local:
        from hwcompress import plugins

        profiler = plugins.get_profilers().get(table.provenance.get("profiler"))
        if profiler is not None and profiler.available()[0]:
            try:
                local_facts = profiler.facts(settings)
            except Exception:  # facts are best effort; the check is skipped, not the prediction
                local_facts = None
    batch = analysis.input_shape[0] if analysis.input_shape else None
    notes = table.check_request(descriptor, settings, batch, local_facts)
    detail = table.predict_detail(analysis)
    coverage = detail.coverage()
    notes = calibration_notes(detail) + notes
    notes.append(
        f"LUT coverage: {coverage[EXACT]} exact, {coverage[INTERPOLATED]} interpolated"
        f"{' (' + str(coverage['extrapolated']) + ' outside the grid)' if coverage['extrapolated'] else ''}, "
        f"{coverage[MISSING]} missing, {coverage[FUSED]} fused into the layer before"
        + (f"; missing: {', '.join(coverage['missing_layers'][:5])}" if coverage["missing_layers"] else "")
    )
    notes.append(
        "predicted latency: median = calibrated sum of layers; spread relative to the calibration model's measured "
        "spread on the device; runs = 0 (nothing timed here)"
    )
    return ProfileReport(
        device=descriptor.to_dict(),
        model=model_info,
        latency=predicted_stats(detail),
        source="lut",
        analysis=analysis,
        layer_ms={name: round(ms, 6) for name, ms in detail.per_layer_ms.items()},
        facts=lut_facts(table),
        settings=settings.to_dict(),
        notes=notes,
        coverage=coverage,
        profiler=LutProfiler.name,
    )
