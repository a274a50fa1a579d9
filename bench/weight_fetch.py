"""Would a price per byte of weights off the blocked path close what the LUT misses on pruned networks?

The idea (2026-11-28): a convolution that ONNX Runtime runs off its blocked path (a channel count that is
not a multiple of the block) is timed warm in the LUT, its weights in cache, while in the network its
weights come from further away; so charge each variant ``c`` ms per byte of such weights. This scores the
idea on finished ``bench/lut_fidelity.py`` runs without timing anything again: each run's variants are
rebuilt from its seed and predicted from its LUT, the byte count of the weights of the layers the LUT
prices off the path is read off the variant, ``c`` is fitted by least squares on one run's relative errors
(against its drift-corrected measurements) and applied to every run given, fitted run included. Per run
and architecture it prints within +-10% / MAPE / Kendall tau before and after, and the `round_to=None`
(``tpnone``) mean signed error. A ``c`` that holds from run to run would be worth a probe on the device;
one that does not is the recording's state, not a property of the layers.

    python bench/weight_fetch.py A.json A.lut.json B.json B.lut.json C.json C.lut.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lut_fidelity as lf  # noqa: E402

from hwcompress.devices import resolve_device  # noqa: E402
from hwcompress.lut.keys import LayerConfig  # noqa: E402
from hwcompress.lut.table import LatencyTable  # noqa: E402
from hwcompress.model.analysis import analyze  # noqa: E402


def features(run_path: Path, lut_path: Path) -> list[dict]:
    """Per variant of the run: its architecture, kind, drift-corrected measurement, prediction, and the
    bytes of weights (fp32) of its layers priced off the blocked path."""
    import json

    run, table = json.loads(run_path.read_text()), LatencyTable.load(lut_path)
    shape, predictor = tuple(run["input_shape"]), table.predictor
    measured = {(name, row["kind"], row["variant"]): row for name, result in run["results"].items() for row in result["rows"]}
    rows = []
    for name, kind, index, model in lf.rebuilt_variants(run, resolve_device("cpu", None).channel_multiple):
        row = measured.get((name, kind, index))
        if row is None or not row.get("measured_corrected_ms"):
            continue
        specs = analyze(model, shape).layers
        off_bytes = 0.0
        for spec in specs:
            config = LayerConfig.from_spec(spec)
            if config is not None and predictor.off_path(table.normalised(config)):
                off_bytes += 4.0 * spec.params
        rows.append({"arch": name, "kind": kind, "measured": row["measured_corrected_ms"],
                     "predicted": table.predict_detail(specs).total_ms, "off_bytes": off_bytes})
    return rows


def fitted(rows: list[dict]) -> float:
    """``c`` (ms per byte) minimising the squared relative error of ``predicted + c * off_bytes``."""
    x = [r["off_bytes"] / r["measured"] for r in rows]
    y = [1 - r["predicted"] / r["measured"] for r in rows]
    return sum(a * b for a, b in zip(x, y)) / max(sum(a * a for a in x), 1e-30)


def scored(rows: list[dict], c: float) -> dict[str, str]:
    from scipy.stats import kendalltau

    out = {}
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch]
        predicted = [r["predicted"] + c * r["off_bytes"] for r in mine]
        errors = [p / r["measured"] - 1 for p, r in zip(predicted, mine)]
        none = [e for e, r in zip(errors, mine) if r["kind"] == "tpnone"]
        out[arch] = (f"{sum(abs(e) <= 0.10 for e in errors) / len(errors):.1%} / {statistics.fmean(abs(e) for e in errors):.1%} / "
                     f"{kendalltau(predicted, [r['measured'] for r in mine])[0]:.3f}, tpnone "
                     f"{statistics.fmean(none) if none else float('nan'):+.1%}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", type=Path, help="RUN.json RUN.lut.json, one pair per run")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give each run's --json document and its LUT, in pairs")
    runs = {run.stem: features(run, lut) for run, lut in zip(args.pairs[::2], args.pairs[1::2])}
    before = {name: scored(rows, 0.0) for name, rows in runs.items()}
    print("| c fitted on | c (ms per MB) | run | architecture | before (within +-10% / MAPE / tau, tpnone mean error) | after |")
    print("|---|---|---|---|---|---|")
    for fit_name, fit_rows in runs.items():
        c = fitted(fit_rows)
        for name, rows in runs.items():
            for arch, after in scored(rows, c).items():
                print(f"| {fit_name} | {c * 1e6:.4f} | {name} | {arch} | {before[name][arch]} | {after} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
