"""What the layout conversions around layers off a runtime's blocked path cost a whole network.

ONNX Runtime's CPU kernels run convolutions in a channel-blocked layout (NCHWc) and convert tensors to
and from plain NCHW where a consumer cannot read the blocked one (``ReorderOutput`` to plain,
``ReorderInput`` back). A LUT times each layer alone, and its calibration scale is fitted on networks
whose convolutions are all on the blocked path, so the conversions *those* networks pay are inside the
scale. What a prediction must add is the difference a layer off the path (channels the blocked kernels
do not take, :func:`hwcompress.lut.predict.between_blocks`) makes:

- **added**: a convolution whose input comes from a convolution in the other layout pays one
  conversion of its input (the runtime reorders right before the reader, after any pooling or add in
  between), and a source converted for one reader is not converted again for the next;
- **removed** (squeeze-excitation blocks): the broadcast multiply that scales a block's channels runs in
  plain NCHW, so on the blocked path the block pays a conversion out of each convolution feeding the
  multiply (the depthwise convolution and the excitation) and one back into the projection after it.
  Read off ONNX Runtime's optimised graphs of torch-pruned mobilenet_v3_small variants: every such block
  of an aligned variant held these three reorders (of the 34 in the network, 0.07 ms of a 0.2 ms network
  at 96 px); a variant whose blocks went off the path kept them only where a convolution stayed on it,
  and the LUT, which had them in its scale, put those variants 8-12% over their measurement. Off the
  path, the conversions disappear, and their cost is credited;
- **neither** around grouped convolutions (not depthwise): around regnet_x_400mf's grouped convolutions
  at 8 channels per group, charging them put torch-pruned variants 17.5% over their measurement (25%
  within +-10%), and leaving them out 9.8% (62.5%), with no change on the architectures without grouped
  convolutions (docs/benchmarks.md, "On a quiet machine").

A tensor whose every spatial extent is 1 is taken for the squeeze path; at inputs so small that an
ordinary stage runs at 1x1, its conversions go uncharged too (a few microseconds each).

Which convolutions feed which are the rows' ``sources`` (the autograd graph of
:func:`~hwcompress.model.analysis.analyze`: a projection after a squeeze-excitation block is fed by the
depthwise convolution and the excitation); rows without them (ONNX analyses), or whose sources are all
gone (a unit a student removed), are compared with the convolution before them in row order.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from hwcompress.lut.keys import CONV_OPS
from hwcompress.model.analysis import LayerSpec


def pooled(shape: Sequence[int] | None) -> bool:
    """A tensor with every spatial extent 1 (after a global pool, or an excitation's output)."""
    return bool(shape) and len(shape) >= 3 and all(int(d) == 1 for d in shape[2:])  # type: ignore[union-attr]


def layout_conversions(predictor: Any, specs: Sequence[LayerSpec]) -> dict[str, float]:
    """Per convolution of ``specs``, the cost (ms) of the conversions its layout adds (positive) or removes
    (negative) against the all-blocked network the calibration was fitted on (module docstring), priced
    with the table's ``layout_conversions`` record (``lut record --off-path``).

    ``predictor`` is a :class:`~hwcompress.lut.predict.TablePredictor`: its ``layout`` (block, alignment),
    ``off_path``, ``_config_of``, ``_conversions`` (the record; empty result without one) and its switches
    ``spare_grouped_conversions`` and ``squeeze_credit``.
    """
    rates = predictor._conversions or {}
    block = predictor.layout[0]

    def price(direction: str, shape: Sequence[int] | None) -> float:
        fit = rates.get(direction) or {}
        elements = math.prod(int(d) for d in shape) if shape else 0
        netted = predictor.kernel_overhead_ms if predictor.net_off_path else 0.0
        intercept = max(float(fit.get("intercept_ms", 0.0)) - netted, 0.0)  # timed under the node profiler
        return intercept + float(fit.get("ms_per_element", 0.0)) * elements

    convs: list[tuple[LayerSpec, str, str, bool]] = []  # (row, input layout, output layout, off the path)
    grouped: set[str] = set()  # grouped (not depthwise) convolutions: no conversion is charged around them
    for spec in specs:
        config, _ = predictor._config_of(spec)
        if config is None or config.op not in CONV_OPS or not spec.in_shape:
            continue
        if config.grouped and predictor.spare_grouped_conversions:
            grouped.add(spec.name)
        off = predictor.off_path(config)
        if off:
            layout_in = layout_out = "plain"
        else:
            layout_in = "blocked" if config.cin >= block else "plain"
            layout_out = "blocked" if config.cin >= block or not (config.depthwise or config.grouped) else "plain"
        convs.append((spec, layout_in, layout_out, off))
    # Every convolution's output layout first: a row may name a source defined after it.
    written = {spec.name: (layout_out, off) for spec, _, layout_out, off in convs}
    shapes = {spec.name: spec.out_shape for spec, _, _, _ in convs}
    present = {spec.name for spec in specs}
    costs: dict[str, float] = {}
    converted: set[tuple[str, str]] = set()  # (source, the layout it was converted to)
    credited: set[str] = set()  # sources whose conversion to plain for a squeeze-excitation multiply is gone
    previous: str | None = None
    for spec, layout_in, _, off in convs:
        graph = spec.sources is not None and (not spec.sources or any(s in present for s in spec.sources))
        sources = spec.sources if graph else (previous,) if previous is not None else ()
        previous = spec.name
        if spec.name in grouped:
            continue
        pooled_input = pooled(spec.in_shape)
        if predictor.squeeze_credit and (pooled_input or any(pooled(shapes.get(s)) for s in sources)):
            # On a squeeze-excitation path the runtime leaves its blocked layout whatever the channels.
            if not pooled_input:  # the projection, read through the multiply
                for source in sources:  # each credited at the convolution whose output is no longer converted
                    if source in written and written[source][1] and source not in credited and source not in grouped:
                        credited.add(source)
                        costs[source] = costs.get(source, 0.0) - price("to_plain", shapes.get(source))
                if off:
                    costs[spec.name] = costs.get(spec.name, 0.0) - price("to_blocked", spec.in_shape)
            continue
        # Only the changes an off-path layer causes: the others happen in the blocked-path models the
        # calibration was fitted on, and its scale has them.
        crossing = {(s, layout_in) for s in sources
                    if s in written and s not in grouped and written[s][0] != layout_in and (off or written[s][1])}
        if not crossing - converted:
            continue  # nothing crosses, or the runtime already reordered it for an earlier reader
        converted |= crossing
        costs[spec.name] = costs.get(spec.name, 0.0) + price("to_plain" if layout_in == "plain" else "to_blocked", spec.in_shape)
    return costs
