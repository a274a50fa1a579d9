"""The profile report and its stable JSON form (schema ``hwcompress.profile/1``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hwcompress.measure.contract import LatencyStats
from hwcompress.model.analysis import OTHER, ModelAnalysis

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
    #: How the per-layer rows relate to the whole: the node times' sum as profiled and the profiler's own
    #: cost per node taken out of them (``node_sum_ms``, ``profiler_overhead_ms_per_node``); None without rows.
    per_layer: dict[str, Any] | None = None
    #: What other processes took of this machine while the model was measured here
    #: (:class:`hwcompress.measure.competition.Competition`); None when measured elsewhere or predicted.
    competition: dict[str, Any] | None = None

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
        if OTHER in self.layer_ms and all(spec.name != OTHER for spec in self.analysis.layers):
            # Time no layer claims (layout reorders, pooling): a row of its own, so the rows add up.
            layers.append({"name": OTHER, "op": "-", "macs": 0, "flops": 0, "params": 0, "latency_ms": self.layer_ms[OTHER]})
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
        if self.per_layer is not None:
            document["per_layer"] = self.per_layer
        if self.competition is not None:
            document["competition"] = self.competition
        return document
