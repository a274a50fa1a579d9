"""N2N on the search pipeline: remove units (stage 1), then shrink channel groups (stage 2), under a budget.

N2N (Ashok et al., ICLR 2018; ``anubhavashok/N2N``; research/algorithms.md section 2) compresses a
teacher with two REINFORCE-trained controllers (:mod:`hwcompress.search.n2n.policy`):

1. **Layer removal.** A bidirectional LSTM reads one feature row per removable unit
   (:func:`~hwcompress.slim.pruning.find_removable_units`: residual blocks, plain ``conv+norm+act`` runs;
   never the unit holding the first conv, strided or projection units, nor the classifier) and samples
   keep/remove for each. Removed units become ``nn.Identity``.
2. **Layer shrinkage.** Starting from stage 1's best student, which is also stage 2's teacher and
   reference for the reward (as in the original), an LSTM walks that student's prunable channel groups
   and picks a preserve ratio from :data:`~hwcompress.search.n2n.policy.RATIOS` for each; the channels
   are removed physically by the same pruner as AMC (:func:`~hwcompress.slim.pruning.prune_channels`).

Every sampled student is distilled briefly from the current reference (the teacher in stage 1, stage
1's best student in stage 2), its BatchNorm statistics re-estimated, and scored on the reward-validation
split. Its reward is ``R = (A / A_ref) * C * (2 - C)`` with ``C = 1 - params / params_ref``; a student that
cannot be built, or is not smaller than the reference, gets -1; a student the cost model puts over the
budget gets the annealed penalty ``R' = (eps - 1) + eps * R``, ``eps = max(0, 1 - epoch / 15) ** 4``. Once
``eps`` is 0 a student over the budget is worth exactly -1 and is not trained at all. Students sampled
again are looked up in a cache keyed by architecture (removed units + kept channel counts), never
trained twice.

The cost of a student comes from the same cost model AMC uses: the teacher's layer rows without the
removed units (stage 1), or the stage-1 student's rows shrunk to the kept channels (stage 2, a
:class:`~hwcompress.search.cost.CostModel` over that student), priced by the device LUT re-anchored on
the measured teacher (``ctx.cost_model.latency_of``), or counted exactly for MACs and parameters.

The result is the best *valid, within-budget* student over both stages, ranked by the N2N reward
relative to the original teacher (so the stages compare); when none is within budget, the closest one
(the result notes say so). ``finalize`` then rebuilds it from the teacher (remove units, prune channels),
fine-tunes it fully by distillation and measures it on the device. ``best["model"]`` also carries the
trained student itself, for a ``finalize`` that fine-tunes it instead of the rebuilt one (N2N's own
choice: its result is the trained child network; 99.16% against 98.33% test accuracy after the same 8
epochs on the embedded default at 0.5x). Its ``policy.json`` holds both
``removed_units`` and ``keep`` (group names of the teacher: removal keeps module names), so
``--policy`` rebuilds exactly this student, also on a larger teacher with the same names.

Deliberate differences from the original, beyond those of :mod:`hwcompress.search.n2n.policy`:

* students inherit the teacher's weights (the original re-initialised them and trained 5 epochs); with a
  budget of a few steps per student, students from scratch all score near chance (``reinit`` restores
  the original behaviour);
* the stage-2 base is distilled for ``base_steps`` more steps before it serves as teacher, since it was
  trained only briefly while being scored;
* the reward uses a held-out validation split, not the test set;
* one Adam step per epoch (the original stepped once per rollout), hence larger default learning rates.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Sequence

import torch

from hwcompress.lut.keys import at_precision
from hwcompress.model.analysis import analyze
from hwcompress.model.training import evaluate
from hwcompress.search.agent import Candidate, SearchContext
from hwcompress.search.cost import CostModel
from hwcompress.search.n2n.policy import (
    INVALID_REWARD,
    KEEP,
    ORIGINAL_RATIO_PRIOR,
    Reinforce,
    RemovalPolicy,
    ShrinkagePolicy,
    annealed_epsilon,
    constrained_reward,
    n2n_reward,
    normalise,
)
from hwcompress.search.scoring import recalibrate_batchnorm
from hwcompress.slim.distill import distill
from hwcompress.slim.pruning import find_channel_groups, prune_channels
from hwcompress.slim.units import find_removable_units, remove_units

__all__ = ["N2NSearch", "unit_features", "group_features", "stage1_rows"]


# --------------------------------------------------------------------------------------------------
# Features and costs


_KINDS = {"residual": 0.0, "block": 1.0, "layer": 2.0}


def _member_of(name: str, members: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in members)


def stage1_rows(layers: Sequence[Any], units: Sequence[Any], removed: Sequence[str]) -> list[Any]:
    """The teacher's layer rows without those of the removed units (exact: removal changes no shape)."""
    members = [m for u in units if u.name in set(removed) for m in (u.members or (u.name,))]
    return [row for row in layers if not _member_of(row.name, members)]


def _price(rows: Sequence[Any], metric: str, latency_of: Callable[[list], float] | None) -> float:
    if metric == "macs":
        return float(sum(r.macs for r in rows))
    if metric == "params":
        return float(sum(r.params for r in rows))
    return float(latency_of(list(rows)))


def unit_features(units: Sequence[Any], layers: Sequence[Any], metric: str,
                  latency_of: Callable[[list], float] | None) -> torch.Tensor:
    """Raw per-unit features ``[kind, channels, spatial size, params, MACs, cost share, position]``.

    The cost share is what removing the unit alone saves in the budget's metric (for latency, the
    device LUT's prediction), which makes the removal policy hardware-aware.
    """
    full = _price(layers, metric, latency_of)
    rows = []
    count = max(len(units) - 1, 1)
    for i, unit in enumerate(units):
        shape = tuple(unit.shape) or (0,)
        spatial = math.prod(shape[1:]) if len(shape) > 1 else 1
        share = full - _price(stage1_rows(layers, units, [unit.name]), metric, latency_of)
        rows.append([_KINDS.get(unit.kind, 3.0), float(shape[0]), float(spatial), float(unit.params),
                     float(unit.macs), share, i / count])
    return torch.tensor(rows, dtype=torch.float64)


def group_features(groups: Sequence[Any], cost_model: Any) -> torch.Tensor:
    """Raw per-group features ``[channels, producers, consumers, MACs, params, cost share, position]``."""
    by_name = {p.spec.name: p.spec for p in cost_model._plans}
    shares = cost_model.group_costs()
    rows = []
    count = max(len(groups) - 1, 1)
    for i, group in enumerate(groups):
        names = [*group.producers, *group.consumers, *group.depthwise]
        macs = sum(by_name[n].macs for n in names if n in by_name)
        params = sum(by_name[n].params for n in group.producers if n in by_name)
        rows.append([float(group.channels), float(len(group.producers)), float(len(group.consumers)),
                     float(macs), float(params), shares.get(group.name, 0.0), i / count])
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# The search


def _fmt_cost(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}ms" if metric == "latency_ms" else f"{value:,.0f}"


def _rank(entry: dict[str, Any]) -> tuple:
    """Order of the final choice: within budget first, then the reward (or, over budget, the lower cost)."""
    if entry["within_budget"]:
        return (1, entry["global_reward"], 0.0)
    return (0, -entry["cost"], entry["global_reward"])


class N2NSearch:
    """State of one N2N run over a :class:`~hwcompress.search.agent.SearchContext`; :meth:`state` is
    what the checkpoint holds, :meth:`load` restores it."""

    def __init__(self, ctx: SearchContext, settings: Any) -> None:
        self.ctx = ctx
        self.settings = settings
        self.log = ctx.log
        self.metric = ctx.budget.metric
        self.budget = ctx.target
        self.latency_of = ctx.cost_model.latency_of if self.metric == "latency_ms" else None
        plan = getattr(ctx, "precision", None)
        if self.latency_of is not None and plan is not None:
            # --quantize int8: every layer the runtime runs in int8 priced in int8, on the int8-anchored
            # line (its students train in float; the final one is quantized and scored as it runs).
            precisions, anchored = plan.layer_precisions({}), self.latency_of
            self.latency_of = lambda rows: anchored([at_precision(r, precisions.get(r.name)) for r in rows])
        self.shape = tuple(ctx.example.shape)
        self.teacher_params = sum(p.numel() for p in ctx.teacher.parameters())
        self.teacher_accuracy = evaluate(ctx.teacher, ctx.val_set)
        self.units = find_removable_units(ctx.teacher, ctx.example)
        self.teacher_cost = _price(ctx.layers, self.metric, self.latency_of)
        train = ctx.splits.train
        if settings.student_subset and settings.student_subset < len(train):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed))
            train = torch.utils.data.Subset(train, order[: settings.student_subset].tolist())
        self.train_set = train
        self.stage_epochs = list(settings.stage_epochs(ctx.episodes))
        if not self.units and self.stage_epochs[0]:
            ctx.notes.append("n2n: the teacher has no removable units (blocks or layers whose input and output "
                             "shapes match); stage 1 was skipped")
            self.stage_epochs = [0, self.stage_epochs[0] + self.stage_epochs[1]]
        self.stage = 1
        self.epoch = 0
        self.cache: dict[tuple, dict[str, Any]] = {}
        self.best: dict[str, Any] | None = None
        self.stage1_best: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {"stage1": {"mean_rewards": [], "max_rewards": [], "baselines": []},
                                        "stage2": {"mean_rewards": [], "max_rewards": [], "baselines": []}}
        self.counters = {"trained": 0, "cache_hits": 0, "not_trained_over_budget": 0, "invalid": 0,
                         "train_seconds": 0.0}
        self.base: dict[str, Any] | None = None
        self.removal = self.shrink = None
        self.removal_x = self.shrink_x = None
        if self.units:
            features = unit_features(self.units, ctx.layers, self.metric, self.latency_of)
            self.removal_x = normalise(features)
            policy = RemovalPolicy(self.removal_x.shape[1], hidden_size=settings.hidden, keep_bias=settings.keep_bias,
                                   generator=torch.Generator().manual_seed(settings.seed))
            self.removal = Reinforce(policy, torch.Generator().manual_seed(settings.seed + 1), lr=settings.lr_removal,
                                     baseline_decay=settings.baseline_decay, entropy_coef=settings.entropy_coef)

    # -- stage 2 setup ---------------------------------------------------------------------------

    def _base_structures(self, model: Any) -> None:
        """Channel groups, cost model and shrinkage policy over the stage-2 base (deterministic)."""

        settings = self.settings
        self.base_model = model
        self.base_groups = find_channel_groups(model, self.ctx.example)
        teacher_groups = {g.name: g.channels for g in self.ctx.groups}
        if any(teacher_groups.get(g.name) != g.channels for g in self.base_groups):
            self.ctx.notes.append("n2n: the stage-1 student's channel groups are not named like the teacher's; "
                                  "its policy.json can be re-applied only to this student's architecture")
        self.base_cost_model = CostModel(
            analyze(model, self.shape).layers, self.base_groups, metric=self.metric, latency_of=self.latency_of,
            multiple=self.ctx.cost_model.multiple, quantum=self.ctx.cost_model.quantum, lbound=self.ctx.cost_model.lbound)
        self.shrink = None
        if self.base_groups:
            self.shrink_x = normalise(group_features(self.base_groups, self.base_cost_model))
            policy = ShrinkagePolicy(
                self.shrink_x.shape[1], hidden_size=settings.hidden,
                ratio_prior=ORIGINAL_RATIO_PRIOR if settings.ratio_prior == "original" else None,
                generator=torch.Generator().manual_seed(settings.seed + 2))
            self.shrink = Reinforce(policy, torch.Generator().manual_seed(settings.seed + 3), lr=settings.lr_shrink,
                                    baseline_decay=settings.baseline_decay, entropy_coef=settings.entropy_coef)

    def start_stage2(self) -> None:
        """Stage 1's best student (or the teacher) becomes stage 2's base, teacher and reference."""

        chosen = self.stage1_best
        if chosen is None:
            removed, model, accuracy = [], copy.deepcopy(self.ctx.teacher).eval(), self.teacher_accuracy
            if self.stage_epochs[0]:
                self.ctx.notes.append("n2n: stage 1 found no valid student; stage 2 shrinks the teacher")
        else:
            removed = list(chosen["removed_units"])
            model = remove_units(self.ctx.teacher, removed)
            steps = self.settings.student_steps + self.settings.base_steps
            accuracy = self._train(model, self.ctx.teacher, steps)
            self.log(f"n2n stage 2 base: {len(removed)} of {len(self.units)} units removed, distilled {steps} steps, "
                     f"val accuracy {accuracy:.4f}")
        rows = stage1_rows(self.ctx.layers, self.units, removed)
        self.base = {"removed_units": removed, "model": model.eval(), "accuracy": accuracy,
                     "params": sum(p.numel() for p in model.parameters()),
                     "cost": _price(rows, self.metric, self.latency_of)}
        self._base_structures(self.base["model"])
        if self.shrink is None and self.stage_epochs[1]:
            self.ctx.notes.append("n2n: the stage-1 student has no prunable channel groups; stage 2 was skipped")
        self.stage, self.epoch = 2, 0

    # -- scoring ---------------------------------------------------------------------------------

    def _train(self, student: Any, teacher: Any, steps: int) -> float:
        """Distil ``student`` briefly from ``teacher``, re-estimate BatchNorm, return validation accuracy."""
        started = time.perf_counter()
        settings = self.settings
        if settings.reinit:
            torch.manual_seed(self.ctx.seed)
            for module in student.modules():
                if hasattr(module, "reset_parameters") and not list(module.children()):
                    module.reset_parameters()
        if steps > 0:
            distill(student, teacher, self.train_set, steps=steps, batch_size=settings.student_batch,
                    loss=settings.student_loss, lr=settings.student_lr, seed=self.ctx.seed)
        recalibrate_batchnorm(student, self.ctx.splits.train, self.ctx.bn_calibration)
        student.eval()
        accuracy = evaluate(student, self.ctx.val_set)
        self.counters["trained"] += 1
        self.counters["train_seconds"] += time.perf_counter() - started
        return accuracy

    def _score(self, key: tuple, cost: float, params: int, build: Callable[[], Any], reference: tuple,
               epoch: int, detail: dict[str, Any]) -> dict[str, Any]:
        """One rollout's reward, training the student only if its architecture is new (and could count)."""
        ref_model, ref_accuracy, ref_params = reference
        eps = annealed_epsilon(epoch, self.settings.epsilon_horizon)
        broken = cost > self.budget
        entry = self.cache.get(key)
        cached = entry is not None
        if entry is None:
            entry = {"stage": self.stage, "cost": cost, "params": int(params), "valid": params < ref_params,
                     "accuracy": None, "error": None if params < ref_params else "not smaller than its teacher",
                     "episode": len(self.ctx.history), **detail}
            self.cache[key] = entry
        needs_training = entry["valid"] and entry["accuracy"] is None and not (broken and eps == 0.0)
        student = None
        if needs_training:
            cached = False
            try:
                student = build()
                with torch.no_grad():
                    student.eval()(self.ctx.example)
            except Exception as error:  # a shape error: an invalid student (N2N's R = -1)
                entry["valid"], entry["error"] = False, f"{type(error).__name__}: {error}"
            else:
                entry["accuracy"] = self._train(student, ref_model, self.settings.student_steps)
        elif entry["valid"] and entry["accuracy"] is None:
            self.counters["not_trained_over_budget"] += 1
        if cached:
            self.counters["cache_hits"] += 1
        if not entry["valid"]:
            self.counters["invalid"] += 1
            reward = INVALID_REWARD
        elif entry["accuracy"] is None:
            reward = constrained_reward(0.0, True, epoch, self.settings.epsilon_horizon)  # exactly -1 here
        else:
            raw = n2n_reward(entry["accuracy"], max(ref_accuracy, 1e-6), params, ref_params)
            reward = constrained_reward(raw, broken, epoch, self.settings.epsilon_horizon)
        record = {"episode": len(self.ctx.history), "stage": self.stage, "epoch": epoch, "reward": float(reward),
                  "accuracy": entry["accuracy"], "cost": cost, "params": int(params), "valid": entry["valid"],
                  "within_budget": not broken, "cached": cached, "epsilon": eps, **detail}
        if entry["error"] and not entry["valid"]:
            record["error"] = entry["error"]
        new_best = None
        if entry["valid"] and entry["accuracy"] is not None:
            candidate = {
                "keep": dict(detail.get("keep", {})),
                "removed_units": list(detail.get("removed_units", self.base["removed_units"] if self.base else [])),
                "episode": entry["episode"], "stage": entry["stage"], "accuracy": entry["accuracy"],
                "params": int(params), "cost": cost, "within_budget": not broken,
                "global_reward": n2n_reward(entry["accuracy"], max(self.teacher_accuracy, 1e-6), params,
                                            self.teacher_params),
                "predicted_latency_ms": cost if self.metric == "latency_ms" else None,
            }
            if self.best is None or _rank(candidate) > _rank(self.best):
                if student is not None:
                    # The trained student itself: N2N's result is the trained child network, and fine-tuning
                    # it goes further than fine-tuning the same architecture cut from the teacher (measured
                    # on the embedded default at 0.5x: 99.16% against 98.33% test accuracy after 8 epochs).
                    candidate["model"] = student.eval()
                self.best = new_best = candidate
            if self.stage == 1 and (self.stage1_best is None or _rank(candidate) > _rank(self.stage1_best)):
                self.stage1_best = candidate
        self.ctx.report(record, None if new_best is None else as_candidate(new_best))
        return record

    def removal_rollout(self, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:

        actions, log_prob = self.removal.policy.sample(self.removal_x, self.removal.generator)
        removed = [u.name for u, a in zip(self.units, actions.tolist()) if a != KEEP]
        rows = stage1_rows(self.ctx.layers, self.units, removed)
        record = self._score(
            ("remove", tuple(removed)), _price(rows, self.metric, self.latency_of), sum(r.params for r in rows),
            lambda: remove_units(self.ctx.teacher, removed),
            (self.ctx.teacher, self.teacher_accuracy, self.teacher_params), epoch, {"removed_units": removed})
        return log_prob, record

    def shrink_rollout(self, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:

        _, ratios, log_prob = self.shrink.policy.sample(self.shrink_x, self.shrink.generator)
        keep = {g.name: max(g.min_channels, self.base_cost_model.round(g, r))
                for g, r in zip(self.base_groups, ratios)}
        rows = self.base_cost_model.layers_for(keep)
        priced = self.base_cost_model.layers_for(keep, priced=self.metric == "latency_ms")  # counts below a block as one
        base = self.base
        record = self._score(
            ("shrink", tuple(base["removed_units"]), tuple(keep[g.name] for g in self.base_groups)),
            _price(priced, self.metric, self.latency_of), sum(r.params for r in rows),
            lambda: prune_channels(base["model"], self.ctx.example, keep),
            (base["model"], base["accuracy"], base["params"]), epoch,
            {"keep": keep, "ratios": list(ratios), "removed_units": list(base["removed_units"])})
        return log_prob, record

    # -- checkpoint ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        base = None
        if self.base is not None:
            base = {k: v for k, v in self.base.items() if k != "model"}
            base["model"] = copy.deepcopy(self.base["model"])
        return {"settings": self.settings.to_dict(), "stage_epochs": list(self.stage_epochs), "stage": self.stage,
                "epoch": self.epoch, "removal": self.removal.state_dict() if self.removal else None,
                "shrink": self.shrink.state_dict() if self.shrink else None, "base": base, "cache": self.cache,
                "best": self.best, "stage1_best": self.stage1_best, "summary": self.summary,
                "counters": self.counters}

    def load(self, state: dict[str, Any]) -> None:
        saved = list(state["stage_epochs"])
        if self.settings.removal_epochs is None and self.settings.shrink_epochs is None:
            # A resume with more --episodes gives the extra epochs to stage 2.
            saved[1] = max(saved[1], sum(self.stage_epochs) - saved[0])
        self.stage_epochs = saved
        self.stage, self.epoch = state["stage"], state["epoch"]
        if self.removal is not None and state["removal"] is not None:
            self.removal.load_state_dict(state["removal"])
        if state["base"] is not None:
            self.base = dict(state["base"])
            self._base_structures(self.base["model"])
            if self.shrink is not None and state["shrink"] is not None:
                self.shrink.load_state_dict(state["shrink"])
        self.cache = state["cache"]
        self.best, self.stage1_best = state["best"], state["stage1_best"]
        self.summary, self.counters = state["summary"], state["counters"]


def as_candidate(best: dict[str, Any]) -> Candidate:
    """N2N's best student as the pipeline's :class:`~hwcompress.search.agent.Candidate` (ranked by the
    N2N reward relative to the original teacher)."""
    extra = {k: best[k] for k in ("stage", "params", "within_budget", "global_reward", "predicted_latency_ms") if k in best}
    return Candidate(keep=dict(best["keep"]), removed_units=list(best["removed_units"]), episode=best["episode"],
                     accuracy=best["accuracy"], cost=best["cost"], reward=best["global_reward"],
                     model=best.get("model"), extra=extra)
