"""Search quality on the embedded default: AMC vs uniform vs random (and N2N), same budgets, same pipeline.

For each budget (a fraction of the teacher's latency measured on this CPU), every agent runs with the
same episode count and the same fine-tuning, and every student is measured on the device. Prints one
table and writes it into docs/benchmarks.md (section "Search quality").

    python bench/search_quality.py [--ratios 0.7,0.5] [--agents amc,uniform,random,n2n] [--episodes 120]
                                   [--finetune-epochs 8] [--seeds 0] [--out bench-out] [--no-docs]

An agent may carry settings after a colon, as ``--agent-option`` takes them, to compare variants of one
agent side by side: ``--agents amc,amc:delta_decay=0.99 --seeds 0,1,2 --finetune-epochs 0 --no-docs``.
With several seeds, a last table gives each agent's mean over the seeds.

``--quantized`` compares pruning and int8 quantization instead (docs/benchmarks.md, "Pruning and
quantization"), per budget, with AMC, the same absolute budget and the same fine-tuning for all:

* prune only: AMC prunes the float teacher to the budget;
* quantize only: every layer in int8, no pruning (its measured latency is reported even when it misses
  the budget; the teacher distilled into a copy of itself for the same epochs, then quantized);
* prune then quantize: the prune-only policy, then every layer quantized (the usual practice);
* int8 + search: ``--quantize int8``, AMC prunes the int8 student to the budget;
* mixed: ``--quantize mixed``, AMC chooses int8 or float per group beside the channels.

    python bench/search_quality.py --quantized --ratios 0.5,0.35 --episodes 40 --finetune-epochs 2

``--model ARCH --input-size N`` runs the ``--quantized`` comparison on a torchvision architecture
instead of the embedded ResNet-56: trained here on digits at N px for ``--train-teacher`` epochs (once,
kept under ``--out``), then the same teacher for every row (a compute-bound network, where int8 pays).

    python bench/search_quality.py --quantized --model resnet18 --input-size 64 --ratios 0.5,0.25
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from pathlib import Path
from typing import Any

from hwcompress.budget import Budget
from hwcompress.search.config import SearchConfig
from hwcompress.search.run import run_search

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Search quality"
QUANTIZED_SECTION = "## Pruning and quantization"


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


def bench_teacher(args: argparse.Namespace, out: Path) -> tuple[Any, Any, float | None]:
    """The ``--quantized`` rows' teacher, its data and test accuracy: (None, None, None) for the embedded
    default (each run loads it), else ``--model`` trained on digits at ``--input-size`` px, kept in
    ``out`` so that reruns reuse it."""
    if args.model is None:
        return None, None, None
    from hwcompress.model import scratch
    from hwcompress.model.data import resolve_data
    from hwcompress.model.loading import LoadedModel
    from hwcompress.model.training import evaluate

    splits = resolve_data(args.data, input_size=args.input_size)
    cache = out / (f"teacher-{args.model}@{args.input_size}-e{args.train_teacher}"
                   + ("" if args.data == "digits" else f"-{args.data.replace(':', '-')}"))
    module, _ = scratch.trained_teacher(args.model, splits, args.train_teacher, 0, cache, log=lambda m: print(f"  {m}"))
    loaded = LoadedModel(args.model, module, None, tuple(splits.input_shape), "bench")
    return loaded, splits, evaluate(module, splits.test)


def quantize_only(args: argparse.Namespace, ratio: float, state: dict) -> dict:
    """The teacher in int8, no pruning: distilled into a copy of itself for the same epochs, quantized,
    measured paired with the teacher (what a search's verdict does), its accuracy as ONNX Runtime runs it."""
    import copy
    import time

    import torch

    from hwcompress.devices import resolve_device
    from hwcompress.measure.compare import PairedMeasurement
    from hwcompress.measure.resolve import make_settings, resolve_timing
    from hwcompress.model import embedded
    from hwcompress.model.data import resolve_data
    from hwcompress.model.training import evaluate
    from hwcompress.search.quantized import QuantizedStudents
    from hwcompress.search.scoring import torch_threads
    from hwcompress.slim.distill import distill
    from hwcompress.slim.pruning import find_channel_groups
    from hwcompress.slim.quantize import onnx_accuracy

    with torch_threads(1):
        started = time.perf_counter()
        if state.get("teacher") is not None:
            teacher, splits, meta = state["teacher"].module, state["data"], {"test_accuracy": state["teacher_accuracy"]}
        else:
            teacher, meta = embedded.default_teacher(progress=False)
            splits = resolve_data(None)
        teacher.eval()
        shape = tuple(splits.input_shape)
        descriptor = resolve_device("cpu")
        settings = make_settings(descriptor, per_layer=False)
        measure = PairedMeasurement(teacher, shape, resolve_timing(descriptor), settings)
        groups = find_channel_groups(teacher, torch.zeros(*shape))
        students = QuantizedStudents.for_teacher("int8", teacher, shape, splits.train, groups)
        before = students.accuracy(teacher, splits.test)
        student = copy.deepcopy(teacher)
        if args.finetune_epochs > 0:  # undone when it lowers the validation accuracy, as a search's fine-tuning is
            distill(student, teacher, splits.train, epochs=args.finetune_epochs, seed=0, progress=False)
            if evaluate(student, splits.val) < evaluate(teacher, splits.val):
                student = copy.deepcopy(teacher)
        _, result = students.quantize(student, "student", check=True)
        after = onnx_accuracy(result.path, splits.test)
        measured = measure(student, "student", rounds=5, onnx_path=result.path)
    limit = state.setdefault("budget_ms", ratio * measure.teacher_ms)
    return {"agent": "quantize only", "seed": 0, "val_acc_search": None, "budget": f"{ratio:g}x = {limit:.3f} ms",
            "teacher_ms": measure.teacher_ms, "student_ms": measured["median"], "predicted_ms": None,
            "met": measured["median"] <= limit, "compression": 1.0, "acc_teacher": meta.get("test_accuracy"),
            "acc_before": before, "acc_after": after, "search_s": 0.0, "eps": None, "episodes": 0,
            "int8_layers": len(result.int8_layers), "layers": len(result.int8_layers) + len(result.float_layers),
            "seconds": time.perf_counter() - started}


def quantized_run(args: argparse.Namespace, out: Path, ratio: float, state: dict, variant: str, quantize: str | None,
                  policy: Path | None = None, seed: int = 0, context: int | None = None, finetune_steps: int = 0) -> dict:
    """One row of the ``--quantized`` comparison; ``state["budget_ms"]`` carries the absolute budget. A
    budget no student of the variant can reach is a row too, with the smallest latency it could."""
    from hwcompress.errors import UserError
    from hwcompress.search.prepare import PYTHON_OBJECT
    from hwcompress.search.run import apply_policy

    folder = out / f"{variant.replace(' ', '-')}-{ratio:g}" if seed == 0 else out / f"{variant.replace(' ', '-')}-{ratio:g}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    budget = Budget.latency_ms(state["budget_ms"]) if state.get("budget_ms") else Budget.latency_ratio(ratio)
    given = {"teacher": state.get("teacher"), "data": state.get("data")}
    objects = {"model": PYTHON_OBJECT, "data": PYTHON_OBJECT} if given["teacher"] is not None else {}
    config = SearchConfig(budget=budget, agent="amc", episodes=args.episodes, seed=seed,
                          finetune_epochs=args.finetune_epochs, out=str(folder), quantize=quantize, lbound=args.lbound,
                          anchors=args.anchors, context_students=context, reward_finetune_steps=finetune_steps, **objects)
    try:
        doc = (apply_policy(config, policy, progress=False, **given) if policy else
               run_search(config, progress=False, **given)).report
    except UserError as error:
        print(f"{variant:>20} {ratio:g}x: {error}", flush=True)
        named = re.search(r"budget ([\d.]+) ms", str(error))
        limit = state.get("budget_ms") or (float(named.group(1)) if named else float("nan"))
        return {"agent": variant, "seed": seed, "budget": f"{ratio:g}x = {limit:.3f} ms", "refused": str(error), "folder": str(folder)}
    state["budget_ms"] = doc["budget"]["latency_ms"]
    r = {**row(variant, ratio, doc), "folder": str(folder),
         "int8_layers": (doc.get("quantization") or {}).get("int8_layers", 0), "layers": len(doc.get("layers") or [])}
    print(f"{variant:>20} {r['budget']:>20}  measured {r['student_ms']:.3f} ms  met {r['met']}  x{r['compression']:.2f} params  "
          f"int8 layers {r['int8_layers']}  acc {100 * r['acc_before']:.2f}% -> {100 * r['acc_after']:.2f}%  "
          f"search {r['search_s']:.0f}s", flush=True)
    return r


VARIANTS = ("prune only", "quantize only", "prune then quantize", "int8 + search", "mixed")


def quantized_side_by_side(args: argparse.Namespace, out: Path) -> list[dict]:
    """The ``--quantized`` comparison (module docstring): one row per variant and budget."""
    rows = []
    variants = [v.strip() for v in args.variants.split(",")]
    contexts = [int(c) for c in args.context_students.split(",")] if args.context_students else [None]
    steps = [int(n) for n in args.reward_finetune_steps.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    teacher, data, accuracy = bench_teacher(args, out)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        state: dict = {"teacher": teacher, "data": data, "teacher_accuracy": accuracy}
        if args.budget_ms:  # one absolute budget for every run, across sessions too (the ratio only labels it)
            state["budget_ms"] = args.budget_ms
        for index, seed in enumerate(int(s) for s in args.seeds.split(",")):  # the same absolute budget for every seed
            if "prune only" in variants:
                rows.append(quantized_run(args, out, ratio, state, "prune only", None, seed=seed, finetune_steps=steps[0]))
            pruned = Path(rows[-1]["folder"]) / "policy.json" if "prune only" in variants else None
            if "quantize only" in variants and index == 0:  # no search: one row per budget
                rows.append(quantize_only(args, ratio, state))
                print(f"{'quantize only':>20} {rows[-1]['budget']:>20}  measured {rows[-1]['student_ms']:.3f} ms  met "
                      f"{rows[-1]['met']}  acc {100 * rows[-1]['acc_before']:.2f}% -> {100 * rows[-1]['acc_after']:.2f}%", flush=True)
            if "prune then quantize" in variants:
                if pruned is not None and pruned.exists():
                    rows.append(quantized_run(args, out, ratio, state, "prune then quantize", "int8", pruned, seed=seed))
                else:
                    rows.append({"agent": "prune then quantize", "seed": seed, "budget": rows[-1]["budget"],
                                 "refused": "no prune-only student to quantize"})
            searches = [(v, c, n) for v in ("int8 + search", "mixed") if v in variants for c in contexts for n in steps]
            for variant, context, n in (searches if index % 2 == 0 else searches[::-1]):  # the searches alternate in order
                label = variant if context is None else f"{variant} ({'LUT' if context == 0 else f'context {context}'})"
                label += f" (ft {n})" if len(steps) > 1 else ""
                rows.append(quantized_run(args, out, ratio, state, label, "int8" if variant == "int8 + search" else "mixed",
                                          seed=seed, context=context, finetune_steps=n))
    return rows


def quantized_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        quantized_section(args),
        "",
        f"`python bench/search_quality.py --quantized --ratios {args.ratios} --episodes {args.episodes} "
        f"--finetune-epochs {args.finetune_epochs} --lbound {args.lbound} --seeds {args.seeds}{teacher_flags(args)}"
        f"{f' --reward-finetune-steps {args.reward_finetune_steps}' if args.reward_finetune_steps != '0' else ''}` on {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, ONNX Runtime CPU, 1 thread, AMC for every search. Same absolute budget per "
        "ratio (the first run turns the ratio into milliseconds), same fine-tuning (distillation in float, then static "
        "int8 quantization where the row quantizes). Latencies are measured medians (paired with the teacher) of the "
        "deployed file: the Q/DQ int8 model where the row quantizes; accuracies are on the data's test split, as ONNX "
        "Runtime runs the int8 model.",
        "",
        "| variant | seed | budget | student ms (measured) | met | int8 layers | params compression | acc. before FT | acc. after FT | search s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("refused"):
            lines.append(f"| {r['agent']} | {r.get('seed', 0)} | {r['budget']} | refused: {r['refused'].split(';')[0]} | no | | | | | |")
            continue
        lines.append(
            f"| {r['agent']} | {r.get('seed', 0) if r['agent'] != 'quantize only' else '-'} | {r['budget']} | {r['student_ms']:.3f} | {'yes' if r['met'] else 'no'} | "
            f"{r['int8_layers']}/{r['layers'] or '-'} | {r['compression']:.2f}x | {100 * r['acc_before']:.2f}% | "
            f"{100 * r['acc_after']:.2f}% | {r['search_s']:.0f} |"
        )
    measured = [r for r in rows if not r.get("refused")]
    if measured:
        lines += ["", f"Teacher: {measured[0]['teacher_ms']:.3f} ms measured, test accuracy {100 * measured[0]['acc_teacher']:.2f}%."]
    return "\n".join(lines) + "\n"


def quantized_section(args: argparse.Namespace) -> str:
    """The docs section of a ``--quantized`` run: one per teacher."""
    return QUANTIZED_SECTION if args.model is None else f"{QUANTIZED_SECTION}: {args.model} at {args.input_size} px"


def teacher_flags(args: argparse.Namespace) -> str:
    if args.model is None:
        return ""
    data = "" if args.data == "digits" else f" --data {args.data}"
    return f" --model {args.model} --input-size {args.input_size} --train-teacher {args.train_teacher}{data}"


def write_docs(text: str, section: str = SECTION) -> None:
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nNumbers measured by the scripts under `bench/`.\n\n"
    pattern = re.compile(rf"{re.escape(section)}\n.*?(?=\n## |\Z)", re.S)
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
    parser.add_argument("--quantized", action="store_true", help="prune vs quantize vs both (module docstring)")
    parser.add_argument("--lbound", type=float, default=0.2, help="--quantized: the searches' smallest preserve ratio")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="--quantized: this absolute budget for every run instead of --ratios of the first run's teacher "
                             "(give one ratio, as its label), so that seeds run in different sessions share it")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="--quantized: which rows to run, comma-separated (prune then quantize needs prune only); "
                             "int8 + search and mixed alternate in order from seed to seed")
    parser.add_argument("--model", default=None, help="--quantized: a torchvision architecture trained here on digits "
                        "(default: the embedded ResNet-56)")
    parser.add_argument("--input-size", type=int, default=64, help="--model: the digits' size in px")
    parser.add_argument("--data", default="digits",
                        help="--model: the data, as --data takes it (default digits; 'noisy_digits:splits' with bench/ on "
                             "PYTHONPATH: overlaid, noisy digits, bench/noisy_digits.py, where students differ more)")
    parser.add_argument("--anchors", type=int, default=None, choices=(2, 3),
                        help="--quantized: students measured to anchor each search's cost model (3: also one at the budget; "
                             "default: the search's, 3 under --quantize)")
    parser.add_argument("--train-teacher", type=int, default=2, help="--model: the teacher's training epochs")
    parser.add_argument("--context-students", default=None, metavar="N[,N]",
                        help="--quantized: students each search profiles to fit its cost model in context (0: the LUT alone; "
                             "default: the search's, 8 under --quantize); several values run each search once per value, "
                             "alternating, labelled '(LUT)' or '(context N)'")
    parser.add_argument("--reward-finetune-steps", default="0", metavar="N[,N]",
                        help="--quantized: each search's --reward-finetune-steps (prune only takes the first); several values "
                             "run each search once per value, alternating, labelled '(ft N)'")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    if sorted(set(variants) - set(VARIANTS)):
        parser.error(f"--variants: unknown {', '.join(sorted(set(variants) - set(VARIANTS)))} (choose from {', '.join(VARIANTS)})")
    if "prune then quantize" in variants and "prune only" not in variants:
        parser.error("--variants: prune then quantize quantizes the prune only student; name prune only too")
    if args.variants != ",".join(VARIANTS) and not args.no_docs:
        parser.error("--variants: a subset of the rows would replace the whole table in docs/benchmarks.md; add --no-docs")
    from hwcompress.cli.search_cmd import parse_agent_options

    out = Path(args.out)
    if args.quantized:
        rows = quantized_side_by_side(args, out)
        (out / "search_quality_quantized.json").write_text(json.dumps(rows, indent=1))
        text = quantized_markdown(rows, args)
        print(text)
        if not args.no_docs:
            write_docs(text, quantized_section(args))
        return
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
