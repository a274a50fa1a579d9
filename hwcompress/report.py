"""The profile report and its stable JSON form (schema ``hwcompress.profile/1``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwcompress.analysis import ModelAnalysis
from hwcompress.profiler import LatencyStats

PROFILE_SCHEMA = "hwcompress.profile/1"


@dataclass
class ProfileReport:
    """Everything ``hwcompress profile`` knows about one model on one device."""

    device: dict[str, Any]
    model: dict[str, Any]
    latency: LatencyStats | None
    source: str  # "measured" | "lut"
    analysis: ModelAnalysis
    layer_ms: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, Any] | None = None
    profiler: str = ""

    def to_dict(self) -> dict[str, Any]:
        latency = None
        if self.latency is not None:
            latency = {**self.latency.to_dict(), "source": self.source}
        layers = []
        for spec in self.analysis.layers:
            row = spec.to_dict()
            row["flops"] = 2 * spec.macs
            row["latency_ms"] = self.layer_ms.get(spec.name)
            layers.append(row)
        document = {
            "schema": PROFILE_SCHEMA,
            "device": {**self.device, "facts": self.facts},
            "model": self.model,
            "profiler": self.profiler,
            "settings": self.settings,
            "latency_ms": latency,
            "macs": self.analysis.macs,
            "flops": self.analysis.flops,
            "params": self.analysis.params,
            "counter": self.analysis.counter,
            "layers": layers,
            "notes": list(self.notes),
        }
        if self.coverage is not None:
            document["coverage"] = self.coverage
        return document


def write_json_atomic(document: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON to a temporary name beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, default=_default)
