"""How far two LUT recordings of the same machine agree, and what is left once a run's level is matched.

Two ``bench/lut_fidelity.py`` runs, each recording its own table (``--lut``) minutes apart, give two
tables of the same networks. This script rebuilds the first run's variants from its seed (the same draws,
so the same networks, as ``bench/conversion_rules.py`` does), predicts each from both tables and prints,
per architecture, nothing being timed again:

* **the two recordings against each other**: within +-10% / MAPE / Kendall tau of one table's predictions
  against the other's (how reproducible a recording is, apart from any measurement);
* **each run against its own table and against the other one** (within +-10% / MAPE / tau as measured),
  and the same after matching the run's level: the predictions scaled by the median of measured over
  predicted, so that what is left is the cost model's shape, not the machine's state at recording time;
* **each kind's mean signed error minus the project kind's** (``tp8``, ``tpnone``), as measured: a bias
  between aligned and misaligned variants that no overall level removes.

    python bench/lut_fidelity.py --models mobilenet_v3_small,efficientnet_b0,regnet_x_400mf --input-size 96 \\
        --variants 8 --off-path --passes 2 --reference both --lut A.lut.json --json A.json
    python bench/lut_fidelity.py ... --lut B.lut.json --json B.json          # minutes later, same seed
    python bench/recording_agreement.py A.json A.lut.json B.json B.lut.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lut_fidelity as lf  # noqa: E402

from hwcompress.devices import resolve_device  # noqa: E402
from hwcompress.lut.table import LatencyTable  # noqa: E402
from hwcompress.model.analysis import analyze  # noqa: E402


def predictions(run: dict, tables: list[LatencyTable], device: str) -> dict[str, list[tuple[str, int, list[float]]]]:
    """Per architecture, ``(kind, variant, [prediction from each table])`` for the run's variants, rebuilt from its seed."""
    shape = tuple(run["input_shape"])
    out: dict[str, list[tuple[str, int, list[float]]]] = {}
    for name, kind, index, model in lf.rebuilt_variants(run, resolve_device(device, None).channel_multiple):
        specs = analyze(model, shape).layers
        out.setdefault(name, []).append((kind, index, [t.predict_detail(specs).total_ms for t in tables]))
    return out


def line(predicted: list[float], measured: list[float]) -> str:
    got = lf.scores(predicted, measured)
    return f"{100 * got['within_10pct']:5.1f}% / {100 * got['mape']:4.1f}% / {got['kendall_tau']:.3f}"


def matched(predicted: list[float], measured: list[float]) -> list[float]:
    """``predicted`` scaled by the median of measured over predicted (the run's level matched)."""
    level = statistics.median(m / p for m, p in zip(measured, predicted))
    return [level * p for p in predicted]


def kind_bias(rows: list[tuple[str, float, float]]) -> str:
    """Each kind's mean signed error (as measured) minus the project kind's, in points."""
    means = {}
    for kind in dict.fromkeys(k for k, _, _ in rows):
        errors = [p / m - 1 for k, p, m in rows if k == kind]
        means[kind] = 100 * statistics.mean(errors)
    base = means.get("project", 0.0)
    return ", ".join(f"{kind} {value - base:+.1f}" for kind, value in means.items() if kind != "project")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="the first lut_fidelity.py --json document")
    parser.add_argument("lut_a", type=Path, help="the LUT the first run recorded")
    parser.add_argument("run_b", type=Path, help="the second run (the same seed, variants and kinds)")
    parser.add_argument("lut_b", type=Path, help="the LUT the second run recorded")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    missing = [str(p) for p in (args.run_a, args.lut_a, args.run_b, args.lut_b) if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    runs = [json.loads(p.read_text()) for p in (args.run_a, args.run_b)]
    for key in ("seed", "variants", "kinds"):
        if runs[0]["settings"].get(key) != runs[1]["settings"].get(key):
            parser.error(f"the two runs differ in {key}: their variants are not the same networks")
    tables = [LatencyTable.load(args.lut_a), LatencyTable.load(args.lut_b)]
    print("within +-10% / MAPE / Kendall tau; 'level matched': predictions scaled by the run's median measured/predicted")
    for name, rows in predictions(runs[0], tables, args.device).items():
        a = [p[0] for _, _, p in rows]
        b = [p[1] for _, _, p in rows]
        print(f"{name}\n  the two recordings against each other (B's predictions against A's): {line(b, a)}, "
              f"B/A median x{statistics.median(y / x for x, y in zip(a, b)):.3f}")
        for label, run in (("A", runs[0]), ("B", runs[1])):
            measured = {(r["kind"], r["variant"]): r["measured_ms"] for r in run["results"][name]["rows"]}
            m = [measured[(kind, index)] for kind, index, _ in rows]
            for table_label, p in (("A", a), ("B", b)):
                bias = kind_bias([(kind, pi, mi) for (kind, _, _), pi, mi in zip(rows, p, m)])
                print(f"  run {label}, table {table_label}: as measured {line(p, m)}; level matched {line(matched(p, m), m)}; "
                      f"kinds minus project: {bias} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
