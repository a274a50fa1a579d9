"""A recorded LUT behind the profiler contract: :class:`LutPredictor` predicts where a profiler times.

What ``hwcompress profile --lut`` and a device without a local runtime get: the prediction of
:mod:`hwcompress.lut.predict` as a :class:`~hwcompress.measure.contract.Measurement` (``runs = 0``), with
the notes that say what it rests on (calibration, coverage, layers it cannot vouch for).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress.lut.keys import EXACT, FUSED, INTERPOLATED, MISSING, LayerConfig
from hwcompress.lut.predict import OFF_PATH, PredictionDetail, TablePredictor
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.model.analysis import LayerSpec, analyze

#: A layer priced by scaling LUT entries more than this factor away by work (MACs) is named in a warning;
#: a model none of whose layers is priced exactly, by interpolation or within this factor is refused.
FAR_BY_WORK = 10.0


class LutPredictor:
    """A recorded table behind the profiler contract: ``measure`` predicts instead of timing.

    :func:`hwcompress.measure.resolve.resolve_timing` hands one out for a device that is not this
    machine (or for ``--lut FILE``), so profile, compare and the search treat a prediction like a
    measurement; the result says ``source: "lut"`` and ``runs = 0``.

    Args:
        table: the :class:`~hwcompress.lut.table.LatencyTable`.
        descriptor: the device asked for; the table must describe it (checked on every request).
        local_facts: the local profiler's facts when the device is this machine (checks the runtime
            version the table was recorded with).
    """

    name = "lut"
    description = "Predicted from a latency lookup table recorded on the device (hwcompress lut record)"

    def __init__(self, table: Any, descriptor: Any, local_facts: dict[str, Any] | None = None) -> None:
        self.table = table
        self.descriptor = descriptor
        self.local_facts = local_facts

    def available(self) -> tuple[bool, str]:
        return True, ""

    def facts(self, _settings: ProfileSettings) -> dict[str, Any]:
        return lut_facts(self.table)

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        if artifact.module is None:
            raise UserError(
                f"predicting from LUT {self.table.where()} needs the model's layers; an .onnx model has none here, "
                "pass the PyTorch model (torchvision name, pkg.module:factory or checkpoint)"
            )
        batch = artifact.input_shape[0] if artifact.input_shape else None
        notes = self.table.check_request(self.descriptor, settings, batch, self.local_facts)
        analysis = analyze(artifact.module, tuple(artifact.input_shape))
        detail = self.table.predict_detail(analysis)
        coverage = detail.coverage()
        notes = calibration_notes(detail) + notes
        record = (f"hwcompress lut record {self.descriptor.option} --model {artifact.name} --input-shape "
                  f"{','.join(map(str, artifact.input_shape))} --out {self.table.where()}")
        warning = coverage_warning(self.table, analysis.layers, detail, artifact.name, record)
        if warning:
            warnings.warn(warning, stacklevel=2)
            notes.insert(0, warning)
        apart = grouped_apart(self.table.predictor, analysis.layers, detail.extrapolated)
        if apart:
            notes.append(
                f"{len(apart)} grouped convolutions narrow their groups' inputs and outputs apart ({', '.join(apart[:4])}"
                f"{', ...' if len(apart) > 4 else ''}), and the LUT holds no such widths: each is scaled by its work from "
                "the nearest one recorded, which priced torch-pruned regnet_x_400mf layers at twice their time; "
                "hwcompress lut record --off-path (again, on this LUT) records every pair of group widths"
            )
        notes.append(
            f"LUT coverage: {coverage[EXACT]} exact, {coverage[INTERPOLATED]} interpolated"
            f"{' (' + str(coverage['extrapolated']) + ' outside the grid)' if coverage['extrapolated'] else ''}, "
            f"{coverage[MISSING]} missing, {coverage[FUSED]} fused into the layer before"
            + (f"; missing: {', '.join(coverage['missing_layers'][:5])}" if coverage["missing_layers"] else "")
        )
        if detail.between_blocks:
            names = detail.between_blocks
            alignment = (self.table.provenance.get("facts") or {}).get("channel_alignment")
            notes.append(
                f"{len(names)} convolutions have channel counts that are not multiples of {alignment} (or, grouped, "
                f"groups that are not whole {self.table.predictor.layout[0]}-channel blocks) "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): {self.table.provenance.get('runtime')} on "
                "the device runs such layers off its blocked path, with layout conversions around them, which the LUT "
                "does not price, so this prediction cannot vouch for them (measure on the device, prune to "
                f"multiples of {alignment}, or record the model's off-path entries: hwcompress lut record --off-path)"
            )
        if detail.layout_conversion_ms > 0:
            notes.append(f"includes {detail.layout_conversion_ms:.3f} ms of layout conversions around the layers off the "
                         "runtime's blocked path, net (timed when the LUT was recorded with --off-path)")
        elif detail.layout_conversion_ms < 0:
            notes.append(f"credits {-detail.layout_conversion_ms:.3f} ms, net, of layout conversions that squeeze-excitation "
                         "blocks off the runtime's blocked path no longer pay (timed when the LUT was recorded with --off-path)")
        provenance = self.table.provenance
        if "layout_conversions" in provenance and "non_layer_costs" not in provenance:
            notes.append("the work between layers (squeeze-excitation multiplies, unfused adds, pooling) is carried by the "
                         "calibration's ratio: this LUT was recorded with --off-path before that work was timed on its own; "
                         f"{record} --off-path adds it in seconds")
        if detail.non_layer_ms > 0:
            notes.append(f"includes {detail.non_layer_ms:.3f} ms of work between layers (squeeze-excitation multiplies, "
                         "unfused adds, pooling), priced outside the calibration's ratio (timed when the LUT was "
                         "recorded with --off-path)")
        notes.append(
            "predicted latency: median = calibrated sum of layers; spread relative to the calibration model's measured "
            "spread on the device; runs = 0 (nothing timed here)"
        )
        return Measurement(
            latency=predicted_stats(detail), facts=self.facts(settings), notes=notes, source="lut",
            layer_ms={name: round(ms, 6) for name, ms in detail.per_layer_ms.items()}, coverage=coverage,
        )


def lut_facts(table: Any) -> dict[str, Any]:
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


def grouped_apart(predictor: TablePredictor, specs: Sequence[LayerSpec], extrapolated: Sequence[str]) -> list[str]:
    """The ``extrapolated`` rows that are grouped convolutions (not depthwise) with unequal input and
    output widths per group, in a table that holds no such widths of their shape: what ``lut record
    --off-path`` records and a table without it scales by work (a table that has them extrapolates a
    layer only outside its grid, which recording again does not change)."""
    names = set(extrapolated)
    families = predictor._families()
    apart = []
    for spec in specs:
        config = LayerConfig.from_spec(spec) if spec.name in names else None
        if config is None or not config.grouped or config.cin == config.cout:
            continue
        family = predictor.table.normalised(config).family()
        points = [*families.get(family, {}), *families.get(family + OFF_PATH, {})]
        if all(x == y for x, y in points):
            apart.append(spec.name)
    return apart


def coverage_warning(table: Any, specs: Sequence[LayerSpec], detail: PredictionDetail, name: str, record: str) -> str | None:
    """What a prediction of ``name`` from ``table`` rests on too little for, or None when it rests on the table.

    Raises:
        UserError: none of the model's layers is priced from a configuration recorded near it (every one
            missing, or scaled more than :data:`FAR_BY_WORK` by work): the prediction would rest on no
            measurement of the model; ``record`` is the command that adds it.
    Returns:
        A warning naming the layers scaled more than :data:`FAR_BY_WORK` by work (and their share of the
        prediction), or None.
    """
    far = far_layers(table, specs, detail)
    shaped = [s.name for s in specs if detail.status.get(s.name) in (EXACT, INTERPOLATED, MISSING)
              and LayerConfig.from_spec(s) is not None]
    if shaped and all(detail.status[layer] == MISSING or layer in far for layer in shaped):
        missing = sum(detail.status[layer] == MISSING for layer in shaped)
        raise UserError(
            f"LUT {table.where()} covers none of the {len(shaped)} layers of {name}: {missing} have no "
            f"configuration of their shape recorded and {len(shaped) - missing} lie more than {FAR_BY_WORK:g}x by work "
            "beyond the configurations recorded, so a prediction would rest on no measurement of this model; record "
            f"it into the LUT on the device: {record}"
        )
    if not far:
        return None
    names = sorted(far, key=far.get, reverse=True)
    share = sum(detail.per_layer_ms.get(layer, 0.0) for layer in far) / detail.total_ms if detail.total_ms > 0 else 0.0
    listed = ", ".join(f"{layer} {far[layer]:,.0f}x" if far[layer] < math.inf else f"{layer} (no entry of its op)"
                       for layer in names[:4])
    return (f"{len(far)} of the {len(shaped)} layers of {name} are scaled by work from LUT entries more than "
            f"{FAR_BY_WORK:g}x away ({listed}{', ...' if len(names) > 4 else ''}), {share:.0%} of this prediction, which "
            f"can be off by orders of magnitude there; record the model into the LUT on the device: {record}")


def far_layers(table: Any, specs: Sequence[LayerSpec], detail: PredictionDetail) -> dict[str, float]:
    """The layers priced by scaling entries more than :data:`FAR_BY_WORK` away by work: name -> factor.

    Extrapolated layers (outside their family's recorded grid) and missing ones (no entry of their shape:
    scaled from the nearest of the same op) are compared by MACs (elements for an op without any) with
    the range of the entries they can be scaled from: their family's, or their op's for a missing shape.
    """
    extrapolated = set(detail.extrapolated)
    far = {}
    for spec in specs:
        status = detail.status.get(spec.name)
        config = LayerConfig.from_spec(spec) if status == MISSING or spec.name in extrapolated else None
        if config is None:
            continue
        config = table.normalised(config)
        if status == MISSING:
            pool = [e.config for e in table.entries.values() if e.config.op == config.op and e.config.depthwise == config.depthwise]
        else:
            pool = [e.config for e in table.entries.values() if e.config.family() == config.family()]
        works = [_work(c) for c in pool]
        work = _work(config)
        reach = max(min(works) / work, work / max(works), 1.0) if works and work > 0 else math.inf
        if reach > FAR_BY_WORK:
            far[spec.name] = reach
    return far


def _work(config: LayerConfig) -> int:
    return config.macs() or config.batch * math.prod(config.in_hw or (1,)) * config.cin


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


