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
from hwcompress.lut.predict import TablePredictor  # noqa: E402
from hwcompress.lut.table import LatencyTable  # noqa: E402
from hwcompress.model.analysis import analyze  # noqa: E402


def kendall(a: list[float], b: list[float]) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    sign = [((a[i] - a[j]) * (b[i] - b[j]) > 0) - ((a[i] - a[j]) * (b[i] - b[j]) < 0) for i, j in pairs]
    return sum(sign) / len(pairs) if pairs else 0.0


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
    for name, result in run["results"].items():
        kinds = run["settings"].get("kinds", ",".join(lf.KINDS)).split(",")
        for kind in kinds:
            kind_rng = rng if kind == "project" else kind_rngs[kind]
            for index in range(variants):
                torch.manual_seed(zlib.crc32(f"{seed}:{name}:fp32:{kind}:{index}".encode()))
                model, _ = lf.build_variant(name, kind, shape, kind_rng, device.channel_multiple)
                specs = analyze(model, shape).layers
                row = next(r for r in result["rows"] if r["kind"] == kind and r["variant"] == index)
                for rule, spare in rules.items():
                    TablePredictor.spare_grouped_conversions = bool(spare)
                    detail = table.predict_detail(specs)
                    predicted = detail.total_ms - (detail.layout_conversion_ms if spare is None else 0.0)
                    scored[rule].append((name, kind, predicted, row["measured_ms"], row["measured_corrected_ms"],
                                         row["predicted_ms"]))
        TablePredictor.spare_grouped_conversions = True
    for name in run["results"]:
        print(name)
        for rule in rules:
            rows = [r for r in scored[rule] if r[0] == name]
            parts = []
            for label, column in (("as measured", 3), ("drift-corrected", 4)):
                errors = [r[2] / r[column] - 1 for r in rows]
                within = sum(abs(e) <= 0.10 for e in errors) / len(rows)
                mape = sum(abs(e) for e in errors) / len(rows)
                tau = kendall([r[2] for r in rows], [r[column] for r in rows])
                parts.append(f"{label} {100 * within:5.1f}% / {100 * mape:4.1f}% / {tau:.3f}")
            kinds = sorted({r[1] for r in rows}, key=list(lf.KINDS).index)
            means = ", ".join(f"{k} {100 * sum(r[2] / r[3] - 1 for r in rows if r[1] == k) / sum(r[1] == k for r in rows):+.1f}%"
                              for k in kinds)
            print(f"  {rule:12s} {'; '.join(parts)}  (mean error: {means})")
            if rule == "graph":
                drift = max(abs(r[2] / r[5] - 1) for r in rows)
                print(f"  {'':12s} the run's own predictions reproduced within {100 * drift:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
