"""Score layout-conversion rules on a finished ``bench/lut_fidelity.py`` run, without timing anything again.

The run's variants are rebuilt from its seed (the same draws, so the same networks), predicted from its
LUT under each rule, and scored against the measurements its ``--json`` holds (within +-10%, MAPE,
Kendall tau, as measured and drift-corrected; mean signed error per kind). Rules:

* ``graph``: the predictor as it is (conversions placed by the graph, none around grouped convolutions);
* ``grouped too``: the same, charging conversions around grouped convolutions as well (the rule before);
* ``none``: no layout conversions.

    python bench/lut_fidelity.py --models mobilenet_v3_small,efficientnet_b0,regnet_x_400mf --input-size 96 \\
        --variants 8 --off-path --passes 2 --lut run.lut.json --json run.json
    python bench/conversion_rules.py run.json run.lut.json

The first line of each architecture checks that ``graph`` reproduces the run's own predictions (it does
unless the predictor changed since the run).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lut_fidelity as lf  # noqa: E402

from hwcompress.devices import resolve_device  # noqa: E402
from hwcompress.lut.table import LatencyTable  # noqa: E402
from hwcompress.model.analysis import analyze  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the lut_fidelity.py --json document")
    parser.add_argument("lut", type=Path, help="the LUT that run recorded (its --lut, or the temporary file it names)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run = json.loads(args.run.read_text())
    seed, variants = run["settings"].get("seed", 0), run["settings"]["variants"]
    table = LatencyTable.load(args.lut)
    device = resolve_device(args.device, None)
    shape = tuple(run["input_shape"])
    rng = random.Random(seed)  # drawn in the run's order: the project's variants share one generator
    kind_rngs = {kind: random.Random(f"{seed}:{kind}") for kind in lf.KINDS if kind != "project"}
    rules = {"graph": True, "grouped too": False, "none": None}
    scored: dict[str, list[tuple[str, str, float, float, float, float]]] = {rule: [] for rule in rules}
    kinds = run["settings"].get("kinds", ",".join(lf.KINDS)).split(",")
    for name, result in run["results"].items():
        for kind in kinds:
            kind_rng = rng if kind == "project" else kind_rngs[kind]
            for index in range(variants):
                torch.manual_seed(zlib.crc32(f"{seed}:{name}:fp32:{kind}:{index}".encode()))
                model, _ = lf.build_variant(name, kind, shape, kind_rng, device.channel_multiple)
                specs = analyze(model, shape).layers
                row = next(r for r in result["rows"] if r["kind"] == kind and r["variant"] == index)
                for rule, spare in rules.items():
                    table.predictor.spare_grouped_conversions = bool(spare)
                    detail = table.predict_detail(specs)
                    predicted = detail.total_ms - (detail.layout_conversion_ms if spare is None else 0.0)
                    scored[rule].append((name, kind, predicted, row["measured_ms"], row["measured_corrected_ms"],
                                         row["predicted_ms"]))
    for name in run["results"]:
        print(name)
        for rule in rules:
            rows = [r for r in scored[rule] if r[0] == name]
            parts = []
            for label, column in (("as measured", 3), ("drift-corrected", 4)):
                got = lf.scores([r[2] for r in rows], [r[column] for r in rows])
                parts.append(f"{label} {100 * got['within_10pct']:5.1f}% / {100 * got['mape']:4.1f}% / {got['kendall_tau']:.3f}")
            means = ", ".join(f"{k} {100 * lf.scores([r[2] for r in rows if r[1] == k], [r[3] for r in rows if r[1] == k])['mean_err']:+.1f}%"
                              for k in kinds)
            print(f"  {rule:12s} {'; '.join(parts)}  (mean error: {means})")
            if rule == "graph":
                drift = max(abs(r[2] / r[5] - 1) for r in rows)
                print(f"  {'':12s} the run's own predictions reproduced within {100 * drift:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
