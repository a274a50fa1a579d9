"""Re-apply searched policies with other fine-tuning, one after another: what each search found, apart
from how far its final fine-tuning got.

Each folder is a finished ``bench/search_quality.py --quantized`` row (result.json and policy.json). Its
policy is applied to the same teacher (``--policy``, no search) with ``--finetune-epochs`` and seed 0 for
every row, at the row's own absolute budget and precision mode, and measured again on this CPU; the
table gives the accuracy the search's own fine-tuning had reached beside the new one.

    python bench/reapply_policies.py --finetune-epochs 8 --model mobilenet_v2 --input-size 64 \\
        --train-teacher 4 --teacher-dir bench-out bench-out/mixed-0.35 bench-out/int8-+-search-0.35
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import search_quality as sq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished search folders (result.json, policy.json)")
    parser.add_argument("--finetune-epochs", type=float, default=8.0)
    parser.add_argument("--model", required=True, help="the torchvision architecture the searches' teacher is")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--train-teacher", type=int, default=2)
    parser.add_argument("--teacher-dir", type=Path, required=True,
                        help="the --out of the search_quality.py run, where its teacher is kept")
    parser.add_argument("--out", type=Path, default=Path("bench-out/reapplied"))
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not (f / "result.json").exists() or not (f / "policy.json").exists()]
    if missing:
        parser.error(f"no result.json and policy.json in: {', '.join(missing)}")
    args.episodes, args.lbound, args.anchors = 1, 0.2, None  # what quantized_run reads; a policy run searches nothing
    teacher, data, _ = sq.bench_teacher(args, args.teacher_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in args.folders:
        doc = json.loads((folder / "result.json").read_text())
        state = {"teacher": teacher, "data": data, "budget_ms": doc["budget"]["latency_ms"]}
        ratio = round(doc["budget"]["latency_ms"] / doc["teacher"]["latency_ms"], 2)  # labels the row only
        row = sq.quantized_run(args, args.out, ratio, state, folder.name, doc["config"]["quantize"], policy=folder / "policy.json")
        row.update(source=str(folder), searched_acc_after=doc["student"]["accuracy"],
                   searched_epochs=doc["config"]["finetune_epochs"], val_acc_search=doc["student"]["val_accuracy_during_search"])
        rows.append(row)
    (args.out / "reapplied.json").write_text(json.dumps(rows, indent=1))
    print(f"\n| search | val. acc. in the search | acc. after its own fine-tuning | student ms (measured again) | met | "
          f"acc. after {args.finetune_epochs:g} epochs |\n|---|---|---|---|---|---|")
    for r in rows:
        if r.get("refused"):
            print(f"| {r['source']} | | | refused: {r['refused']} | no | |")
            continue
        print(f"| {r['source']} | {100 * r['val_acc_search']:.2f}% | {100 * r['searched_acc_after']:.2f}% "
              f"({r['searched_epochs']:g} epochs) | {r['student_ms']:.3f} | {'yes' if r['met'] else 'no'} | {100 * r['acc_after']:.2f}% |")


if __name__ == "__main__":
    main()
