"""The profiler contract: what a profiler receives, what it returns, and the statistics it reports.

A profiler times a model on one kind of hardware. The core does everything that is the same for all
of them (loading the model, counting MACs and parameters, exporting ONNX, mapping per-node times to
layers, assembling the report); a profiler says whether it can run here and times what it is given.
That keeps third-party profilers small: docs/plugins.md has a complete one, and this module is the
whole contract (the tests check the built-in profilers against it).

The rules, in one place:

* **Input.** ``measure(artifact, settings)`` gets a :class:`ModelArtifact`: the exported ONNX file
  always, and the PyTorch module whenever the core has one (every profile, compare, LUT recording and
  search measurement passes it), so a profiler that runs PyTorch or compiles the module works
  everywhere an ONNX-based one does. The module belongs to the caller: copy it before moving or
  casting it.
* **Output.** A :class:`Measurement`: :class:`LatencyStats` of the timed runs (milliseconds), optional
  ``node_ms`` (median per node; keyed by ONNX node name, or by ``/module.path/OpType`` for profilers
  that time PyTorch modules: the core maps a key to the layer named by its second-to-last ``/`` part),
  ``facts`` (plain JSON values: strings, numbers, booleans, lists, dicts; anything else is converted
  to a string with a note) and ``notes`` for the user (throttling, fallbacks, runtime-specific caveats).
* **Refusing.** A request the profiler cannot serve (a precision it lacks, a model it cannot load)
  raises :class:`hwcompress.errors.UserError` with one line saying what to do: the user sees it with
  exit code 2, prefixed by the profiler's and the plugin's names. Any other exception is reported as a
  crash of that plugin (exit code 1, the traceback with ``--debug``).
* **Optional** ``measure_unit(artifact, settings) -> Measurement``: the in-network time of a tiny
  one-layer model (kernel times without the layout conversions at its edges), which LUT recording
  prefers when a profiler offers it.
* **Optional** ``layout_conversions(settings) -> dict | None``: what converting activations between the
  runtime's blocked layout and plain NCHW costs, ``{"to_plain": {"intercept_ms", "ms_per_element"},
  "to_blocked": {...}}`` (ONNX Runtime's ReorderOutput/ReorderInput), which ``lut record --off-path``
  stores and predictions add around layers off the blocked path; None where there is no such layout.
* **Optional** ``non_layer_costs(settings) -> dict | None``: what the work between layers costs, per kind
  (``scale``, ``add``, ``global_pool``, ``pool``) ``{"intercept_ms", "per_channel_ms", "per_element_ms",
  "points"}``, which ``lut record --off-path`` stores and predictions add outside the calibration's
  ratio (:mod:`hwcompress.lut.nonlayer`; ONNX Runtime's probe is
  :func:`hwcompress.lut.nonlayer.non_layer_costs`).
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
    """A model in the forms a profiler may want: the ONNX file, and the torch module whenever the core
    has one (``onnx_path`` is None only for predictors, which read the module's layers)."""

    onnx_path: Path | None
    input_shape: tuple[int, ...]
    module: Any | None = None  # torch.nn.Module, for profilers that run PyTorch directly
    name: str = "model"


@dataclass
class Measurement:
    """What a profiler returns: whole-model latency, optional per-node times, and run facts.

    Attributes:
        latency: statistics of the timed runs, milliseconds.
        node_ms: median milliseconds per ONNX node name (or ``/module.path/OpType``); the core maps
            them back to PyTorch layers (see the module docstring).
        facts: plain JSON values describing the hardware and runtime at measurement time.
        notes: warnings a user should see (throttling, fallbacks, what per-node times include).
        source: ``measured``, or ``lut`` for a prediction (:class:`hwcompress.lut.profiler.LutPredictor`).
        layer_ms: per PyTorch layer, for predictors that work on layers rather than nodes.
        coverage: for a prediction, what the table knew (exact, interpolated, missing layers).
    """

    latency: LatencyStats
    node_ms: dict[str, float] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = "measured"
    layer_ms: dict[str, float] | None = None
    coverage: dict[str, Any] | None = None


@runtime_checkable
class Profiler(Protocol):
    """What a profiler plugin provides (structural: no base class to inherit).

    Register instances with the ``register_profilers`` hook (:mod:`hwcompress.plugins.hookspecs`).
    ``measure_unit`` is optional (see the module docstring).

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
        """Time the model: ``settings.warmup`` untimed runs, then ``settings.runs`` timed ones; per-node
        times too when ``settings.per_layer`` and the runtime can."""
        ...
