"""What one search episode and one budget repair cost: the scorer and repair of before, against now.

Before: each student's BatchNorm statistics re-estimated on 256 training images, weights in the default
(NCHW) memory order, and the budget repair scoring every one of its 8 candidate steps at every step.
Now (the defaults): 64 images, channels-last weights (exact), each BatchNorm folded into its
convolution after re-estimation and the student scored under inference mode (same accuracies), racing
(in the searches: a student clearly short of the best so far scored on a third of the images), the
evaluation in ``--scoring-precision`` (fp32, the search's default; ``auto`` evaluates in bfloat16 where
the CPU has a unit for it; the reference scorer stays fp32, so the rank agreement shows what bfloat16
costs), and the
repair's steps scored incrementally (a step's accuracy loss measured once and reused while its group keeps its count,
``CostModel.trimmed_policy``). For the embedded default (ResNet-56 on digits at 32 px) and resnet18
trained here on digits at 64 px, side by side and interleaved:

1. **scoring**: ``--students`` random students (seeded preserve ratios in [0.2, 1]) scored by both
   scorers in alternating order; seconds per score, and each scorer's Kendall tau and mean absolute
   difference against a reference scorer (BatchNorm over 1024 images, accuracy on validation + test),
   so a cheaper scorer is shown to rank students as well as the dearer one;
2. **repair**: each of ``--repairs`` random students trimmed to 85% of its MACs with the search's score
   (``trimmed_policy``), every candidate scored vs incremental, each with a fresh memo: students scored,
   seconds, and the repaired student's validation accuracy;
3. **search** (``--episodes N``, 0 skips it): a real AMC search (``run_search``) at ``--ratio`` 0.6x of the teacher's
   latency measured on this CPU, before and after in alternating order; episodes per hour from
   ``search_seconds``, repair seconds and the accuracy before fine-tuning from ``result.json``.

    python bench/episode_cost.py [--setups embedded,resnet18@64] [--students 16] [--repairs 3] [--episodes 24]
    python bench/episode_cost.py --rank-study 40     # would fewer images rank students as well?
    python bench/episode_cost.py --precision-study --setups embedded --repeats 3   # fp32 or bf16 scoring?
    python bench/episode_cost.py --racing-study --fixed-cost --repeats 8   # racing off or on?

``--racing-study`` is the same study with racing off and on (``--racing``: a student clearly short of the best so far
is scored on a third of the validation images), each run's episodes per hour and how many scores racing cut beside.

``--precision-study``: the same search ("now" settings, ``--episodes`` at ``--ratio``) scored in fp32 and in
bf16, alternating, for seeds ``--seed`` .. ``--seed + --repeats - 1``; each final student's test accuracy
before fine-tuning as the search reports it and with its BatchNorm re-estimated on 64, 256 and 1024
training images (does the number of images explain a gap?). With ``--fixed-cost`` every search of the study
runs on this CPU *predicted from its LUT* (a device file naming the LUT this machine recorded, read-only, so
nothing is measured during the study): the budget and the cost model are then the same numbers in every run
(a predicted device has no measured repairs; its grow step follows the same prediction), the searches are deterministic (the first seed is searched twice in each arm to show it), and the
two precisions differ only in how candidates were scored. Without it, each search measures its own teacher,
budget and anchors on a machine whose speed moves, which is what made two earlier studies disagree.
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.model import embedded, scratch
from hwcompress.model.analysis import analyze
from hwcompress.model.data import resolve_data
from hwcompress.model.loading import LoadedModel
from hwcompress.search import scoring
from hwcompress.search.config import SearchConfig
from hwcompress.search.cost import CostModel
from hwcompress.search.prepare import PYTHON_OBJECT
from hwcompress.search.run import run_search
from hwcompress.slim.pruning import find_channel_groups, prune_channels

BEFORE = {"bn_calibration": 256, "channels_last": False, "incremental": False, "fold_norms": False, "precision": "fp32",
          "racing": False}
NOW = {"bn_calibration": SearchConfig.__dataclass_fields__["bn_calibration"].default, "channels_last": True,
       "incremental": True, "fold_norms": True, "precision": SearchConfig.__dataclass_fields__["scoring_precision"].default,
       "racing": SearchConfig.__dataclass_fields__["racing"].default}
#: The two arms of ``--precision-study`` and of ``--racing-study``: labels and the search settings they differ in.
STUDIES = {"precision": {"fp32": {"scoring_precision": "fp32"}, "bf16": {"scoring_precision": "bf16"}},
           "racing": {"full": {"racing": False}, "raced": {"racing": True}}}
REFERENCE_BN = 1024


def setup(name: str, cache: Path) -> tuple[Any, Any, str]:
    """The teacher, its data and a label."""
    if name == "embedded":
        module, _ = embedded.default_teacher(progress=False)
        return module, resolve_data(None), "ResNet-56, digits 32 px"
    arch, _, size = name.partition("@")
    splits = resolve_data("digits", input_size=int(size or 64))
    module, _ = scratch.trained_teacher(arch, splits, 2, 0, cache / name, log=lambda m: print(f"  {m}"))
    return module, splits, f"{arch} trained here 2 epochs, digits {size} px"


class Scorer:
    """The search's float scorer under one setting, counting the students it scores."""

    def __init__(self, teacher: Any, example: Any, groups: list[Any], splits: Any, setting: dict[str, Any],
                 val: Any = None) -> None:
        self.teacher, self.example, self.groups, self.splits = teacher, example, groups, splits
        self.setting, self.val = setting, val if val is not None else splits.val
        self.cache: dict[tuple, float] = {}
        self.seconds = 0.0
        self.pairs = scoring.conv_norm_pairs(teacher, example) if setting.get("fold_norms") else []

    def __call__(self, keep: dict[str, int]) -> float:
        key = tuple(keep.get(g.name, g.channels) for g in self.groups)
        if key not in self.cache:
            started = time.perf_counter()
            student = prune_channels(self.teacher, self.example, keep)
            if self.setting["channels_last"]:
                student = student.to(memory_format=torch.channels_last)
            self.cache[key] = scoring.score_student(student, self.splits.train, self.val, self.setting["bn_calibration"],
                                                    self.pairs if self.setting.get("fold_norms") else None,
                                                    precision=self.setting.get("precision", "fp32"))
            self.seconds += time.perf_counter() - started
        return self.cache[key]


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def random_policy(groups: list[Any], rng: random.Random) -> dict[str, int]:
    return {g.name: max(g.min_channels, round(g.channels * rng.uniform(0.2, 1.0))) for g in groups}


def scoring_part(name: str, teacher: Any, splits: Any, args: argparse.Namespace) -> dict[str, Any]:
    example = torch.zeros(*splits.input_shape)
    groups = find_channel_groups(teacher, example)
    rng = random.Random(args.seed)
    students = [random_policy(groups, rng) for _ in range(args.students)]
    reference_set = torch.utils.data.ConcatDataset([splits.val, splits.test])
    reference = Scorer(teacher, example, groups, splits, {"bn_calibration": REFERENCE_BN, "channels_last": True},
                       reference_set)
    truth = [reference(keep) for keep in students]
    arms = {"before": Scorer(teacher, example, groups, splits, BEFORE), "now": Scorer(teacher, example, groups, splits, NOW)}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for index, keep in enumerate(students):
        for arm in (("before", "now") if index % 2 == 0 else ("now", "before")):
            spent = arms[arm].seconds
            arms[arm](keep)
            times[arm].append(arms[arm].seconds - spent)
    row = {"setup": name, "students": len(students), "val_images": len(splits.val), "reference_images": len(reference_set)}
    for arm, scorer in arms.items():
        values = [scorer(keep) for keep in students]
        row[arm] = {"s_per_score": statistics.median(times[arm]), "tau": kendall_tau(values, truth),
                    "mean_abs_diff": statistics.mean(abs(a - b) for a, b in zip(values, truth)),
                    "mean_acc": statistics.mean(values)}
    row["speedup"] = row["before"]["s_per_score"] / row["now"]["s_per_score"]

    # 2. the repair: trimmed to 85% of each student's MACs, every candidate scored vs incremental
    layers = analyze(teacher, tuple(example.shape)).layers
    model = CostModel(layers, groups, metric="macs", multiple=8)
    repairs = []
    for index, keep in enumerate(students[: args.repairs]):
        goal = 0.85 * model.cost(keep)
        result = {}
        for arm in (("before", "now") if index % 2 == 0 else ("now", "before")):
            scorer = Scorer(teacher, example, groups, splits, NOW)  # same scorer: only the repair's rule differs
            started = time.perf_counter()
            fixed = model.trimmed_policy(keep, goal, score=scorer, incremental=(arm == "now"))
            result[arm] = {"seconds": time.perf_counter() - started, "scored": len(scorer.cache), "accuracy": scorer(fixed)}
        repairs.append(result)
    row["repair"] = {arm: {k: statistics.mean(r[arm][k] for r in repairs) for k in ("seconds", "scored", "accuracy")}
                     for arm in ("before", "now")} if repairs else None
    return row


def rank_study(name: str, teacher: Any, splits: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--rank-study N``: would fewer images rank students as well? N random students scored by the
    reference scorer and by the current scorer with 128 or 64 BatchNorm images, on all the validation
    images or a stratified half, the arms in rotating order; seconds per score and Kendall tau against
    the reference for each."""
    from hwcompress.model.data import stratified_subset

    example = torch.zeros(*splits.input_shape)
    groups = find_channel_groups(teacher, example)
    rng = random.Random(args.seed + 1)
    students = [random_policy(groups, rng) for _ in range(args.rank_study)]
    reference = Scorer(teacher, example, groups, splits, {"bn_calibration": REFERENCE_BN, "channels_last": True,
                                                          "fold_norms": True},
                       torch.utils.data.ConcatDataset([splits.val, splits.test]))
    truth = [reference(keep) for keep in students]
    half = stratified_subset(splits.val, len(splits.val) // 2)
    arms = {
        (bn, label): Scorer(teacher, example, groups, splits, {**NOW, "bn_calibration": bn}, val)
        for bn in (NOW["bn_calibration"], 64) for label, val in (("all", splits.val), ("half", half))
    }
    keys = list(arms)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    for index, keep in enumerate(students):
        for key in keys[index % len(keys):] + keys[:index % len(keys)]:
            spent = arms[key].seconds
            arms[key](keep)
            times[key].append(arms[key].seconds - spent)
    rows = []
    for (bn, label), scorer in arms.items():
        values = [scorer(keep) for keep in students]
        rows.append({"setup": name, "bn_images": bn, "val_images": len(scorer.val), "val": label,
                     "s_per_score": statistics.median(times[(bn, label)]), "tau": kendall_tau(values, truth),
                     "mean_abs_diff": statistics.mean(abs(a - b) for a, b in zip(values, truth))})
        print(f"  rank study {name}: BN {bn} images, {label} validation ({len(scorer.val)}): "
              f"{rows[-1]['s_per_score']:.3f} s per score, tau {rows[-1]['tau']:.3f}")
    return rows


def fixed_cost_device(name: str, loaded: Any, splits: Any, folder: Path) -> Path:
    """A device file for this CPU predicted from its LUT, the LUT holding ``loaded``'s layers.

    One measured search (1 episode, no fine-tuning) records the teacher's layers into this machine's
    cached LUT where they are missing (a cached LUT only loads); the device file then names that LUT and
    is never measured, so every search on it shares one cost model and one budget.
    """
    from hwcompress.devices.catalog import resolve_device

    config = SearchConfig(budget=Budget.latency_ratio(0.9), agent="uniform", episodes=1, finetune_epochs=0,
                          out=str(folder / f"{name}-prime"), model=PYTHON_OBJECT, data=PYTHON_OBJECT, verdict_rounds=5)
    doc = run_search(config, progress=False, teacher=loaded, data=splits).report
    lut = Path(doc["lut"]).resolve()
    cpu = resolve_device("cpu")
    device = folder / f"{name}-fixed-cost.toml"
    device.write_text(f'name = "cpu"\ndescription = "this CPU predicted from its LUT (a fixed cost model)"\n'
                      f'profiler = "{cpu.profiler}"\ndetect = {{ never = true }}\nlut = "{lut}"\n')
    print(f"  fixed cost model: {lut} (teacher {doc['teacher']['latency_ms']:.3f} ms measured while priming it)")
    return device


def arm_study(name: str, teacher: Any, splits: Any, args: argparse.Namespace, folder: Path,
              arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from hwcompress.model.training import evaluate

    loaded = LoadedModel(name, teacher, None, tuple(splits.input_shape), "bench")
    example = torch.zeros(*splits.input_shape)
    device_file = str(fixed_cost_device(name, loaded, splits, folder)) if args.fixed_cost else None
    rows = []
    first_arm, second_arm = arms
    runs = [(args.seed + r, a) for r in range(args.repeats) for a in ((first_arm, second_arm) if r % 2 == 0 else (second_arm, first_arm))]
    if args.fixed_cost:
        # the same searches again: a fixed cost model makes them deterministic
        runs[1:1] = [(args.seed, first_arm)]
        runs[3:3] = [(args.seed, second_arm)]
    for seed, arm in runs:
        out = folder / f"{name}-{arm}-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        config = SearchConfig(budget=Budget.latency_ratio(args.ratio), agent="amc", episodes=args.episodes, seed=seed,
                              finetune_epochs=0, out=str(out), model=PYTHON_OBJECT, data=PYTHON_OBJECT,
                              device_file=device_file, **arms[arm])
        doc = run_search(config, progress=False, teacher=loaded, data=splits).report
        keep = {row["group"]: row["kept"] for row in doc["policy"]}
        by_images = {}
        for images in (64, 256, 1024):
            student = scoring.build_student(teacher, example, keep)
            scoring.recalibrate_batchnorm(student, splits.train, images)
            by_images[images] = evaluate(student, splits.test)
        rows.append({"setup": name, "seed": seed, "arm": arm, "acc": doc["student"]["accuracy_before_finetune"],
                     "episodes_per_hour": 3600 * doc["episodes"] / doc["search_seconds"],
                     "cut": (doc["scoring"].get("racing") or {}).get("cut"),
                     "policy": [row["kept"] for row in doc["policy"]], "verdict": doc["verdict"]["source"],
                     "student_ms": doc["student"].get("latency_ms") or doc["student"].get("predicted_latency_ms"),
                     "budget_ms": doc["budget"]["latency_ms"],
                     "search_score": doc["student"].get("val_accuracy_during_search"),
                     "repairs": len(doc.get("budget_repairs") or []), "by_images": by_images})
        print(f"  {name} seed {seed} {arm}: {rows[-1]['episodes_per_hour']:.0f} episodes/h, accuracy before FT {rows[-1]['acc']:.2%} "
              f"({rows[-1]['repairs']} repairs), scored {rows[-1]['search_score']:.2%} during the search", flush=True)
    return rows


def search_part(name: str, teacher: Any, splits: Any, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    loaded = LoadedModel(name, teacher, None, tuple(splits.input_shape), "bench")
    rows = []
    for repeat in range(args.repeats):
        for arm in (("before", "now") if repeat % 2 == 0 else ("now", "before")):
            setting = BEFORE if arm == "before" else NOW
            out = folder / f"{name}-{arm}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            config = SearchConfig(budget=Budget.latency_ratio(args.ratio), agent="amc", episodes=args.episodes,
                                  seed=args.seed + repeat, finetune_epochs=0, out=str(out), model=PYTHON_OBJECT,
                                  data=PYTHON_OBJECT, bn_calibration=setting["bn_calibration"],
                                  scoring_precision=setting["precision"], racing=setting["racing"])
            scoring.CHANNELS_LAST = setting["channels_last"]
            scoring.FOLD_NORMS = setting["fold_norms"]
            original = CostModel.trimmed_policy
            CostModel.trimmed_policy = lambda self, *a, _o=original, _i=setting["incremental"], **k: _o(  # type: ignore
                self, *a, **{**k, "incremental": _i})
            try:
                doc = run_search(config, progress=False, teacher=loaded, data=splits).report
            except UserError as error:  # a budget at the edge of what this run measured reachable
                print(f"  search {name} {arm}: refused: {error}")
                continue
            finally:
                CostModel.trimmed_policy = original  # type: ignore[method-assign]
                scoring.CHANNELS_LAST = True
                scoring.FOLD_NORMS = True
            rows.append({"setup": name, "arm": arm, "seed": args.seed + repeat, "episodes_per_hour": 3600 * doc["episodes"] / doc["search_seconds"],
                         "repair_s": doc.get("repair_seconds"), "repairs": len(doc.get("budget_repairs") or []),
                         "acc_before_ft": doc["student"]["accuracy_before_finetune"], "met": doc["budget_met"],
                         "student_ms": doc["student"]["latency_ms"], "budget_ms": doc["budget"]["latency_ms"]})
            print(f"  search {name} {arm}: {rows[-1]['episodes_per_hour']:.0f} episodes/h, repair "
                  f"{rows[-1]['repair_s']} s ({rows[-1]['repairs']} repairs), accuracy before FT {rows[-1]['acc_before_ft']:.2%}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="embedded,resnet18@64")
    parser.add_argument("--students", type=int, default=16)
    parser.add_argument("--repairs", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=24, help="search episodes per run (0: no search part)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="search runs per arm (alternating order), the k-th with seed --seed + k")
    parser.add_argument("--ratio", type=float, default=0.6, help="the searches' budget, a fraction of the teacher's latency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scoring-precision", choices=("fp32", "auto", "bf16"), default=NOW["precision"],
                        help="what the 'now' arm evaluates candidates in (default: the search's default)")
    parser.add_argument("--precision-study", action="store_true",
                        help="instead: searches scored in fp32 and in bf16, --repeats seeds, accuracy before fine-tuning")
    parser.add_argument("--racing-study", action="store_true",
                        help="instead: searches with racing off and on (--racing), --repeats seeds, episodes per hour and "
                             "accuracy before fine-tuning")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="with --precision-study or --racing-study: every search on this CPU predicted from its LUT (one budget, one cost "
                             "model, nothing measured), so that only the scoring differs between runs")
    parser.add_argument("--rank-study", type=int, default=0,
                        help="instead: N students, would 64 BatchNorm images or half the validation set rank them as well?")
    args = parser.parse_args()
    if args.fixed_cost and not (args.precision_study or args.racing_study):
        parser.error("--fixed-cost goes with --precision-study or --racing-study")
    if args.precision_study and args.racing_study:
        parser.error("one study at a time: --precision-study or --racing-study")
    NOW["precision"], precision_reason = scoring.resolve_scoring_precision(args.scoring_precision)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="hwcompress-episode-cost-"))
    rows, searches = [], []
    with scoring.torch_threads(1):
        if args.precision_study or args.racing_study:
            arms = STUDIES["precision" if args.precision_study else "racing"]
            first_arm, second_arm = arms
            study = []
            for name in args.setups.split(","):
                teacher, splits, label = setup(name, folder)
                print(f"{name}: {label}")
                study += arm_study(name, teacher, splits, args, folder, arms)
            print(f"\n{platform.processor() or platform.machine()}, 1 thread; {time.perf_counter() - started:.0f} s in all\n")
            print("| setup | seed | arm | episodes/hour (cut) | acc. before FT (repairs) | its score during the search | "
                  "student / budget ms (verdict) | BN 64 / 256 / 1024 images |")
            print("|---|---|---|---|---|---|---|---|")
            for r in study:
                print(f"| {r['setup']} | {r['seed']} | {r['arm']} | {r['episodes_per_hour']:.0f}"
                      + (f" ({r['cut']})" if r["cut"] is not None else "") + f" | {100 * r['acc']:.2f}% ({r['repairs']}) | "
                      f"{100 * r['search_score']:.2f}% | {r['student_ms']:.3f} / {r['budget_ms']:.3f} ({r['verdict']}) | "
                      + " / ".join(f"{100 * v:.2f}" for v in r["by_images"].values()) + " |")
            for name in dict.fromkeys(r["setup"] for r in study):
                mine = [r for r in study if r["setup"] == name]
                first = {}
                for r in mine:  # the first run of each (seed, arm); a repeat says whether the search is deterministic
                    key = (r["seed"], r["arm"])
                    if key in first:
                        same = first[key]["policy"] == r["policy"] and first[key]["acc"] == r["acc"]
                        print(f"{name}: seed {key[0]} {key[1]} searched twice: {'the same' if same else 'a different'} "
                              f"student ({100 * first[key]['acc']:.2f}% and {100 * r['acc']:.2f}%)")
                    else:
                        first[key] = r
                print(f"{name}: mean accuracy before FT, episodes/hour " + ", ".join(
                    f"{a} {100 * statistics.mean(r['acc'] for r in first.values() if r['arm'] == a):.2f}%, "
                    f"{statistics.mean(r['episodes_per_hour'] for r in first.values() if r['arm'] == a):.0f}" for a in arms))
                seeds = sorted({seed for seed, a in first if a == first_arm and (seed, second_arm) in first})
                gaps = [first[(seed, second_arm)]["acc"] - first[(seed, first_arm)]["acc"] for seed in seeds]
                if gaps:
                    rates = [first[(seed, second_arm)]["episodes_per_hour"] / first[(seed, first_arm)]["episodes_per_hour"] for seed in seeds]
                    print(f"{name}: {second_arm} - {first_arm} per seed (points): " + ", ".join(f"{100 * g:+.2f}" for g in gaps)
                          + f"; mean {100 * statistics.mean(gaps):+.2f}, {second_arm} ahead on {sum(g > 0 for g in gaps)}, "
                          f"tied on {sum(g == 0 for g in gaps)}, behind on {sum(g < 0 for g in gaps)} of {len(gaps)}; "
                          f"median {100 * statistics.median(gaps):+.2f}; the same student (policy) in "
                          f"{sum(first[(seed, second_arm)]['policy'] == first[(seed, first_arm)]['policy'] for seed in seeds)}; "
                          f"episodes/hour {second_arm} / {first_arm} per seed: " + ", ".join(f"{x:.2f}" for x in rates)
                          + f" (geometric mean {statistics.geometric_mean(rates):.2f})")
            shutil.rmtree(folder, ignore_errors=True)
            return
        if args.rank_study:
            study = []
            for name in args.setups.split(","):
                teacher, splits, label = setup(name, folder)
                print(f"{name}: {label}")
                study += rank_study(name, teacher, splits, args)
            print(f"\n{platform.processor() or platform.machine()}, 1 thread; {time.perf_counter() - started:.0f} s in all\n")
            print("| setup | BN images | validation images | s per score | Kendall tau vs reference | mean abs. diff. |")
            print("|---|---|---|---|---|---|")
            for r in study:
                print(f"| {r['setup']} | {r['bn_images']} | {r['val_images']} ({r['val']}) | {r['s_per_score']:.3f} | "
                      f"{r['tau']:.3f} | {100 * r['mean_abs_diff']:.2f} pts |")
            shutil.rmtree(folder, ignore_errors=True)
            return
        for name in args.setups.split(","):
            teacher, splits, label = setup(name, folder)
            print(f"{name}: {label}")
            rows.append(scoring_part(name, teacher, splits, args))
            if args.episodes:
                searches += search_part(name, teacher, splits, args, folder)
    print(f"\n{platform.processor() or platform.machine()}, 1 thread, scoring now in {NOW['precision']} "
          f"({precision_reason}); {time.perf_counter() - started:.0f} s in all\n")
    print("| setup | scorer | s per score | Kendall tau vs reference | mean abs. diff. | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for arm in ("before", "now"):
            a = r[arm]
            print(f"| {r['setup']} ({r['students']} students, {r['val_images']} val images) | {arm} | {a['s_per_score']:.3f} | "
                  f"{a['tau']:.3f} | {100 * a['mean_abs_diff']:.2f} pts | {'' if arm == 'before' else format(r['speedup'], '.2f') + 'x'} |")
    print("\n| setup | repair rule | students scored | seconds | val. accuracy after |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["repair"]:
            for arm, label in (("before", "every candidate"), ("now", "incremental")):
                a = r["repair"][arm]
                print(f"| {r['setup']} | {label} | {a['scored']:.1f} | {a['seconds']:.1f} | {100 * a['accuracy']:.2f}% |")
    if searches:
        print("\n| setup | arm | seed | episodes/hour | repair s (repairs) | budget met | acc. before FT |")
        print("|---|---|---|---|---|---|---|")
        for s in searches:
            print(f"| {s['setup']} | {s['arm']} | {s['seed']} | {s['episodes_per_hour']:.0f} | {s['repair_s']} ({s['repairs']}) | "
                  f"{s['met']} ({s['student_ms']:.3f} / {s['budget_ms']:.3f} ms) | {100 * s['acc_before_ft']:.2f}% |")
        for name in dict.fromkeys(s["setup"] for s in searches):
            rate = {arm: statistics.mean(s["episodes_per_hour"] for s in searches if s["setup"] == name and s["arm"] == arm)
                    for arm in ("before", "now")}
            accuracy = {arm: [s["acc_before_ft"] for s in searches if s["setup"] == name and s["arm"] == arm]
                        for arm in ("before", "now")}
            print(f"{name}: episodes/hour now / before = {rate['now'] / rate['before']:.2f}; accuracy before fine-tuning, "
                  + ", ".join(f"{arm} {100 * statistics.mean(v):.2f}% (" + " / ".join(f"{100 * a:.2f}" for a in v) + ")"
                              for arm, v in accuracy.items() if v))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
