"""Search quality on the embedded default: AMC vs uniform vs random (and N2N), same budgets, same pipeline.

For each budget (a fraction of the teacher's latency measured on this CPU), every agent runs with the
same episode count and the same fine-tuning, and every student is measured on the device. Prints one
table and writes it into docs/benchmarks.md (section "Search quality").

    python bench/search_quality.py [--ratios 0.7,0.5] [--agents amc,uniform,random,n2n] [--episodes 120]
                                   [--finetune-epochs 8] [--seeds 0] [--out bench-out] [--no-docs]

An agent may carry settings after a colon, as ``--agent-option`` takes them, to compare variants of one
agent side by side: ``--agents amc,amc:delta_decay=0.99 --seeds 0,1,2 --finetune-epochs 0 --no-docs``.
With several seeds, a last table gives each agent's mean over the seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from pathlib import Path

from hwcompress.budget import Budget
from hwcompress.search.config import SearchConfig
from hwcompress.search.run import run_search

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Search quality"


def row(agent: str, ratio: float, doc: dict) -> dict:
    t, s = doc["teacher"], doc["student"]
    return {
        "agent": agent,
        "seed": doc["config"]["seed"],
        "val_acc_search": s["val_accuracy_during_search"],
        "budget": f"{ratio:g}x = {doc['budget']['latency_ms']:.3f} ms",
        "teacher_ms": t["latency_ms"],
        "student_ms": s["latency_ms"],
        "predicted_ms": s["predicted_latency_ms"],
        "met": doc["budget_met"],
        "compression": t["params"] / s["params"],
        "acc_teacher": t["accuracy"],
        "acc_before": s["accuracy_before_finetune"],
        "acc_after": s["accuracy"],
        "search_s": doc["search_seconds"],
        "eps": doc["episodes_per_second"],
        "episodes": doc["episodes"],
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        SECTION,
        "",
        f"`python bench/search_quality.py --ratios {args.ratios} --agents {args.agents} --episodes {args.episodes} "
        f"--finetune-epochs {args.finetune_epochs}` on {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, ONNX Runtime CPU, 1 thread. Latencies are measured medians of the exported "
        "students; accuracy is on the digits test split (the search scores on the separate validation split).",
        "",
        "| agent | budget | student ms (measured) | predicted | met | params compression | acc. before FT | acc. after FT | search s | episodes/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['agent']} | {r['budget']} | {r['student_ms']:.3f} | {r['predicted_ms'] or float('nan'):.3f} | "
            f"{'yes' if r['met'] else 'no'} | {r['compression']:.2f}x | {100 * r['acc_before']:.2f}% | "
            f"{100 * r['acc_after']:.2f}% | {r['search_s']:.0f} | {r['eps'] or 0:.2f} |"
        )
    if rows:
        lines += ["", f"Teacher: {rows[0]['teacher_ms']:.3f} ms measured, test accuracy {100 * rows[0]['acc_teacher']:.2f}%."]
    return "\n".join(lines) + "\n"


def seed_means(rows: list[dict]) -> str:
    """Each agent's mean over the seeds, per budget (validation accuracy of the best policy during the
    search, test accuracy before and after fine-tuning, measured latency)."""
    import statistics

    lines = ["| agent | budget | seeds | best val. acc. during search | acc. before FT | acc. after FT | student ms | met |",
             "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["agent"], r["budget"]) for r in rows))
    for agent, budget in keys:
        group = [r for r in rows if r["agent"] == agent and r["budget"] == budget]

        def mean(name: str, group: list = group) -> float:
            return statistics.mean(r[name] or 0.0 for r in group)

        lines.append(f"| {agent} | {budget} | {len(group)} | {100 * mean('val_acc_search'):.2f}% | {100 * mean('acc_before'):.2f}% | "
                     f"{100 * mean('acc_after'):.2f}% | {mean('student_ms'):.3f} | {sum(r['met'] for r in group)}/{len(group)} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nNumbers measured by the scripts under `bench/`.\n\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: text.rstrip("\n") + "\n", current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    DOCS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.7,0.5")
    # n2n: --episodes is its rollout budget (12 + 12 epochs of 5 students at 120), each student distilled briefly.
    parser.add_argument("--agents", default="amc,uniform,random,n2n")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--finetune-epochs", type=float, default=8.0)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every agent runs with each")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    from hwcompress.cli.search_cmd import parse_agent_options

    out = Path(args.out)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        budget_ms = None
        for seed in [int(s) for s in args.seeds.split(",")]:
            for spec in args.agents.split(","):
                agent, _, options = spec.partition(":")
                folder = out / f"{spec.replace(':', '-').replace('=', '')}-{ratio:g}-s{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                # The first run turns the ratio into milliseconds; the others get the same absolute budget.
                budget = Budget.latency_ms(budget_ms) if budget_ms else Budget.latency_ratio(ratio)
                config = SearchConfig(budget=budget, agent=agent, episodes=args.episodes,
                                      seed=seed, finetune_epochs=args.finetune_epochs, out=str(folder),
                                      agent_options=parse_agent_options(tuple(o for o in options.split(";") if o)))
                doc = run_search(config, progress=False).report
                budget_ms = doc["budget"]["latency_ms"]
                rows.append(row(spec, ratio, doc))
                r = rows[-1]
                print(f"{spec:>8} s{seed} {r['budget']:>20}  measured {r['student_ms']:.3f} ms (pred {r['predicted_ms'] or 0:.3f})  "
                      f"met {r['met']}  x{r['compression']:.2f} params  val {100 * (r['val_acc_search'] or 0):.2f}%  "
                      f"acc {100 * r['acc_before']:.2f}% -> {100 * r['acc_after']:.2f}%  search {r['search_s']:.0f}s", flush=True)
    if len({r["seed"] for r in rows}) > 1:
        print(seed_means(rows))
    (out / "search_quality.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows, args)
    print(text)
    if not args.no_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
