"""``hwcompress search`` as a library call: teacher + device + budget -> a measured, distilled student.

The orchestrator: lock the output folder, build the agent (its options are checked before anything is
measured), prepare the search (:mod:`hwcompress.search.prepare`), let the agent search against a
:class:`~hwcompress.search.agent.SearchContext` while checkpointing after every consistent step, repair
the kept student against the measured budget (:mod:`hwcompress.search.repair`), then fine-tune,
measure and report it (:mod:`hwcompress.search.finish`). It calls no agent by name.

Long runs checkpoint as they go (``checkpoint.pt`` in the output folder): :func:`resume_search`
continues from there without measuring again and reaches the same policy as an uninterrupted run with
the same seed; Ctrl-C leaves a usable best-so-far student.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.model.data import DataSplits
from hwcompress.model.loading import LoadedModel
from hwcompress.search.agent import Candidate, SearchContext, make_agent
from hwcompress.search.checkpoint import CHECKPOINT, OutputLock, check_fresh, load_checkpoint, save_checkpoint
from hwcompress.search.config import SearchConfig
from hwcompress.search.finish import finish
from hwcompress.search.prepare import BudgetAlreadyMet, Prepared, prepare
from hwcompress.search.quantized import candidate_precision, settle_precision
from hwcompress.search.repair import fit_to_budget, undo_grow
from hwcompress.search.report import load_policy, print_summary
from hwcompress.search.scoring import PolicyScorer, policy_scorer, torch_threads

__all__ = ["BudgetAlreadyMet", "SearchResult", "apply_policy", "resume_search", "run_search"]

#: Settings a resumed run may change without ``--resume-override``: more episodes extend the run; the
#: verdict's most rounds only decide how long the final measurement may take, and plots what is drawn.
RESUMABLE_CHANGES = ("episodes", "verdict_rounds", "plots")


@dataclass
class SearchResult:
    """What a search returns.

    Attributes:
        student: the compressed ``nn.Module`` (fine-tuned, eval mode).
        report: the ``hwcompress.search/1`` document (also ``result.json`` in ``out``).
        out: the output folder, or None when nothing was written.
    """

    student: Any
    report: dict[str, Any]
    out: Path | None

    @property
    def budget_met(self) -> bool:
        """Whether the student meets the budget: measured on the device where the device is reachable."""
        return bool(self.report["budget_met"])

    @property
    def policy(self) -> dict[str, int]:
        """Kept channels per channel group of the teacher."""
        return {row["group"]: row["kept"] for row in self.report["policy"]}

    def to_dict(self) -> dict[str, Any]:
        return self.report


class _Console:
    """Where a run's messages go: a rich console on stderr, or nowhere (``progress=False``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def log(self, message: str) -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[dim]{escape(message)}[/dim]")

    def progress(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(TextColumn("[bold]search[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not self.enabled,
                        transient=True)


def _episode_line(record: dict[str, Any], best: Candidate | None, prepared: Prepared) -> str:
    accuracy = record.get("accuracy")
    best_reward = "-" if best is None or best.reward is None else f"{best.reward:+.4f}"
    return (f"ep {record.get('episode', 0):4d}  reward {record.get('reward', 0.0):+.4f}  "
            f"val acc {'-' if accuracy is None else f'{accuracy:.4f}'}  "
            f"cost {prepared.budget.format(record.get('cost'))}  best {best_reward}")


def _search(config: SearchConfig, checkpoint: dict[str, Any] | None, *, progress: bool,
            teacher: LoadedModel | None, splits: DataSplits | None) -> SearchResult:
    out = Path(config.out) if config.out else None
    console = _Console(progress)
    log = console.log
    agent = make_agent(config.agent, config.agent_options)
    created = out is not None and not out.exists()
    lock = OutputLock(out) if out is not None else None
    if lock is not None:
        lock.acquire()
    try:
        if lock is not None and lock.note:
            log(lock.note)
        if checkpoint is None and out is not None:
            check_fresh(out)
        # The run's clock starts where the interrupted one stopped: total time covers every part of it.
        started = time.perf_counter() - float((checkpoint or {}).get("elapsed_seconds", 0.0))
        saved = (checkpoint or {}).get("saved")

        def save_early(what: dict[str, Any] | None) -> None:
            # Before the agent runs: the config, and what was measured so far, so a run killed while it
            # records the LUT resumes with the same teacher measurement and budget.
            if out is not None:
                save_checkpoint(out, {"config": config.to_dict(), "saved": what, "agent": config.agent,
                                      "agent_state": None, "history": [], "best": None, "search_seconds": 0.0})

        if checkpoint is None:
            save_early(None)
        try:
            prepared = prepare(config, teacher=teacher, splits=splits, saved=saved, log=log,
                               checkpoint=save_early if checkpoint is None or checkpoint.get("agent_state") is None else None)
        except Exception:
            # Nothing half-written stays behind when the search cannot start (bad input, infeasible budget).
            if checkpoint is None and out is not None:
                (out / CHECKPOINT).unlink(missing_ok=True)
                _release_leaving_no_folder(lock, out, created)
            raise
        if prepared.quantized is not None:  # int8: ONNX Runtime scores
            score = prepared.quantized.scorer(prepared.teacher, prepared.example, prepared.groups, prepared.splits.train,
                                              prepared.val_set, config.bn_calibration,
                                              finetune_steps=config.reward_finetune_steps, seed=config.seed)
        else:
            score = policy_scorer(prepared.teacher, prepared.example, prepared.groups, prepared.splits.train,
                                  prepared.val_set, config.bn_calibration, precision=prepared.scoring_precision[0],
                                  finetune_steps=config.reward_finetune_steps, seed=config.seed, racing=config.racing)
        context = SearchContext(
            teacher=prepared.teacher, example=prepared.example, layers=prepared.layers, groups=prepared.groups,
            cost_model=prepared.cost_model, budget=prepared.budget, episodes=config.episodes, seed=config.seed,
            splits=prepared.splits, val_set=prepared.val_set, score=score, reward_mode=config.reward,
            warmup_episodes=config.warmup_episodes, bn_calibration=config.bn_calibration, notes=prepared.notes,
            log=log, precision=prepared.quantized.plan if prepared.quantized is not None else None,
            racing=isinstance(score, PolicyScorer) and score.racing)
        search_seconds = 0.0
        trained = prepared.teacher_meta.get("trained") or {}
        if checkpoint is not None and checkpoint.get("history") and trained and not trained.get("from_cache"):
            # --resume-override train_teacher (or data): the episodes so far were scored against another teacher.
            dropped = len(checkpoint["history"])
            note = (f"the teacher was trained again: the search starts over, dropping the {dropped} "
                    f"episode{'s' if dropped != 1 else ''} scored against the old one")
            log(note)
            prepared.notes.append(note)
            checkpoint = {**checkpoint, "agent_state": None, "history": [], "best": None, "search_seconds": 0.0}
        if checkpoint is not None and checkpoint.get("agent_state") is not None:
            agent.load_state_dict(checkpoint["agent_state"])
            context.history = list(checkpoint["history"])
            context.best = Candidate.from_dict(checkpoint["best"]) if checkpoint.get("best") else None
            search_seconds = float(checkpoint.get("search_seconds", 0.0))
            resumed = f"resumed after {len(context.history)} of {config.episodes} episodes"
            log(f"{resumed}: {out}")
            prepared.notes.append(f"{resumed} (the times are of every part of the run)")
        loop_start = time.perf_counter()

        def save() -> None:
            if out is None:
                return
            save_checkpoint(out, {
                "config": config.to_dict(), "saved": prepared.saved(), "agent": config.agent,
                "agent_state": agent.state_dict(), "history": context.history,
                "best": context.best.to_dict() if context.best is not None else None,
                "search_seconds": search_seconds + time.perf_counter() - loop_start,
                "elapsed_seconds": time.perf_counter() - started,
            })

        save()  # everything measured before the first episode: a resume from here measures nothing again
        interrupted = False
        bar = console.progress()
        with bar:
            task = bar.add_task(config.agent, total=config.episodes, completed=len(context.history))

            def reported(record: dict[str, Any]) -> None:
                bar.advance(task)
                if console.console is not None:
                    bar.console.print(_episode_line(record, context.best, prepared))

            context.on_report = reported
            context.on_checkpoint = save
            context.on_total = lambda total: bar.update(task, total=total)
            try:
                agent.search(context)
            except KeyboardInterrupt:
                interrupted = True
                log(f"interrupted after {len(context.history)} episodes; writing the best student so far"
                    + (f" (resume with --resume {out})" if out is not None else ""))
        search_seconds += time.perf_counter() - loop_start
        best = context.best
        if best is None:
            raise UserError("interrupted before the first student was scored; nothing to write" if interrupted
                            else f"agent {config.agent!r} reported no student; nothing to write")
        exchange_started = time.perf_counter()
        best, exchanges = settle_precision(prepared, best, score, log, interrupted)
        exchange_seconds = time.perf_counter() - exchange_started
        prepared.use_precision(candidate_precision(best))  # a mixed-precision student is priced and measured as chosen
        repair_started = time.perf_counter()
        before_repairs = best
        repairs = fit_to_budget(prepared, best, log, score)
        repair_seconds = time.perf_counter() - repair_started
        if repairs:
            # At the precision the repair left it in (a mixed student over its budget may have gone to int8).
            extra_now = {k: v for k, v in best.extra.items() if k != "whole_int8"}
            switched = [r["precision"] for r in repairs if "precision" in r]
            if switched:
                extra_now["precision"] = dict(switched[-1])
            best = _at_policy(best, repairs[-1]["keep"], score, prepared.cost_model, extra_now)
        extra: dict[str, Any] = {"budget_repairs": [{k: v for k, v in r.items() if k != "keep"} for r in repairs],
                                 **({"precision_exchanges": exchanges, "exchange_seconds": round(exchange_seconds, 2)}
                                    if prepared.quantized is not None else {}),
                                 "repair_seconds": round(repair_seconds, 2)}
        prepared.racing = score.racing_summary(context.history) if isinstance(score, PolicyScorer) else None
        if prepared.racing and prepared.racing["cut"]:
            prepared.notes.append(
                f"racing: {prepared.racing['cut']} of the {prepared.racing['raced']} students scored against the best so far were "
                f"scored on {prepared.racing['first_images']} of the {prepared.racing['images']} validation images alone "
                f"(their optimistic accuracy there, at {prepared.racing['z']:g} standard errors, was more than "
                f"{100 * prepared.racing['margin']:g} points under what the best needed); "
                "their reward is that part's accuracy (--no-racing scores every image)")
        summary = getattr(agent, "summary", None)
        if callable(summary):
            extra[config.agent] = summary()
        notes_before = list(prepared.notes)
        finished = finish(prepared, best, context.history, out=out, started=started, search_seconds=search_seconds,
                          interrupted=interrupted, log=log, progress=progress, extra=extra)
        undone, chain, undo_notes = undo_grow(finished.document, repairs), repairs, []
        while undone is not None:
            # A grow step must not cost the budget: finish a smaller student of its chain, which measured with
            # room; when that one's verdict misses too, a smaller one again, down to where the grow step started.
            log(undone["note"])
            undo_notes.append(undone["note"])
            prepared.notes[:] = [*notes_before, *undo_notes]
            extra["grow_undone"] = {**{k: v for k, v in undone.items() if k != "note"}, "finishes": len(undo_notes) + 1}
            if out is not None:  # the grown student's report goes first: the folder is not complete until result.json is back
                for name in ("result.json", "summary.md", "student.ts"):
                    (out / name).unlink(missing_ok=True)
            back = undone["trims"] + undone["kept_grow_steps"]
            # a repaired or grown student short of the last, as the repair scored it; else the searched one
            instead = _at_policy(before_repairs, repairs[back - 1]["keep"], score, prepared.cost_model, best.extra) \
                if back else before_repairs
            finished = finish(prepared, instead, context.history, out=out, started=started,
                              search_seconds=search_seconds, interrupted=interrupted, log=log, progress=progress, extra=extra)
            chain = chain[:back]
            undone = undo_grow(finished.document, chain) if undone["kept_grow_steps"] else None
        if console.console is not None:
            print_summary(finished.document, console.console, out)
        return SearchResult(finished.student, finished.document, out)
    finally:
        if lock is not None:
            lock.release()


def _at_policy(searched: Candidate, keep: dict[str, int], score: Callable[..., float], cost_model: Any,
               extra: dict[str, Any]) -> Candidate:
    """The searched student moved to the channel policy ``keep`` by the repair or the grow step: its own
    score (memoised: the repair scored it on its way there) and predicted cost, ``extra`` as given."""
    return Candidate(keep, list(searched.removed_units), searched.episode, score(keep), cost_model.cost(keep),
                     searched.reward, None, extra)


def run_search(config: SearchConfig, *, progress: bool = True, teacher: LoadedModel | None = None,
               data: DataSplits | None = None) -> SearchResult:
    """Run a whole search (see the module docstring).

    Args:
        config: the settings; ``config.out`` is the folder written (None: nothing is written).
        progress: progress bars, per-episode lines and the closing table on stderr.
        teacher, data: the teacher and its data already loaded (the Python API); else from ``config``.

    Raises:
        UserError: bad input, an infeasible budget, an unusable LUT, an output folder in use.
        BudgetAlreadyMet: the teacher already meets the budget (nothing is written).
    """
    with torch_threads(config.torch_threads):
        return _search(config, None, progress=progress, teacher=teacher, splits=data)


def resume_search(out: str | Path, *, changes: dict[str, Any] | None = None, override: Sequence[str] = (),
                  progress: bool = True, teacher: LoadedModel | None = None, data: DataSplits | None = None) -> SearchResult:
    """Continue the search checkpointed in ``out``.

    Args:
        changes: settings given again (``{"episodes": 200, "seed": 7}``): each must equal the saved run's,
            except more ``episodes`` (which extends it) and those named in ``override``.
        override: settings whose change is accepted (``--resume-override seed``).

    Raises:
        UserError: nothing to resume, or settings that differ from the saved run (listed).
    """
    folder = Path(out)
    checkpoint = load_checkpoint(folder)
    saved = SearchConfig.from_dict(checkpoint["config"])
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(saved.to_dict()))
    if unknown:
        raise UserError(f"cannot resume with unknown settings: {', '.join(unknown)}")
    try:
        wanted = saved.replace(**changes, out=str(folder))
    except TypeError as error:
        raise UserError(f"cannot resume: {error}") from None
    changed = saved.differences(wanted)
    if "budget" in changed and "budget" in override:
        # The episodes so far were scored, and the clamp steered, against the saved budget: a resumed run
        # keeps it (an override was accepted and ignored, while result.json reported the new one).
        raise UserError(f"the budget cannot change on resume: {folder}'s episodes were scored against "
                        f"{_shown(changed['budget'][0])}; search again into another --out with {_shown(changed['budget'][1])}, "
                        f"or judge its best policy against it with --policy {folder / 'policy.json'}")
    differences = {name: pair for name, pair in changed.items()
                   if name not in RESUMABLE_CHANGES and name not in override and name != "out"}
    if differences:
        listed = "; ".join(f"{name}: saved {_shown(old)}, given {_shown(new)}" for name, (old, new) in sorted(differences.items()))
        raise UserError(f"{folder} was searched with other settings ({listed}); drop them to resume as it was, or "
                        f"accept them with --resume-override {','.join(sorted(differences))}")
    history = checkpoint.get("history") or []
    if len(history) >= wanted.episodes and _finished(folder) and not changed:
        # (A finished run resumed with another --verdict-rounds measures its student again: that is asked for.)
        raise UserError(f"{folder} holds a finished search ({len(history)} of {wanted.episodes} episodes, result.json "
                        "written): nothing to resume; give more --episodes to extend it")
    with torch_threads(wanted.torch_threads):
        return _search(wanted, checkpoint, progress=progress, teacher=teacher, splits=data)


def _finished(folder: Path) -> bool:
    """Whether ``folder`` holds the result of a search that ran to its end (not one written on Ctrl-C)."""
    import json

    try:
        return not json.loads((folder / "result.json").read_text()).get("interrupted", False)
    except (OSError, ValueError, AttributeError):
        return False


def _shown(value: Any) -> str:
    """A saved or given setting as a refusal names it: a budget as the CLI gives it, anything else as repr."""
    if isinstance(value, dict) and "metric" in value:
        try:
            return str(Budget.from_dict(value))
        except (UserError, KeyError, TypeError, ValueError):
            pass
    return repr(value)


def _release_leaving_no_folder(lock: OutputLock, out: Path, created: bool) -> None:
    """Release ``lock`` on a refused run, and remove ``out`` when this run created it and it is empty."""
    lock.release()
    if created and not any(out.iterdir()):
        out.rmdir()


def apply_policy(config: SearchConfig, policy_path: str | Path, *, progress: bool = True,
                 teacher: LoadedModel | None = None, data: DataSplits | None = None) -> SearchResult:
    """Re-apply a saved ``policy.json`` to the teacher without searching: prune, fine-tune, measure, report.

    Group names must exist in this teacher; counts larger than a group (a policy from a wider teacher)
    are capped at the group's size, so scaled policies can be written by hand.
    """
    with torch_threads(config.torch_threads):
        console = _Console(progress)
        out = Path(config.out) if config.out else None
        policy = load_policy(policy_path)
        if policy.get("precision") and config.quantize != "mixed":
            raise UserError(f"policy {policy_path} chooses a precision per group (a --quantize mixed run's); "
                            "re-apply it with --quantize mixed, or drop its 'precision' map for a float student")
        if policy.get("quantize") and not config.quantize:
            raise UserError(f"policy {policy_path} was searched for {'an' if str(policy['quantize'])[:1] in 'aeiou8' else 'a'} {policy['quantize']} student (--quantize "
                            f"{policy['quantize']}); re-apply it with --quantize {policy['quantize']}, or drop its "
                            "'quantize' field for a float student")
        created = out is not None and not out.exists()
        lock = OutputLock(out) if out is not None else None
        if lock is not None:
            lock.acquire()
        try:
            if out is not None:
                check_fresh(out, resumable=False)
            started = time.perf_counter()
            prepared = prepare(config, teacher=teacher, splits=data, log=console.log, search=False)
            by_name = {g.name: g for g in prepared.groups}
            unknown = sorted((set(policy["keep"]) | set(policy.get("precision") or {})) - set(by_name))
            if unknown:
                raise UserError(f"policy {policy_path} names groups this teacher does not have: {', '.join(unknown[:5])}")
            keep = {name: max(1, min(count, by_name[name].channels)) for name, count in policy["keep"].items()}
            candidate = Candidate(keep, removed_units=policy["removed_units"],
                                  extra={"precision": policy["precision"]} if policy.get("precision") else {})
            prepared.use_precision(policy.get("precision"))
            finished = finish(prepared, candidate, [], out=out, started=started, search_seconds=0.0, interrupted=False,
                              log=console.log, progress=progress, extra={"policy_source": str(policy_path)})
            if console.console is not None:
                print_summary(finished.document, console.console, out)
            return SearchResult(finished.student, finished.document, out)
        except BaseException:
            # Refused (groups this teacher lacks, bad data...): no empty folder of ours stays behind.
            if lock is not None:
                _release_leaving_no_folder(lock, out, created)
            raise
        finally:
            if lock is not None:
                lock.release()
