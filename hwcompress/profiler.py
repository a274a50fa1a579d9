"""The profiler contract and the latency statistics every profiler reports.

A profiler times a model on one kind of hardware. The core does everything that is the same for all
of them (loading the model, counting MACs and parameters, exporting ONNX, assembling the report); a
profiler only has to say whether it can run here and time the exported model. That keeps third-party
profilers small: see docs/plugins.md for a complete one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass
class ProfileSettings:
    """How to measure. Defaults come from the device descriptor; flags override them.

    Attributes:
        runs: timed iterations.
        warmup: untimed iterations before timing (caches, allocators, JIT, clocks).
        threads: intra-op threads (recorded in the report; 1 is steadiest on small shared machines).
        precision: ``fp32`` | ``fp16`` | ``int8`` where the runtime supports it.
        per_layer: also collect per-layer (per-node) times where the runtime can.
        options: runtime-specific extras (e.g. ``{"cuda_graph": True}``).
    """

    runs: int = 100
    warmup: int = 10
    threads: int = 1
    precision: str = "fp32"
    per_layer: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatencyStats:
    """Summary of repeated timings, all in milliseconds."""

    median: float
    mean: float
    p90: float
    p99: float
    std: float
    min: float
    max: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        """Summarise raw per-iteration times (ms). Percentiles use linear interpolation."""
        if not samples_ms:
            raise ValueError("no timing samples")
        ordered = sorted(float(s) for s in samples_ms)
        return cls(
            median=statistics.median(ordered),
            mean=statistics.fmean(ordered),
            p90=_percentile(ordered, 90),
            p99=_percentile(ordered, 99),
            std=statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
            min=ordered[0],
            max=ordered[-1],
            runs=len(ordered),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ModelArtifact:
    """A model in the forms a profiler may want: the ONNX file always, the torch module when known."""

    onnx_path: Path
    input_shape: tuple[int, ...]
    module: Any | None = None  # torch.nn.Module, for profilers that run PyTorch directly
    name: str = "model"


@dataclass
class Measurement:
    """What a profiler returns: whole-model latency, optional per-node times, and run facts.

    ``node_ms`` maps ONNX node names (or the runtime's layer names) to median milliseconds; the core
    maps them back to PyTorch layers through the exporter's node naming. ``notes`` carries warnings a
    user should see (throttling, fallbacks).
    """

    latency: LatencyStats
    node_ms: dict[str, float] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Profiler(Protocol):
    """What a profiler plugin provides (structural: no base class to inherit).

    Attributes:
        name: registry name, used by device descriptors (``profiler = "onnxruntime"``).
        description: one line for ``hwcompress devices``.
    """

    name: str
    description: str

    def available(self) -> tuple[bool, str]:
        """Cheap check (no heavy import at module top): ``(True, "")`` or ``(False, "why; the fix")``."""
        ...

    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        """Facts about the hardware and runtime (CPU model, runtime versions, GPU clocks...)."""
        ...

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """Time the model: warm up, then ``settings.runs`` timed iterations."""
        ...
