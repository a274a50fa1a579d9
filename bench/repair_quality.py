"""Repairing a student that measured over its budget: shrink every group together, or trim a few channels?

When the searched student measures over the budget, the search shrinks it under a tightened target
(docs/search.md, step 7). Three ways, compared side by side on the same students:

* ``scaled``: every group's preserve ratio times one common factor, the largest that fits
  (``CostModel.scaled_policy``);
* ``trimmed``: one channel step at a time from the group whose step saves the most predicted latency
  per share of its channels (``CostModel.trimmed_policy`` without a score);
* ``trimmed+scored``: of the 8 steps that save the most per share, the one that loses the least
  validation accuracy per millisecond saved (``CostModel.trimmed_policy`` with the search's reward as
  the score; what the search does).

On the embedded default (ResNet-56 on digits, this CPU) the script walks ``--students`` episodes of
AMC's random warm-up policy through the clamp at a ``--ratio`` budget (students the search could end
with), then for each tightening in ``--tighten`` (the repair's target = the search budget x (1 - t))
repairs every student both ways and prints, as means over the students: the validation accuracy the
search's reward sees (BatchNorm re-estimated on 256 training images, no fine-tuning), the measured
latency (interleaved with the teacher) against the target, and the share of channels kept. Last, the
ratios trimmed / scaled.

    python bench/repair_quality.py [--ratio 0.5] [--students 10] [--tighten 0.03,0.06] [--seed 0]
                                   [--episodes 0]

``--episodes N`` first runs an N-episode AMC search at the budget and repairs its N best distinct
students instead of random ones (closer to what the repair meets: students the search chose).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hwcompress.budget import Budget
from hwcompress.search.amc.agents import AMCAgent, RandomAgent
from hwcompress.search.amc.ddpg import DDPGAgent
from hwcompress.search.amc.walker import STATE_DIM, EpisodeWalker
from hwcompress.search.config import SearchConfig
from hwcompress.search.prepare import prepare
from hwcompress.search.rewards import reward
from hwcompress.search.scoring import policy_scorer, torch_threads
from hwcompress.slim.pruning import prune_channels

METHODS = ("scaled", "trimmed", "trimmed+scored")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="budget as a fraction of the teacher's measured latency")
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--tighten", default="0.03,0.06", help="how much below the search budget the repair aims")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=0, help="repair the best students of an AMC search this long")
    args = parser.parse_args()

    with torch_threads(1):
        started = time.perf_counter()
        config = SearchConfig(budget=Budget.latency_ratio(args.ratio), seed=args.seed)
        prepared = prepare(config, log=lambda m: print(f"  {m}"))
        model = prepared.cost_model
        target = prepared.budget.target
        walker = EpisodeWalker(model, prepared.layers, target)
        total = sum(g.channels for g in prepared.groups)
        accuracy = policy_scorer(prepared.teacher, prepared.example, prepared.groups, prepared.splits.train,
                                 prepared.val_set, config.bn_calibration)

        if args.episodes:
            agent = AMCAgent()
            agent.agent = DDPGAgent(STATE_DIM, len(prepared.groups), agent.settings_for(episodes=args.episodes, seed=args.seed))
            found: dict[tuple, dict[str, int]] = {}
            for index in range(args.episodes):
                episode = agent.propose(walker, index)
                agent.learn(episode, reward("budget", accuracy(episode.keep), model.cost(episode.keep), "latency_ms"), index)
                found[tuple(episode.keep[g.name] for g in prepared.groups)] = episode.keep
            students = sorted(found.values(), key=accuracy, reverse=True)[: args.students]
            print(f"AMC, {args.episodes} episodes: {len(found)} distinct students, repairing the best {len(students)}")
        else:
            policy = RandomAgent()
            policy.rng = np.random.default_rng(args.seed)
            students = [policy.propose(walker, i).keep for i in range(args.students)]

        def measured(keep: dict[str, int], name: str) -> float:
            return prepared.measure(prune_channels(prepared.teacher, prepared.example, keep), name)["median"]

        searched = [accuracy(k) for k in students]
        print(f"budget {prepared.budget.limit:.3f} ms, search target {target:.3f} ms; {len(students)} students, "
              f"validation accuracy {100 * statistics.mean(searched):.2f}% before any repair")
        rows = []
        for tighten in [float(t) for t in args.tighten.split(",")]:
            goal = target * (1 - tighten)
            results: dict[str, dict[str, list[float]]] = {m: {"acc": [], "ms": [], "kept": []} for m in METHODS}
            for index, keep in enumerate(students):
                repaired = {"scaled": model.scaled_policy(keep, goal), "trimmed": model.trimmed_policy(keep, goal),
                            "trimmed+scored": model.trimmed_policy(keep, goal, score=accuracy)}
                for method, fixed in repaired.items():  # both ways of one student back to back
                    results[method]["acc"].append(accuracy(fixed))
                    results[method]["ms"].append(measured(fixed, f"{method}-{index}"))
                    results[method]["kept"].append(sum(fixed.values()) / total)
            for method, r in results.items():
                rows.append({"tighten": tighten, "method": method, "goal": goal,
                             "acc": statistics.mean(r["acc"]), "ms": statistics.mean(r["ms"]),
                             "ms_over_goal": statistics.mean(m / goal for m in r["ms"]), "kept": statistics.mean(r["kept"])})

    print()
    print("| repair target | method | val. accuracy (BN re-estimated, no FT) | measured ms | measured / target | channels kept |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| search target x {1 - r['tighten']:.2f} = {r['goal']:.3f} ms | {r['method']} | {100 * r['acc']:.2f}% | "
              f"{r['ms']:.3f} | {r['ms_over_goal']:.3f} | {100 * r['kept']:.1f}% |")
    print(f"\nsearched students before repair: {100 * statistics.mean(searched):.2f}% validation accuracy")
    for tighten in sorted({r["tighten"] for r in rows}):
        by = {m: next(r for r in rows if r["tighten"] == tighten and r["method"] == m) for m in METHODS}
        for method in METHODS[1:]:
            print(f"tighten {tighten:g}: {method} / scaled: accuracy {by[method]['acc'] / by['scaled']['acc']:.3f}, "
                  f"measured latency {by[method]['ms'] / by['scaled']['ms']:.3f}, "
                  f"channels kept {by[method]['kept'] / by['scaled']['kept']:.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
