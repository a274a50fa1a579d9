"""The LUT file: a device's recorded entries and calibrations with their provenance.

Loading validates every field (one-line errors naming the file and the problem); saving is atomic;
two tables recorded on the same device with the same runtime and settings merge. Predicting from a
table is :mod:`hwcompress.lut.predict`'s job; :meth:`LatencyTable.predict` hands over to it.

The file format (JSON, ``"schema": "hwcompress.lut/1"``)::

    {"schema": "hwcompress.lut/1",
     "provenance": {"device", "profiler", "runtime", "runtime_version", "precision", "batch", "threads",
                    "governor", "clocks", "date", "updated", "recorder", "host", "timing",
                    "channel_multiple", "channel_quantum", "session_overhead_ms", "facts", ...},
     "entries": [{"op": "Conv2d", "batch": 1, "in_hw": [56, 56], "cin": 64, "cout": 64,
                  "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "groups": 1,
                  "fused": ["BatchNorm2d", "ReLU"], "median": 1.21, "p90": 1.25, "std": 0.02, "runs": 50}, ...],
                 (an entry in another precision than the table's adds "precision": "int8"; such a table
                  is "hwcompress.lut/2", so that readers without precisions refuse it; /1 files read as before)
     "models": [{"name": "resnet18", "input_shape": [1, 3, 224, 224], "families": [...],
                 "layer_sum_ms": 20.1, "measured_ms": 23.2, "scale": 1.154, "offset_ms": 3.1,
                 "points": [{"width": 1.0, "layer_sum_ms": 20.1, "measured_ms": 23.2, "ratio": 1.154,
                             "specs": [{"name": "conv1", "op": "Conv2d", ...}, ...]}, ...]}]}
                 (a point's layers, "specs", since 2026-11-28: predictions sum the point against the table
                  as it stands, TablePredictor.current_calibration; written one entry and one row per line)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from hwcompress.errors import UserError
from hwcompress.files import write_json
from hwcompress.lut.keys import (
    CONV_OPS,
    PRECISIONS,
    SCHEMA,
    SCHEMA_PRECISIONS,
    SCHEMA_PREFIX,
    TIMING_KERNELS,
    TIMING_SESSION,
    TRANSITIONS,
    LayerConfig,
    LutEntry,
)
from hwcompress.lut.predict import Prediction, PredictionDetail, TablePredictor
from hwcompress.measure.contract import ProfileSettings
from hwcompress.model.analysis import LayerSpec, ModelAnalysis

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
#: How many spatial sizes an entry's ``in_hw`` (and a convolution's kernel, stride and padding) holds.
_SPATIAL_DIMS = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3, "BatchNorm2d": 2, "BatchNorm3d": 3}
_MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "families": list,
    "layer_sum_ms": (int, float),
    "measured_ms": (int, float),
    "scale": (int, float),
}




def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


#: Provenance that measures the device rather than the recording's settings (the node profiler's own
#: cost, the layout conversions' rates): a merge adopts it from the other table where this one lacks it
#: (one recorded before the probe existed), and keeps its own where both have it.
MEASURED_PROVENANCE = ("kernel_overhead_ms", "layout_conversions", "non_layer_costs")


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
            self.add(entry)
        self.models: list[dict[str, Any]] = [dict(m) for m in models]
        self.path = Path(path) if path is not None else None
        self._predictor: TablePredictor | None = None

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

    @property
    def precision(self) -> str:
        """The base precision: what a key without a precision means."""
        return str(self.provenance.get("precision", "fp32"))

    @property
    def precisions(self) -> list[str]:
        """Every precision the table holds entries in, the base first."""
        extra = sorted({e.config.precision for e in self.entries.values() if e.config.precision} - {self.precision})
        return [self.precision, *extra]

    @property
    def schema(self) -> str:
        """``hwcompress.lut/2`` when the table holds more than its base precision, else ``/1``."""
        several = len(self.precisions) > 1 or any(m.get("precision", self.precision) != self.precision for m in self.models)
        return SCHEMA_PRECISIONS if several else SCHEMA

    def normalised(self, config: LayerConfig) -> LayerConfig:
        """``config`` with the table's base precision written as None (how the table keys it)."""
        return config.with_precision(config.precision, self.precision)

    def entry(self, config: LayerConfig) -> LutEntry | None:
        """The recorded entry of ``config`` (at its precision), or None."""
        return self.entries.get(self.normalised(config).key())

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, config: LayerConfig) -> bool:
        return self.normalised(config).key() in self.entries

    def add(self, entry: LutEntry) -> None:
        entry.config = self.normalised(entry.config)
        self.entries[entry.config.key()] = entry
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the interpolation index (after entries or the channel quantum changed)."""
        self._predictor = None

    def where(self) -> str:
        return str(self.path) if self.path else "(in memory)"

    # ---- files -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        entries = sorted(self.entries.values(), key=lambda e: (e.config.family(), e.config.cin, e.config.cout))
        return {
            "schema": self.schema,
            "provenance": self.provenance,
            "entries": [entry.to_dict() for entry in entries],
            "models": self.models,
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the table atomically (temporary file, then rename: an interrupted write leaves the old one)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path to save the LUT to")
        self.provenance["updated"] = _now()
        write_json(self.to_dict(), target, rows=True)
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
            raise UserError(f"{where} is not a hwcompress LUT (a JSON object with \"schema\": \"{SCHEMA}\" or "
                            f"\"{SCHEMA_PRECISIONS}\" expected)")
        schema = document.get("schema")
        if schema not in (SCHEMA, SCHEMA_PRECISIONS):
            if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
                raise UserError(f"{where} has schema {schema!r}, this hwcompress reads {SCHEMA!r} and {SCHEMA_PRECISIONS!r}; "
                                "re-record it or upgrade hwcompress")
            raise UserError(f"{where} is not a hwcompress LUT (schema {schema!r}, expected {SCHEMA!r} or {SCHEMA_PRECISIONS!r})")
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
            _check_shape(raw, label)
            if raw.get("precision", provenance["precision"]) not in PRECISIONS:
                raise UserError(f"{label} has precision {raw.get('precision')!r}; expected one of {', '.join(PRECISIONS)}")
            try:
                config = LayerConfig.from_dict(raw, base=provenance["precision"])
            except (TypeError, ValueError) as error:
                raise UserError(f"{label} has a malformed shape field: {error}") from None
            fused = raw.get("fused", [])
            if not isinstance(fused, list) or not all(isinstance(f, str) for f in fused):
                raise UserError(f"{label}: 'fused' must be a list of op names")
            passes = raw.get("passes", 1)
            if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
                raise UserError(f"{label}: 'passes' must be a positive integer")
            kernels = raw.get("kernels")
            if kernels is not None and (isinstance(kernels, bool) or not isinstance(kernels, int) or kernels < 1):
                raise UserError(f"{label}: 'kernels' must be a positive integer")
            entries.append(LutEntry(config, float(raw["median"]), float(raw["p90"]), float(raw["std"]), int(raw["runs"]),
                                    tuple(fused), passes, kernels))
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
                f"record one on the {descriptor.name} (hwcompress lut record {descriptor.option} ...)"
            )
        if str(settings.precision) != p["precision"]:
            raise UserError(
                f"{where} was recorded at precision {p['precision']}, the profile asks for {settings.precision}; "
                f"pass --precision {p['precision']} or record an {settings.precision} LUT"
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
                    f"re-record it (hwcompress lut record {descriptor.option} ...)"
                )
            block = int(local_facts.get("channel_block") or 0)
            if runtime == p.get("runtime") and block > 1 and block != self.quantum:
                notes.append(
                    f"{where} has channel quantum {self.quantum} ({p.get('channel_quantum_source', 'given')}), but {runtime} "
                    f"here works in blocks of {block} channels: its predictions between blocks are off; re-record it "
                    f"(hwcompress lut record {descriptor.option} ... --overwrite)"
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
        if bool(self.provenance.get("kernel_counts")) != bool(other.provenance.get("kernel_counts")):
            older = self if not self.provenance.get("kernel_counts") else other
            raise UserError(
                f"cannot merge LUT {other.where()} into {self.where()}: one prices its entries net of the node "
                f"profiler's cost per kernel and {older.where()} does not (recorded before 2026-11-28); record "
                f"{older.where()} again with this hwcompress, into a new file"
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
        for key in MEASURED_PROVENANCE:  # the device's own measurements: adopted where this table lacks them
            if key == "kernel_overhead_ms" and self.provenance.get("kernel_counts") and self.models and key not in self.provenance:
                # Its calibrations were summed with its entries as timed: taking the cost off them now
                # would price them two ways.
                continue
            if key in other.provenance and key not in self.provenance:
                self.provenance[key] = other.provenance[key]
            elif key in other.provenance and other.provenance[key] != self.provenance[key]:
                warnings.warn(f"LUT {other.where()} measured {key} = {other.provenance[key]!r}, {self.where()} "
                              f"{self.provenance[key]!r}; keeping {self.where()}'s", stacklevel=2)
        sources = list(self.provenance.get("merged_from", [])) + [other.where()]
        self.provenance["merged_from"] = sources
        self.invalidate()
        return self

    # ---- prediction (hwcompress.lut.predict) ----------------------------------------------------

    @property
    def predictor(self) -> TablePredictor:
        """The interpolating predictor over this table's entries (rebuilt after :meth:`invalidate`)."""
        if self._predictor is None:
            self._predictor = TablePredictor(self)
        return self._predictor

    def lookup(self, config: LayerConfig) -> tuple[float, float, str, bool]:
        """``(ms, std_ms, status, extrapolated)`` of one configuration (uncalibrated)."""
        return self.predictor.lookup(config)

    def predict_layer(self, spec: LayerSpec) -> tuple[float, str]:
        """Uncalibrated latency (ms) of one layer and how it was found: exact | interpolated | missing."""
        return self.predictor.predict_layer(spec)

    def predict_detail(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale",
                       transitions: bool = True) -> PredictionDetail:
        """Predict a model from its analysed layers (see :meth:`TablePredictor.predict_detail`)."""
        return self.predictor.predict_detail(layers, calibration, transitions=transitions)

    def predict(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale") -> Prediction:
        """``(total_ms, per_layer_ms, coverage)`` for a model's analysed layers (calibrated)."""
        return self.predictor.predict_detail(layers, calibration).as_tuple()

    # ---- summary -----------------------------------------------------------------------------------

    def calibrated_models(self) -> int:
        """How many models the calibration records are of (one model's fp32, int8 and transitions records
        count once)."""
        return len({_model_id(model)[:3] for model in self.models})

    def summary(self) -> dict[str, Any]:
        """What ``hwcompress lut show`` prints."""
        ops: dict[str, int] = {}
        for entry in self.entries.values():
            label = f"{entry.config.op} (depthwise)" if entry.config.depthwise else entry.config.op
            ops[label] = ops.get(label, 0) + 1
        return {
            "file": self.where(),
            "schema": self.schema,
            "provenance": self.provenance,
            # what the predictor takes off per kernel (0 where it takes it off no entry)
            "kernel_overhead_applied_ms": self.predictor.kernel_overhead_ms if self.predictor.kernel_overhead_applied else 0.0,
            "entries_priced_per_kernel": sum(self.predictor.per_kernel(e) for e in self.entries.values()),
            "off_path_priced_net": any(self.predictor.off_path_netted(e) for e in self.entries.values()),
            "entries": len(self.entries),
            "precisions": self.precisions,
            # entries per precision, the base first (what `lut show` prints beside the base precision)
            "precision_entries": {p: sum(1 for e in self.entries.values() if (e.config.precision or self.precision) == p)
                                  for p in self.precisions},
            # layer shapes, whatever precision their entries were timed in (an int8 copy is the same shape)
            "families": len({e.config.with_precision(None).family() for e in self.entries.values()}),
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
                    **({"precision": m["precision"]} if m.get("precision") else {}),
                    # a transitions record: what a change of precision costs, per element crossing it
                    **({"ms_per_element": self.predictor.current_transition_rate(m)}
                       if m.get("precision") == TRANSITIONS else {}),
                    **({"competition": m["competition"]} if m.get("competition") else {}),
                    **({"checks": list(m["checks"])} if m.get("checks") else {}),
                }
                # as predictions read them: summed against the entries as they stand
                for m in (self.predictor.current_calibration(m) for m in self.models)
            ],
        }



def _check_field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> None:
    if name not in data:
        raise UserError(f"{where} has no field {name!r}")
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise UserError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")


def _check_shape(entry: dict[str, Any], where: str) -> None:
    """The shape fields an entry's key is built from: lists of whole numbers, as many as its op has spatial
    dimensions (a mistyped one, ``"kernel": "3"``, would key an entry no layer ever matches)."""
    dims = _SPATIAL_DIMS.get(entry["op"])
    for name in ("in_hw", "kernel", "stride", "padding"):
        value = entry.get(name, [])  # in_hw is required (_ENTRY_FIELDS); the others are absent where they do not apply
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise UserError(f"{where}: field {name!r} must be a list of whole numbers, got {value!r}")
        if any(v < (0 if name == "padding" else 1) for v in value):
            raise UserError(f"{where}: field {name!r} has a size below {0 if name == 'padding' else 1} ({value!r})")
        if entry["op"] not in CONV_OPS and name != "in_hw" and value:
            raise UserError(f"{where}: field {name!r} applies to convolutions only, a {entry['op']} entry has {value!r}")
        # A convolution's stride and padding may be left empty (defaults; padding="same"), not its kernel.
        lengths = (dims,) if name in ("in_hw", "kernel") else (0, dims)
        if dims is not None and (entry["op"] in CONV_OPS or name == "in_hw") and len(value) not in lengths:
            raise UserError(f"{where}: field {name!r} of a {entry['op']} must hold {dims} sizes, got {value!r}")


def _model_id(model: dict[str, Any]) -> tuple[Any, ...]:
    # The precision too: one model's fp32, int8 and transitions records are three calibrations, not one.
    return (model.get("name"), tuple(model.get("input_shape") or ()), model.get("fingerprint"), model.get("precision"))


