"""Predicting latency from a LUT: interpolate each layer, sum, calibrate, and say what was found.

Per layer, a configuration is ``exact`` (recorded), ``interpolated`` (bilinear over the recorded
(cin, cout) grid, or scaled from the nearest grid point outside it, counted as ``extrapolated`` too),
``missing`` (no configuration of that shape recorded; estimated from the nearest configuration of the
same op scaled by MACs, else 0), or ``fused`` (a BatchNorm folded into the convolution before it).
Channel counts are rounded up to the table's channel quantum first: 56 channels run as 64 on
16-channel blocks. The layer sum is then multiplied by the calibration recorded with the table.

Precision: a row may ask for another precision than the table's (an int8 layer of a mixed-precision
student, :func:`hwcompress.lut.keys.at_precision`); it is looked up among the entries of that
precision. Each precision's layers are calibrated by that precision's whole-model measurement (an int8
model pays residual adds and Q/DQ at its edges that fp32 fuses away), at the ratio that precision's
calibration gives a model of this width (the ratio is read at the layer sum of the whole model priced
in that precision, so a mixed student's int8 half is not taken for a narrow model). A model in several
precisions also pays at each change of precision between consecutive layers: a QuantizeLinear or a
DequantizeLinear and a layout change of the tensor that crosses it. That costs per element what the
table's ``transitions`` record measured on a mixed model (:func:`transition_elements`); without one,
nothing is added.

:class:`hwcompress.lut.profiler.LutPredictor` wraps a table in the profiler contract (``measure`` returns a prediction with
``runs = 0``), which is what :func:`hwcompress.measure.resolve.resolve_timing` hands out for a device
that is not this machine.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from hwcompress.lut.checks import calibration_checks, calibration_ratio, ratio_digits
from hwcompress.lut.conversions import layout_conversions
from hwcompress.lut.keys import (
    CONV_OPS,
    EXACT,
    FUSED,
    INTERPOLATED,
    MISSING,
    NORM_OPS,
    TIMING_KERNELS,
    TIMING_SESSION,
    TRANSITIONS,
    LayerConfig,
    LutEntry,
    _ceil_to,
    spec_from_record,
)
from hwcompress.lut.nonlayer import priced_work, valid_non_layer_rates
from hwcompress.model.analysis import OTHER, LayerSpec, ModelAnalysis


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
        precision_ms: calibrated milliseconds per precision, for a model with layers in several.
        between_blocks: convolutions whose channels fall between the table's channel blocks
            (:func:`between_blocks`): priced as the next block, which the runtime may not give them.
        as_timed_ms, ratio_sum_ms: see the fields (what a calibration record stores of its points).
        layout_conversion_ms: what the layout conversions around layers off the blocked path add, net of
            those they remove (negative where squeeze-excitation blocks leave the path:
            :mod:`hwcompress.lut.conversions`; included in ``total_ms`` and ``per_layer_ms``).
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
    precision_ms: dict[str, float] = field(default_factory=dict)
    between_blocks: list[str] = field(default_factory=list)
    layout_conversion_ms: float = 0.0
    #: Of ``layer_sum_ms``, the layers priced as timed, outside the calibration's scale (off-path entries
    #: timed warm), and the sum the calibration's ratio is read at (:meth:`TablePredictor.predict_detail`).
    as_timed_ms: float = 0.0
    ratio_sum_ms: float = 0.0
    #: What the work between layers costs (:meth:`TablePredictor.non_layer_ms`), included in
    #: ``offset_ms`` and ``total_ms``; 0 where the calibration's ratio carries it.
    non_layer_ms: float = 0.0

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
            "between_blocks": len(self.between_blocks),
            "between_blocks_layers": list(self.between_blocks),
            "layout_conversion_ms": round(self.layout_conversion_ms, 6),
            "non_layer_ms": round(self.non_layer_ms, 6),
            "calibration_scale": round(self.scale, 4),
            "calibration_model": self.calibration.get("name") if self.calibration else None,
        }

    def as_tuple(self) -> Prediction:
        return Prediction(self.total_ms, dict(self.per_layer_ms), self.coverage())




#: An entry priced net of the node profiler's cost keeps at least this share of its timing: small
#: kernels run 2 us under the profiler at 96 px, of which its cost is 1.4-1.6 us.
KERNEL_FLOOR = 0.25
#: How :meth:`TablePredictor._netting` takes the node profiler's cost off an entry.
OFF_PATH_ONCE, PER_KERNEL = "off-path, once", "per kernel"


class TablePredictor:
    """Interpolating predictions over one :class:`~hwcompress.lut.table.LatencyTable`'s entries.

    Built once per table state (the table drops it when its entries or quantum change) and memoising
    lookups: the search asks for the same configurations thousands of times.
    """

    #: Switches of :func:`hwcompress.lut.conversions.layout_conversions` (no conversion charged around
    #: grouped convolutions; squeeze-excitation paths credited instead of charged); ``bench/conversion_rules.py``
    #: turns them off on its table's predictor to score the rules they replaced.
    spare_grouped_conversions = True
    squeeze_credit = True
    #: Read the calibration's ratio with the layers priced as timed counted at their blocked price (the
    #: model's width); off, they are left out of the sum it is read at (the rule before 2026-11-28).
    ratio_at_width = True
    #: Take the node profiler's cost off what is priced as timed (off-path entries, conversion
    #: intercepts); off, the rule before 2026-11-28 (``bench/conversion_rules.py --steps``).
    net_off_path = True
    #: Price the work between layers (:mod:`hwcompress.lut.nonlayer`) from the table's
    #: ``non_layer_costs`` and take it out of the calibration's ratio; off, the ratio carries it (the rule
    #: before 2026-11-29).
    price_non_layer = True

    def __init__(self, table: Any) -> None:
        self.table = table
        self._index: dict[str, dict[tuple[int, int], tuple[float, float]]] | None = None
        self._cache: dict[str, tuple[float, float, str, bool]] = {}
        self._configs: dict[tuple[int, str | None], tuple[LayerSpec, LayerConfig | None, str | None]] = {}
        self._looked: dict[int, tuple[LayerSpec, tuple[float, float, str, bool]]] = {}
        layout = table.provenance.get("facts") or {}
        #: The runtime's blocked-path rule, ``(channel_block, channel_alignment)`` from the table's facts
        #: (the alignment None where the runtime reported no rule).
        self.layout: tuple[int, Any] = (int(layout.get("channel_block") or table.quantum), layout.get("channel_alignment"))
        #: Off-path entries timed without the cache flush (tables recorded since 2026-11-26,
        #: :data:`hwcompress.lut.recorder.OFF_PATH_CACHE_FLUSH_MB`): what such a layer costs inside the
        #: network, so the calibration's scale, fitted on blocked-path models whose flushed layers it
        #: corrects, is not applied to them.
        flush = table.provenance.get("cache_flush_mb")
        off_flush = table.provenance.get("off_path_cache_flush_mb")
        self._warm_off_path = off_flush is not None and float(off_flush) == 0.0 and bool(flush)
        #: What leaving and re-entering the blocked layout costs around an off-path layer
        #: (``lut record --off-path``: the profiler's ``layout_conversions``), or None.
        self._conversions = table.provenance.get("layout_conversions") if self._warm_off_path else None
        #: What the node profiler adds to every kernel it times (``kernel_overhead_ms``, measured on the
        #: whole model at recording, :func:`hwcompress.lut.recorder.kernel_overhead`): a network run whole
        #: does not pay it. It comes off each kernel of an entry that counts them (``LutEntry.kernels``:
        #: a hardswish unit runs three, conv, HardSigmoid and Mul), off what is priced as timed (off-path
        #: entries, once each, and the layout conversions), and a table's calibration is summed with it
        #: off. Left on, it is a fixed cost per entry that a narrower model does not shed: the
        #: calibration's ratio then reads the layer sum as a width it is not (docs/benchmarks.md).
        overhead = table.provenance.get("kernel_overhead_ms") if table.timing == TIMING_KERNELS else None
        self.kernel_overhead_ms = float(overhead) if isinstance(overhead, (int, float)) and math.isfinite(overhead) and overhead > 0 else 0.0
        self._blocked_price: dict[str, float] = {}
        #: Calibration records as predictions read them, and transition rates, by record (summed against
        #: the table as it stands: :meth:`current_calibration`, :meth:`current_transition_rate`).
        self._current: dict[tuple[int, bool], tuple[dict[str, Any], dict[str, Any]]] = {}
        #: What the work between layers costs (``lut record --off-path``: the profiler's
        #: ``non_layer_costs``, :func:`hwcompress.lut.nonlayer.non_layer_costs`), or None.
        rates = table.provenance.get("non_layer_costs")
        self._non_layer = rates if valid_non_layer_rates(rates) else None
        self._rates: dict[int, tuple[dict[str, Any], float]] = {}

    def _config_of(self, spec: LayerSpec, precision: str | None = "") -> tuple[LayerConfig | None, str | None]:
        """``spec``'s LUT configuration (at ``precision`` unless "") and its family, memoised by row
        object: the search's cost model hands the same row objects over and over, and building keys
        was most of a prediction's time (a row must not change once predicted)."""
        key = (id(spec), precision)
        hit = self._configs.get(key)
        if hit is not None and hit[0] is spec:
            return hit[1], hit[2]
        config = LayerConfig.from_spec(spec)
        if config is not None and precision != "":
            config = config.with_precision(precision)
        if len(self._configs) > 50_000:  # rows built afresh by other callers must not pile up
            self._configs.clear()
        self._configs[key] = (spec, config, config.family() if config is not None else None)
        return config, self._configs[key][2]

    def _lookup_of(self, spec: LayerSpec) -> tuple[float, float, str, bool]:
        """:meth:`lookup` of ``spec``'s own configuration (it must have one), memoised by row object as
        :meth:`_config_of` is."""
        hit = self._looked.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        if len(self._looked) > 50_000:
            self._looked.clear()
        result = self.lookup(self._config_of(spec)[0])
        self._looked[id(spec)] = (spec, result)
        return result


    def _entry_ms(self, entry: LutEntry) -> float:
        """The in-network time of an entry (session timings lose the fixed per-call overhead)."""
        if self.table.timing == TIMING_SESSION:
            overhead = float(self.table.provenance.get("session_overhead_ms", 0.0) or 0.0)
            # Never below a tenth of the timing: the overhead estimate is itself a measurement.
            return max(entry.median - overhead, 0.1 * entry.median)
        netted = self._netting(entry)
        if netted is None:
            return entry.median
        _, times, floor = netted
        return max(entry.median - times * self.kernel_overhead_ms, floor * entry.median)

    def _netting(self, entry: LutEntry) -> tuple[str, int, float] | None:
        """How the node profiler's cost comes off ``entry`` (:data:`OFF_PATH_ONCE` or :data:`PER_KERNEL`),
        how often, and the share of its timing it keeps at least; None where it keeps the cost.

        * None for an entry in another precision than the table's: that precision's calibration prices
          it (a mixed student's int8 rows), not as timed.
        * Once, at least half kept, for an off-path entry timed warm (priced as timed), whatever its
          kernel count: taken off every kernel there, mobilenet_v3_small's torch-pruned variants without
          round_to came out 5-8% fast in all six runs scored (and not at all with :attr:`net_off_path`
          off).
        * Once per kernel, a quarter kept (:data:`KERNEL_FLOOR`), for an entry that counts its kernels in
          a table that prices per kernel (``kernel_counts``, recorded since 2026-11-28).
        """
        if not self.kernel_overhead_ms or entry.config.precision is not None:
            return None
        if self._warm_off_path and self.off_path(entry.config):
            return (OFF_PATH_ONCE, 1, 0.5) if self.net_off_path else None
        if entry.kernels and self.table.provenance.get("kernel_counts"):
            return PER_KERNEL, entry.kernels, KERNEL_FLOOR
        return None

    def per_kernel(self, entry: LutEntry) -> bool:
        """Whether :meth:`_entry_ms` takes the node profiler's cost off ``entry`` once per kernel."""
        netted = self._netting(entry)
        return netted is not None and netted[0] == PER_KERNEL

    def off_path_netted(self, entry: LutEntry) -> bool:
        """Whether :meth:`_entry_ms` takes the node profiler's cost off ``entry`` once, as an off-path entry."""
        netted = self._netting(entry)
        return netted is not None and netted[0] == OFF_PATH_ONCE

    @property
    def kernel_overhead_applied(self) -> bool:
        """Whether any entry is priced net of the node profiler's cost (:meth:`_entry_ms`)."""
        return any(self._netting(e) is not None for e in self.table.entries.values())

    def _families(self) -> dict[str, dict[tuple[int, int], tuple[float, float]]]:
        """Per family, ``(x(cin), x(cout)) -> (ms, std)`` on channel counts rounded up to the quantum
        (56 channels run as 64 on 16-channel blocks), built once and reused by every lookup.

        Entries recorded off the runtime's blocked path (``lut record --off-path``: counts that are not
        multiples of the runtime's alignment, :func:`between_blocks`) form families of their own
        (``family + OFF_PATH``) on their raw counts: they price what the blocked entries cannot."""
        if self._index is None:
            grouped: dict[str, dict[tuple[int, int], list[LutEntry]]] = {}
            for entry in self.table.entries.values():
                if self.off_path(entry.config):
                    family, xy = entry.config.family() + OFF_PATH, (entry.config.cin, entry.config.cout)
                else:
                    family, xy = entry.config.family(), (self._x(entry.config.cin), self._x(entry.config.cout))
                grouped.setdefault(family, {}).setdefault(xy, []).append(entry)
            self._index = {
                family: {
                    xy: (statistics.fmean(self._entry_ms(e) for e in es), statistics.fmean(e.spread for e in es))
                    for xy, es in points.items()
                }
                for family, points in grouped.items()
            }
            self._cache, self._blocked_price = {}, {}
        return self._index

    def off_path(self, config: LayerConfig) -> bool:
        """Whether the runtime runs ``config`` off its blocked path (the table's facts say how)."""
        return between_blocks(config, *self.layout)

    def prices_off_path(self, config: LayerConfig) -> bool:
        """Whether the table holds off-path recordings of ``config``'s family (``lut record --off-path``)."""
        return self.table.normalised(config).family() + OFF_PATH in self._families()

    def _x(self, channels: int) -> int:
        # Counts of a block or more run padded to whole blocks; smaller ones are their own case.
        return channels if channels < self.table.quantum else _ceil_to(channels, self.table.quantum)

    def lookup(self, config: LayerConfig) -> tuple[float, float, str, bool]:
        """Predict one configuration: ``(ms, std_ms, status, extrapolated)`` (uncalibrated)."""
        config = self.table.normalised(config)
        key = config.key()
        entry = self.table.entries.get(key)
        if entry is not None:
            return self._entry_ms(entry), entry.spread, EXACT, False
        families = self._families()
        cached = self._cache.get(key)
        if cached is None:
            off = families.get(config.family() + OFF_PATH) if self.off_path(config) else None
            if off:  # off the blocked path: priced from what was recorded there, on raw counts
                cached = self._interpolate(config, off, padded=False)
            else:
                values = families.get(config.family())
                cached = self._interpolate(config, values) if values else self._nearest(config)
            self._cache[key] = cached
        return cached

    def _interpolate(self, config: LayerConfig, values: dict[tuple[int, int], tuple[float, float]],
                     padded: bool = True) -> tuple[float, float, str, bool]:
        qx, qy = (self._x(config.cin), self._x(config.cout)) if padded else (config.cin, config.cout)
        if config.diagonal:
            line = {x: v for (x, y), v in values.items() if x == y}
            if line:
                return self._interpolate_1d(qx, line, 2 if config.grouped else 1)
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
    def _interpolate_1d(q: int, line: dict[int, tuple[float, float]], power: int = 1) -> tuple[float, float, str, bool]:
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
        # Depthwise work grows linearly with the channels; a grouped convolution's (fixed groups) with their square.
        ratio = (q / anchor) ** power
        return line[anchor][0] * ratio, line[anchor][1] * ratio, INTERPOLATED, True

    def _nearest(self, config: LayerConfig) -> tuple[float, float, str, bool]:
        """A configuration of a shape never recorded: the closest one of the same op, scaled by MACs."""
        macs = config.macs()
        candidates = [e for e in self.table.entries.values() if e.config.op == config.op and e.config.depthwise == config.depthwise
                      and e.config.precision == config.precision]
        if not candidates and config.precision is not None:
            # Nothing of this op recorded in this precision: the base precision's time, said missing.
            ms, std, _, _ = self.lookup(config.with_precision(None))
            return ms, std, MISSING, False
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
        config, _ = self._config_of(spec)
        if config is None:
            return 0.0, MISSING
        ms, _, status, _ = self.lookup(config)
        return ms, status

    def calibration_for(self, layers: Sequence[LayerSpec], precision: str | None = None,
                        non_layer: bool = False) -> dict[str, Any] | None:
        """The recorded model whose layer shapes overlap ``layers`` most (a pruned resnet18 has the
        shapes of resnet18, whatever its channel counts), or None when nothing overlaps.

        ``precision``: the calibration of that precision (None: the table's), the layers priced in it.
        ``non_layer``: its ratios with the work between layers taken out (:meth:`current_calibration`).
        """
        if not self.table.models:
            return None
        base = self.table.precision
        precision = None if precision == base else precision
        families = {family for family in (self._config_of(s, precision)[1] for s in layers) if family is not None}
        best, best_score = None, 0.0
        for model in self.table.models:
            if (None if model.get("precision", base) == base else model.get("precision")) != precision:
                continue
            recorded = set(model.get("families", []))
            if not recorded or not families:
                continue
            score = len(recorded & families) / len(recorded | families)
            if score > best_score:
                best, best_score = model, score
        return None if best is None else self.current_calibration(best, non_layer)

    def prices_non_layer(self, specs: Sequence[LayerSpec]) -> bool:
        """Whether a prediction of ``specs`` prices the work between layers itself: the table has its
        costs, the switch is on and the rows say which layers feed which (not an ONNX analysis)."""
        return bool(self._non_layer) and self.price_non_layer and any(s.sources is not None for s in specs)

    def non_layer_ms(self, specs: Sequence[LayerSpec]) -> float:
        """What the work between ``specs``'s layers costs (:func:`hwcompress.lut.nonlayer.priced_work`)."""
        return priced_work(self, specs)

    def current_calibration(self, model: dict[str, Any], non_layer: bool = False) -> dict[str, Any]:
        """``model`` (one of the table's calibration records) with each point summed against the table as
        it stands, where the points store their layers (recorded since 2026-11-28); as stored otherwise.

        A point's layer sum and ratio were computed when it was recorded. Entries recorded, merged or
        timed again since then reprice its layers, and the stored ratio then no longer turns the sum into
        the measurement: mobilenet_v3_small at 96 px, recorded first into a table that then got two more
        networks' entries, had its 0.75-wide copy summed at 0.320 ms, which the table later priced at 0.308
        ms (its ratio 0.714 where 0.741 reproduces the measurement).

        ``non_layer``: the work between layers (:meth:`non_layer_ms`) taken out of each point's
        measurement before its ratio, for a prediction that adds it back itself; the result is then
        marked ``non_layer_priced`` (points without layers cannot be summed again and stay as stored,
        unmarked: such a prediction leaves the work in the ratio)."""
        non_layer = non_layer and bool(self._non_layer) and self.price_non_layer
        hit = self._current.get((id(model), non_layer))
        if hit is not None and hit[0] is model:
            return hit[1]
        current = model
        points = model.get("points") or []
        if points and all(isinstance(p, dict) and p.get("specs") and p.get("measured_ms") for p in points):
            summed = []
            try:
                for p in points:
                    rows = [spec_from_record(s) for s in p["specs"]]
                    between = self.non_layer_ms(rows) if non_layer else 0.0
                    layer_sum, ratio = self.point_sum_and_ratio(rows, float(p["measured_ms"]) - between)
                    summed.append({**p, "layer_sum_ms": layer_sum, "ratio": ratio})
            except (TypeError, ValueError, KeyError):  # a row this version cannot read: the stored sums
                summed = []
            if summed:
                first = summed[0]
                current = {**model, "points": summed, "layer_sum_ms": first["layer_sum_ms"], "scale": first["ratio"],
                           "offset_ms": round(float(first["measured_ms"]) - first["layer_sum_ms"], 6)}
                if "checks" in model:  # the ratios' spread is checked on the ratios as they now are
                    current["checks"] = calibration_checks(current)
                if non_layer:
                    current["non_layer_priced"] = True
        self._current[(id(model), non_layer)] = (model, current)
        return current

    def current_transition_rate(self, model: dict[str, Any]) -> float:
        """The rate of a ``transitions`` record (ms per element crossing a change of precision) against the
        table as it stands, where the record stores its mixed model's layers (recorded since 2026-11-28);
        as stored otherwise.

        The rate is what the mixed model measured beyond its prediction without it, per element crossing;
        entries recorded, merged or timed again later, and calibrations summed again, move that prediction,
        and a stored rate would then price the changes with what the float and int8 parts now explain or
        miss. It never goes below zero (as when recorded)."""
        hit = self._rates.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        rate = float(model.get("ms_per_element") or 0.0)
        rows, elements, measured = model.get("specs"), model.get("transition_elements"), model.get("measured_ms")
        if rows and elements and measured:
            try:  # the prediction without the term this record gives
                detail = self.predict_detail([spec_from_record(r) for r in rows], transitions=False)
                rate = max(float(measured) - detail.total_ms, 0.0) / float(elements)
            except (TypeError, ValueError, KeyError):  # a row this version cannot read: the stored rate
                pass
        self._rates[id(model)] = (model, rate)
        return rate

    def point_sum_and_ratio(self, specs: Sequence[LayerSpec], measured_ms: float) -> tuple[float, float]:
        """A calibration point of a model whose layers are ``specs``, measured whole at ``measured_ms``: the
        sum its ratio is read at and the ratio, as the table now prices the layers. Layers priced as timed
        (off-path entries) are outside the ratio, which is stored at the sum a prediction reads it at
        (:attr:`PredictionDetail.ratio_sum_ms`); without such layers, the layer sum."""
        detail = self.predict_detail(list(specs), calibration="none")
        scaled = detail.layer_sum_ms - detail.as_timed_ms
        return detail.ratio_sum_ms, ratio_digits((measured_ms - detail.as_timed_ms) / scaled) if scaled > 0 else 1.0

    def predict_detail(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale",
                       transitions: bool = True) -> PredictionDetail:
        """Predict a model from its analysed layers, with the calibration applied.

        Args:
            layers: a :class:`~hwcompress.model.analysis.ModelAnalysis` or its ``layers``.
            calibration: ``scale`` (multiply the layer sum by measured / sum of the closest recorded
                model, interpolated between its calibration points by layer sum: what fits pruned
                variants, whose missing work shrinks with the layers), ``offset`` (add the full
                model's measured - sum), or ``none``.
            transitions: add what a change of precision costs (the ``transitions`` record's rate); False:
                the prediction that rate is taken against (:meth:`current_transition_rate`).
        """
        specs = list(layers.layers if isinstance(layers, ModelAnalysis) else layers)
        raw: dict[str, float] = {}
        status: dict[str, str] = {}
        precision_of: dict[str, str | None] = {}
        variance = 0.0
        extrapolated: list[str] = []
        off_block: list[str] = []
        # Layers priced from off-path entries timed warm: as timed, outside the calibration's scale.
        as_timed: set[str] = set()
        any_off_path = False
        blocked: dict[str, float] = {}  # layers priced as timed: what they would cost on the blocked path
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
            config, _ = self._config_of(spec)
            if config is None:
                raw[spec.name], status[spec.name] = 0.0, MISSING
            else:
                ms, std, state, extra = self._lookup_of(spec)
                raw[spec.name], status[spec.name] = ms * getattr(spec, "time_scale", 1.0), state
                precision_of[spec.name] = self.table.normalised(config).precision
                variance += std**2
                if extra:
                    extrapolated.append(spec.name)
                if self.off_path(config):
                    any_off_path = True
                    if not self.prices_off_path(config):
                        off_block.append(spec.name)
                    elif self._warm_off_path and state != MISSING and precision_of[spec.name] is None:
                        # (a layer in another precision belongs to a mixed student: its precision's
                        # calibration prices it, and calibration points in that precision keep it scaled)
                        as_timed.add(spec.name)
                        if self.ratio_at_width:
                            blocked[spec.name] = self.blocked_price(config, ms) * getattr(spec, "time_scale", 1.0)
            previous = spec
        layer_sum = sum(raw.values())
        used = sorted({p for p in precision_of.values() if p is not None})
        if used and calibration != "none":
            detail = self._mixed_detail(specs, raw, status, precision_of, math.sqrt(variance), extrapolated, calibration,
                                        transitions)
            detail.between_blocks = off_block
            return detail
        non_layer = calibration == "scale" and self.prices_non_layer(specs)
        model = self.calibration_for(specs, non_layer=non_layer) if calibration != "none" else None
        # The work between layers, priced where the calibration's ratio was summed without it.
        between = self.non_layer_ms(specs) if model is not None and model.get("non_layer_priced") else 0.0
        scale, offset = 1.0, 0.0
        # Conversions happen only at layers off the path: none, no second walk over the rows.
        converting = self.layout_conversion_ms(specs) if self._conversions and any_off_path and calibration != "none" else {}
        unscaled = sum(raw[name] for name in as_timed)
        # The ratio is read at how wide the model is: its layers off the path counted at their blocked
        # price. Leaving them out read a network mostly off the path as a narrow one, and its wide layers
        # on the path got a narrow model's ratio (0.68 for regnet_x_400mf's 0.97). Calibration records
        # store their points at the same sum (:func:`hwcompress.lut.calibration.calibration_record`).
        ratio_sum = layer_sum - unscaled + sum(blocked.values())
        if model is not None and calibration == "scale":
            scale = calibration_ratio(model, ratio_sum)
        elif model is not None and calibration == "offset":
            offset = float(model["measured_ms"]) - float(model["layer_sum_ms"])
        own = {name: ms if name in as_timed else ms * scale for name, ms in raw.items()}
        # A credit (conversions a layer off the path no longer causes) is at most the layer's own time.
        converting = {name: max(ms, -own.get(name, 0.0)) for name, ms in converting.items()}
        per_layer = {name: ms + converting.get(name, 0.0) for name, ms in own.items()}
        offset += between
        total = max((layer_sum - unscaled) * scale + unscaled + sum(converting.values()) + offset, 0.0)
        return PredictionDetail(
            total_ms=total,
            per_layer_ms=per_layer,
            status=status,
            layer_sum_ms=layer_sum,
            std_ms=math.sqrt(variance) * scale,
            scale=scale,
            offset_ms=offset,
            non_layer_ms=between,
            calibration=model,
            extrapolated=extrapolated,
            between_blocks=off_block,
            layout_conversion_ms=sum(converting.values()),
            as_timed_ms=unscaled,
            ratio_sum_ms=ratio_sum,
        )

    def blocked_price(self, config: LayerConfig, default: float) -> float:
        """What ``config`` (a layer off the blocked path) would cost at the blocked-path count above it
        (uncalibrated): interpolated in its blocked family, ``default`` without one."""
        config = self.table.normalised(config)
        key = config.key()
        hit = self._blocked_price.get(key)
        if hit is None:
            family = self._families().get(config.family())
            if config.grouped:  # every group padded to whole blocks: 8 channels per group run as 16
                block, groups = self.layout[0], config.groups
                config = config.with_channels(groups * _ceil_to(config.cin // groups, block),
                                              groups * _ceil_to(config.cout // groups, block))
            hit = self._interpolate(config, family)[0] if family else -1.0
            self._blocked_price[key] = hit
        return default if hit < 0 else hit

    def layout_conversion_ms(self, specs: Sequence[LayerSpec]) -> dict[str, float]:
        """Per convolution, what the layout conversions that its being off the blocked path adds or
        removes cost (:func:`hwcompress.lut.conversions.layout_conversions`)."""
        return layout_conversions(self, specs)

    def predict(self, layers: ModelAnalysis | Sequence[LayerSpec], calibration: str = "scale") -> Prediction:
        """``(total_ms, per_layer_ms, coverage)`` for a model's analysed layers (calibrated)."""
        return self.predict_detail(layers, calibration).as_tuple()

    def _layer_sum_at(self, specs: Sequence[LayerSpec], status: dict[str, str], precision: str | None) -> float:
        """The uncalibrated layer sum of ``specs`` with every predicted layer at ``precision``."""
        total = 0.0
        for spec in specs:
            if status.get(spec.name) in (None, FUSED):
                continue
            config, _ = self._config_of(spec, precision)
            if config is not None:
                total += self.lookup(config)[0] * getattr(spec, "time_scale", 1.0)
        return total

    def _mixed_detail(self, specs: Sequence[LayerSpec], raw: dict[str, float], status: dict[str, str],
                      precision_of: dict[str, str | None], std: float, extrapolated: list[str],
                      calibration: str, transitions: bool = True) -> PredictionDetail:
        """A prediction with layers in other precisions than the table's: each precision's layers get
        that precision's calibration (see the module docstring); without one, the base precision's."""
        sums: dict[str | None, float] = {}
        for name, ms in raw.items():
            sums[precision_of.get(name)] = sums.get(precision_of.get(name), 0.0) + ms
        scales: dict[str | None, float] = {}
        models: dict[str | None, dict[str, Any] | None] = {}
        offset = 0.0
        layer_sum = sum(raw.values())
        for precision, part in sums.items():
            model, at = self.calibration_for(specs, precision), precision
            if model is None:  # no whole-model timing in this precision: the base precision's calibration
                model, at = self.calibration_for(specs), None
            models[precision] = model
            if model is None:
                scales[precision] = 1.0
            elif calibration == "scale":
                whole = part if len(sums) == 1 and at == precision else self._layer_sum_at(specs, status, at)
                scales[precision] = calibration_ratio(model, whole)
            else:
                scales[precision] = 1.0
                share = part / layer_sum if layer_sum > 0 else 0.0
                offset += share * (float(model["measured_ms"]) - float(model["layer_sum_ms"]))
        per_layer = {name: ms * scales[precision_of.get(name)] for name, ms in raw.items()}
        total = max(sum(per_layer.values()) + offset, 0.0)
        if len(sums) > 1 and transitions:
            offset += transition_rate(self.table, specs) * transition_elements(specs, precision_of)
            total = max(sum(per_layer.values()) + offset, 0.0)
        main = max(sums, key=lambda p: sums[p])
        return PredictionDetail(
            total_ms=total,
            per_layer_ms=per_layer,
            status=status,
            layer_sum_ms=layer_sum,
            std_ms=std * (total / layer_sum if layer_sum > 0 else 1.0),
            scale=(sum(per_layer.values()) / layer_sum) if layer_sum > 0 else 1.0,
            offset_ms=offset,
            calibration=models[main],
            extrapolated=extrapolated,
            precision_ms={p or self.table.precision: round(sums[p] * scales[p], 6) for p in sums},
        )


#: Suffix of the families that hold entries recorded off the runtime's blocked path.
OFF_PATH = "|off-path"


def between_blocks(config: LayerConfig, block: int, alignment: int | None) -> bool:
    """Whether a convolution runs off the runtime's blocked path, by the rule the runtime reported
    (``channel_block`` and ``channel_alignment`` in the table's facts; ONNX Runtime's NCHWc kernels:
    :func:`hwcompress_profiler_onnxruntime.nchwc_layout`).

    A convolution fed at least one block of channels, or a depthwise one, needs its (input) channel count
    to be a multiple of ``alignment``; a grouped (not depthwise) one needs each group's input and output
    channels to be whole blocks (RegNet's 16-channel groups narrowed to 8 by pruning run off the path on
    16-channel blocks: ONNX Runtime's optimized graph, 2026-11-26). One that is not runs in plain NCHW,
    with layout conversions to and from its blocked neighbours, which the LUT (each layer recorded alone,
    at counts on the grid) does not price. ``alignment`` None (a runtime that reported no rule): never.
    """
    if not alignment or alignment <= 1 or config.op not in CONV_OPS:
        return False
    if config.grouped:
        return (config.cin // config.groups) % block != 0 or (config.cout // config.groups) % block != 0
    if config.groups > 1:
        return config.cin % alignment != 0
    return config.cin >= block and config.cin % alignment != 0


def transition_elements(specs: Sequence[LayerSpec], precision_of: dict[str, str | None]) -> int:
    """Elements of the tensors that cross a change of precision: between consecutive conv/linear rows (in
    forward order) of different precisions, the later row's input."""
    total, previous = 0, None
    for spec in specs:
        if spec.name not in precision_of or not (spec.op in CONV_OPS or spec.op == "Linear"):
            continue
        current = precision_of[spec.name]
        if previous is not None and current != previous[0] and spec.in_shape:
            total += math.prod(int(d) for d in spec.in_shape)
        previous = (current,)
    return total


def transition_rate(table: Any, specs: Sequence[LayerSpec]) -> float:
    """Milliseconds per element crossing a change of precision, from the ``transitions`` record of the
    recorded model whose layer shapes overlap ``specs`` most (what a change costs depends on the
    network: 3x3 convolutions at 56x56 convert other tensors than depthwise ones at 112x112), else 0;
    taken against the table as it stands (:meth:`TablePredictor.current_transition_rate`)."""
    families = {c.with_precision(None).family() for c in (LayerConfig.from_spec(s) for s in specs) if c is not None}
    best, best_score = None, 0.0
    for model in table.models:
        recorded = set(model.get("families") or [])
        if model.get("precision") != TRANSITIONS or not recorded or not families:
            continue
        score = len(recorded & families) / len(recorded | families)
        if score > best_score:
            best, best_score = model, score
    return 0.0 if best is None else table.predictor.current_transition_rate(best)


def _is_fused_norm(spec: LayerSpec, previous: LayerSpec | None) -> bool:
    """A BatchNorm right after the convolution (or Linear) that feeds it is folded into it."""
    return (
        spec.op in NORM_OPS
        and previous is not None
        and (previous.op in CONV_OPS or previous.op == "Linear")
        and previous.cout is not None
        and previous.cout == spec.cin
    )
