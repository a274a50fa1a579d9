"""``hwcompress search`` as a library call: teacher + device + budget -> a measured, distilled student.

The chain: load the teacher and its data; measure the teacher on the device; build the cost model
from the device's latency LUT (recorded on the device, or measured on demand here and cached); refuse
infeasible budgets before searching; walk AMC episodes (or the baselines) under the clamp, scoring
each student on the reward-validation split without fine-tuning; prune the best policy physically,
fine-tune it by knowledge distillation, export it, measure it ON the device, and write the report.

Long runs checkpoint after every episode (``checkpoint.pt`` in the output folder): ``--resume DIR``
continues from there and reaches the same policy as an uninterrupted run with the same seed, and
Ctrl-C leaves a usable best-so-far student.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hwcompress import __version__
from hwcompress.errors import UserError

RESULT_SCHEMA = "hwcompress.search/1"
VERDICT_ROUNDS = 5  # interleaved rounds of the final student's measurement (3 for the anchors and repairs)
AMC_DELTA_DECAY = 0.99  # AMC's exploration-noise decay per episode here (see make_policy)
POLICY_FORMAT = "hwcompress.policy/1"
CHECKPOINT = "checkpoint.pt"


@dataclass
class SearchConfig:
    """Everything that defines a search; saved in the checkpoint so ``--resume`` needs nothing else."""

    budget_metric: str = "latency_ms"  # latency_ms | macs | params
    budget: float = 0.0
    budget_ratio: float | None = None  # latency budget as a fraction of the teacher's measured latency
    margin: float = 0.03  # the search aims this fraction below a latency budget: measurements wobble
    agent: str = "amc"
    device: str = "cpu"
    device_file: str | None = None
    model: str | None = None  # None: the embedded ResNet-56 on digits
    weights: str | None = None
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    episodes: int = 120
    warmup: int | None = None  # DDPG warm-up episodes; default a quarter of the episodes (NNI's rule)
    seed: int = 0
    reward: str = "budget"  # budget (-error) | accuracy (-error * log cost)
    lbound: float = 0.2
    finetune_epochs: float = 8.0
    reconstruct: bool = False
    lut: str | None = None
    out: str = "hwcompress-out"
    runs: int | None = None
    threads: int | None = None
    val_limit: int | None = None  # score each episode on at most this many validation images
    anchors: int = 2  # students measured to anchor the latency cost model: 2 (teacher, smallest) or 3 (+ uniform at the budget)
    bn_calibration: int = 256  # re-estimate BatchNorm statistics on this many train images before scoring (0: off)
    torch_threads: int = 1  # PyTorch intra-op threads for training and scoring (see torch_threads())
    agent_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


class BudgetAlreadyMet(Exception):
    """The teacher meets the budget: nothing to search."""


@dataclass
class Context:
    """What the search needs, built once: teacher, data, device, cost model."""

    config: SearchConfig
    descriptor: Any
    teacher: Any
    teacher_meta: dict[str, Any]
    splits: Any
    example: Any
    layers: list
    groups: list
    cost_model: Any
    measure: Callable[[Any, str], dict[str, Any]] | None
    teacher_measured: dict[str, Any] | None
    val_set: Any
    notes: list[str] = field(default_factory=list)
    quiet: bool = False
    anchors: list[dict[str, Any]] = field(default_factory=list)  # students that anchored the cost model


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def build_context(config: SearchConfig, log: Callable[[str], None] = print) -> Context:
    """Load the teacher and data, measure the teacher, and build the cost model."""
    from hwcompress.analysis import analyze
    from hwcompress.data import load_data
    from hwcompress.devices import resolve_device
    from hwcompress.distill import evaluate
    from hwcompress.models import load_model
    from hwcompress.profiling import get_available_profiler, make_settings
    from hwcompress.pruning import find_channel_groups

    if config.budget_metric not in ("latency_ms", "macs", "params"):
        raise UserError(f"unknown budget metric {config.budget_metric!r}")
    if config.budget_ratio is not None and not 0 < config.budget_ratio < 1:
        raise UserError("--latency-ratio must be between 0 and 1 (a fraction of the teacher's measured latency)")
    if config.budget_ratio is None and (not config.budget or config.budget <= 0):
        raise UserError("give a positive budget: --latency-ms X, --latency-ratio R, --macs N or --params N")
    if not 0 <= config.margin < 0.5:
        raise UserError("--margin must be between 0 and 0.5")
    if config.episodes < 1:
        raise UserError("--episodes must be at least 1")
    if not 0 < config.lbound < 1:
        raise UserError("--lbound must be between 0 and 1")
    if config.anchors not in (2, 3):
        raise UserError("--anchors must be 2 (teacher and smallest student) or 3 (and a uniform student at the budget)")
    descriptor = resolve_device(config.device, config.device_file)
    local, why_not = descriptor.is_local()
    torch.manual_seed(config.seed)  # a factory model's initialisation, too, follows the seed
    settings = make_settings(descriptor, runs=config.runs, threads=config.threads, per_layer=False)
    profiler = None
    if local:
        profiler = get_available_profiler(descriptor)
    elif config.budget_metric == "latency_ms" and not (config.lut or descriptor.lut_path() and descriptor.lut_path().exists()):
        raise UserError(
            f"{why_not}; searching under a {descriptor.name} latency budget here needs a LUT recorded on the device "
            f"(--lut FILE). Record one there: {descriptor.record_hint or 'hwcompress lut record --device NAME --model MODEL --out FILE'}"
        )

    if config.model is None:
        from hwcompress import embedded
        from hwcompress.data import digits_splits

        log("teacher: ResNet-56 on scikit-learn digits (trained on first use, then cached)")
        teacher, meta = embedded.default_teacher(progress=True)
        splits = digits_splits()
        if config.data not in (None, "digits"):
            raise UserError("the embedded default teacher goes with the digits data; pass --model too to use --data")
    else:
        if config.data is None:
            raise UserError("--model needs --data (an ImageFolder folder or pkg.module:factory) to score and fine-tune students")
        loaded = load_model(config.model, weights=config.weights, input_shape=config.input_shape)
        if loaded.module is None:
            raise UserError("search needs a PyTorch model (an .onnx file cannot be pruned); pass the PyTorch model")
        teacher, meta = loaded.module, {"name": loaded.name, "source": loaded.source}
        # The data decides the input size (digits: 32x32, image folders: 224) unless --input-shape says.
        splits = load_data(config.data, input_size=config.input_shape[-1] if config.input_shape else None)
    teacher.eval()
    input_shape = tuple(config.input_shape or splits.input_shape)
    example = torch.zeros(*input_shape)
    layers = analyze(teacher, input_shape).layers
    groups = find_channel_groups(teacher, example)
    if not groups:
        raise UserError("the model has no prunable channel groups")
    val_set = splits.val
    if config.val_limit:
        val_set = torch.utils.data.Subset(splits.val, range(min(config.val_limit, len(splits.val))))

    measure = None
    teacher_measured = None
    if profiler is not None:
        log(f"measuring the teacher on {descriptor.name} with {profiler.name}")
        measure = PairedMeasurement(teacher, input_shape, profiler, settings)
        teacher_measured = measure.teacher_measured
    meta = {**meta, "val_accuracy": meta.get("val_accuracy", evaluate(teacher, splits.val))}
    if "test_accuracy" not in meta:
        meta["test_accuracy"] = evaluate(teacher, splits.test)

    cost_model, notes = build_cost_model(config, descriptor, teacher, input_shape, layers, groups, profiler, settings, log)
    if config.budget_ratio is not None and not config.budget:
        if config.budget_metric != "latency_ms":
            raise UserError("--latency-ratio applies to latency budgets only")
        reference = teacher_measured["median"] if teacher_measured else cost_model.cost(cost_model.full_policy())
        config.budget = round(config.budget_ratio * reference, 4)
        log(f"budget: {config.budget_ratio:g} x teacher latency {reference:.3f} ms = {config.budget:.3f} ms")
    anchors: list[dict[str, Any]] = []
    if config.budget_metric == "latency_ms" and teacher_measured is not None:
        used, note = anchor_cost_model(cost_model, teacher, example, measure, teacher_measured["median"],
                                       search_budget(config) if config.anchors >= 3 else None, log)
        anchors = [a.to_dict() for a in used]
        notes.append(note)
    return Context(config, descriptor, teacher, meta, splits, example, layers, groups, cost_model, measure,
                   teacher_measured, val_set, notes, anchors=anchors)


def anchor_cost_model(cost_model: Any, teacher: Any, example: Any, measure: Callable, teacher_ms: float,
                      target_ms: float | None, log: Callable[[str], None]) -> tuple[list[Any], str]:
    """Anchor the LUT's latency prediction on students measured in this run (see :mod:`.anchors`)."""
    from hwcompress.pruning import prune_channels
    from hwcompress.search.anchors import anchor_latency

    def measure_policy(keep: dict[str, int], name: str) -> float:
        return measure(prune_channels(teacher, example, keep), name)["median"]

    return anchor_latency(cost_model, measure_policy, teacher_ms, target_ms, log)


class PairedMeasurement:
    """Measure a student on the device as a ratio to the teacher, in interleaved rounds.

    A shared machine's speed wanders by 10% and more within minutes (measured here: a student timed at
    1.14 ms ran at 1.29 ms a few minutes later, the teacher moving with it). Timing the student and the
    teacher alternately and taking the median of the per-round ratios cancels that drift; the ratio
    times the teacher's latency measured at the start of the run is the student's latency on the
    same footing as the budget. The raw medians are kept in the result too.

    Constructing it exports the teacher once and measures it: ``teacher_measured`` is that reference.
    """

    def __init__(self, teacher: Any, input_shape: tuple[int, ...], profiler: Any, settings: Any,
                 rounds: int = 3) -> None:
        import tempfile

        from hwcompress.export import export_onnx
        from hwcompress.profiler import ModelArtifact

        self.folder = tempfile.TemporaryDirectory(prefix="hwcompress-")
        self.teacher_onnx = Path(self.folder.name) / "teacher.onnx"
        info = export_onnx(teacher, input_shape, self.teacher_onnx)
        self.input_shape, self.profiler, self.settings, self.rounds = tuple(input_shape), profiler, settings, rounds
        measurement = profiler.measure(ModelArtifact(self.teacher_onnx, self.input_shape, teacher, "teacher"), settings)
        self.teacher_measured = {**measurement.latency.to_dict(), "source": "measured", "profiler": profiler.name,
                                 "onnx_max_abs_diff": info.max_abs_diff, "facts": measurement.facts}
        self.teacher_ms = measurement.latency.median

    def __call__(self, module: Any, name: str, rounds: int | None = None) -> dict[str, Any]:
        import statistics

        from hwcompress.comparing import measure_interleaved, paired_ratios
        from hwcompress.export import export_onnx
        from hwcompress.profiler import ModelArtifact

        path = Path(self.folder.name) / f"{name}.onnx"
        info = export_onnx(module, self.input_shape, path)
        student, teacher = measure_interleaved(
            self.profiler,
            [ModelArtifact(path, self.input_shape, None, "student"), ModelArtifact(self.teacher_onnx, self.input_shape, None, "teacher")],
            self.settings, rounds or self.rounds,
        )
        ratio = statistics.median(paired_ratios(student, teacher))
        middle = sorted(student, key=lambda m: m.latency.median)[len(student) // 2]
        return {
            **middle.latency.to_dict(),
            "median": ratio * self.teacher_ms,
            "raw_median": statistics.median(m.latency.median for m in student),
            "paired_ratio_to_teacher": ratio,
            "teacher_reference_ms": self.teacher_ms,
            "teacher_now_ms": statistics.median(m.latency.median for m in teacher),
            "rounds": rounds or self.rounds,
            "source": "measured",
            "method": "interleaved with the teacher; median = ratio x the teacher's latency measured at the start",
            "profiler": self.profiler.name,
            "onnx_max_abs_diff": info.max_abs_diff,
            "facts": middle.facts,
        }


def build_cost_model(config, descriptor, teacher, input_shape, layers, groups, profiler, settings, log):
    """The cost model for the budget's metric; for latency, backed by the device's LUT."""
    from hwcompress.search.cost import CostModel

    common = dict(multiple=descriptor.channel_multiple, lbound=config.lbound)
    if config.budget_metric != "latency_ms":
        return CostModel(layers, groups, metric=config.budget_metric, **common), []
    from hwcompress.search.latency_table import table_for_search

    table = table_for_search(
        teacher, input_shape, layers, groups, descriptor, profiler, settings,
        lut_path=config.lut, multiple=descriptor.channel_multiple, lbound=config.lbound, log=log,
    )
    notes = [f"latency cost model: {table.describe()}"]
    return CostModel(layers, groups, metric="latency_ms", latency_of=table.latency_of, **common), notes


def check_budget(ctx: Context) -> dict[str, Any]:
    """Refuse a budget the smallest student cannot meet; report a budget the teacher already meets."""
    config, model = ctx.config, ctx.cost_model
    unit = {"latency_ms": "ms", "macs": "MACs", "params": "parameters"}[config.budget_metric]
    teacher_cost = model.cost(model.full_policy())
    if config.budget_metric == "latency_ms" and ctx.teacher_measured:
        teacher_cost = ctx.teacher_measured["median"]
    if teacher_cost <= config.budget:
        raise BudgetAlreadyMet(
            f"the teacher already meets the budget: {_fmt(teacher_cost, unit)} <= {_fmt(config.budget, unit)}"
            + (" (measured)" if config.budget_metric == "latency_ms" and ctx.teacher_measured else "")
        )
    min_policy = model.min_policy()
    smallest = model.cost(min_policy)
    if smallest > search_budget(config):
        detail = "predicted by the cost model"
        if config.budget_metric == "latency_ms" and ctx.measure is not None:
            detail = f"measured on {ctx.descriptor.name}"  # the cost model is anchored on that measurement
        raise UserError(
            f"budget {_fmt(config.budget, unit)} is infeasible: the smallest allowed student (every group at "
            f"{config.lbound:.0%} of its channels) reaches {_fmt(smallest, unit)} ({detail}); "
            f"raise the budget to at least {_fmt(smallest / (1 - config.margin) if unit == 'ms' else smallest, unit)} or lower --lbound"
        )
    return {"teacher": teacher_cost, "smallest": smallest}


def search_budget(config: SearchConfig) -> float:
    """The budget the clamp enforces: a latency budget less the safety margin (others exactly)."""
    if config.budget_metric == "latency_ms":
        return config.budget * (1.0 - config.margin)
    return config.budget


def recalibrate_batchnorm(model: Any, dataset: Any, images: int, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics of a pruned model on ``images`` training images.

    Pruning shifts every activation distribution, so the teacher's statistics no longer fit and a
    pruned network scores near chance before fine-tuning, which leaves the search's reward flat.
    Re-estimating them (no weight changes; EagleEye's "adaptive BN", Li et al. 2020) restores a reward
    that ranks students the way fine-tuning does. Measured on the embedded ResNet-56 at 50% of the
    channels inside each block: 8.9% -> 97.0% validation accuracy. ``images=0`` keeps AMC's original
    behaviour (the teacher's statistics). Deterministic: the first ``images`` items, in order.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if images <= 0 or not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    was_training = model.training
    model.train()
    count = min(images, len(dataset))
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, count))])
            model(batch)
    for norm in norms:
        norm.momentum = 0.1
    model.train(was_training)


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {unit}"


# ---------------------------------------------------------------------------------------------
# The search loop
# ---------------------------------------------------------------------------------------------


def make_policy(config: SearchConfig, n_groups: int) -> Any:
    from hwcompress.plugins import get_agents

    agents = get_agents()
    factory = agents.get(config.agent)
    if factory is None:
        raise UserError(f"unknown agent {config.agent!r}; available: {', '.join(sorted(agents))}")
    options = dict(config.agent_options)
    if config.agent == "amc":
        options.setdefault("warmup", config.warmup if config.warmup is not None else max(1, config.episodes // 4))
        # NNI's noise decay, not the original's 0.95: over a 120-episode run the original's sigma falls
        # to 0.02 by episode 90 and the agent repeats itself (measured at 0.5x over 3 seeds: 64-83
        # distinct policies of 120 and 81.7% best validation accuracy, against 118-119 and 89.6%).
        options.setdefault("delta_decay", AMC_DELTA_DECAY)
    try:
        return factory(n_groups=n_groups, seed=config.seed, **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"agent {config.agent!r} does not accept these settings ({', '.join(options)}): {error}") from None


def _save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


class torch_threads:
    """Run PyTorch with ``n`` intra-op threads inside the block, restoring the previous count after.

    One thread by default: the search runs many small ops (prune a copy, score a few hundred images,
    distil a few steps), and on small shared machines two contending threads ran them 10-100x slower
    (measured while building this: a KD step 0.95 s with one thread, 9 s with two under load).
    """

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def run_search(config: SearchConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run the whole search and write the output folder; returns the ``hwcompress.search/1`` document.

    Raises:
        UserError: bad input, an infeasible budget, an unusable LUT.
        BudgetAlreadyMet: the teacher already meets the budget (nothing is written).
    """
    with torch_threads(config.torch_threads):
        return _run_search(config, resume=resume, quiet=quiet)


def _run_search(config: SearchConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from hwcompress.search.amc import EpisodeWalker, reward_for

    console = _console()
    log = (lambda message: None) if quiet else (lambda message: console.print(f"[dim]{message}[/dim]"))
    out = Path(config.out)
    checkpoint = None
    if resume:
        path = out / CHECKPOINT
        if not path.exists():
            raise UserError(f"nothing to resume in {out}: {CHECKPOINT} not found")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise UserError(f"cannot read {path}: {type(error).__name__}: {error}") from None
        saved = checkpoint["config"]
        saved["input_shape"] = tuple(saved["input_shape"]) if saved.get("input_shape") else None
        episodes = config.episodes if config.episodes != SearchConfig.episodes else saved["episodes"]
        config = SearchConfig(**{**saved, "episodes": max(episodes, saved["episodes"]), "out": str(out)})
        log(f"resuming {out} at episode {checkpoint['episode'] + 1} of {config.episodes}")
    elif (out / "result.json").exists() or (out / CHECKPOINT).exists():
        raise UserError(f"{out} already holds a search; pass --resume {out} to continue it, or choose another --out")

    from hwcompress.plugins import get_agents

    if config.agent not in get_agents():
        raise UserError(f"unknown agent {config.agent!r}; available: {', '.join(sorted(get_agents()))}")
    started = time.perf_counter()
    ctx = build_context(config, log)
    ctx.quiet = quiet
    bounds = check_budget(ctx)
    out.mkdir(parents=True, exist_ok=True)
    if config.agent == "n2n":
        from hwcompress.search.n2n import run_n2n

        return run_n2n(ctx, checkpoint, out, started, bounds, log, console, quiet=quiet)
    walker = EpisodeWalker(ctx.cost_model, ctx.layers, search_budget(config))
    policy = make_policy(config, len(ctx.groups))
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_episode = 0
    search_seconds = 0.0
    if checkpoint is not None:
        policy.load_state_dict(checkpoint["policy"])
        history = checkpoint["history"]
        best = checkpoint["best"]
        start_episode = checkpoint["episode"] + 1
        search_seconds = checkpoint.get("search_seconds", 0.0)

    score = policy_scorer(ctx)
    unit = "ms" if config.budget_metric == "latency_ms" else ""
    interrupted = False
    loop_start = time.perf_counter()
    progress = Progress(TextColumn("[bold]search[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=True)
    try:
        with progress:
            task = progress.add_task(config.agent, total=config.episodes, completed=start_episode)
            for episode_index in range(start_episode, config.episodes):
                episode = policy.run_episode(walker, episode_index)
                cost = ctx.cost_model.cost(episode.keep)
                accuracy = score(episode.keep)
                reward = reward_for(accuracy, cost, config.reward)
                policy.finish_episode(walker, episode, reward, episode_index)
                record = {"episode": episode_index, "reward": reward, "accuracy": accuracy, "cost": cost,
                          "ratios": [round(r, 4) for r in episode.ratios]}
                history.append(record)
                if best is None or reward > best["reward"]:
                    best = {**record, "keep": dict(episode.keep)}
                _save_checkpoint(out, {"config": config.to_dict(), "episode": episode_index, "policy": policy.state_dict(),
                                       "history": history, "best": best,
                                       "search_seconds": search_seconds + time.perf_counter() - loop_start})
                progress.advance(task)
                if not quiet:
                    progress.console.print(
                        f"ep {episode_index:4d}  reward {reward:+.4f}  val acc {accuracy:.4f}  "
                        f"cost {cost:,.3f}{unit}  best {best['reward']:+.4f}"
                    )
    except KeyboardInterrupt:
        interrupted = True
        console.print(f"[yellow]interrupted after {len(history)} episodes; writing the best student so far "
                      f"(resume with --resume {out})[/yellow]")
    search_seconds += time.perf_counter() - loop_start
    if best is None:
        raise UserError("interrupted before the first episode finished; nothing to write")
    repairs = fit_to_measured_budget(ctx, best, log, score)
    if repairs:
        best = {**best, "keep": repairs[-1]["keep"]}
    return finalize(ctx, best, history, out, started, search_seconds, bounds, interrupted, log, console,
                    extra={"budget_repairs": [{k: v for k, v in r.items() if k != "keep"} for r in repairs]})


def policy_scorer(ctx: Context) -> Callable[[dict[str, int]], float]:
    """The search's accuracy of a channel policy, memoised: the teacher pruned to it, its BatchNorm
    statistics re-estimated (``--bn-calibration``), scored on the reward-validation split; no training."""
    from hwcompress.distill import evaluate
    from hwcompress.pruning import prune_channels

    cache: dict[tuple, float] = {}

    def score(keep: dict[str, int]) -> float:
        key = tuple(keep[g.name] for g in ctx.groups)
        if key not in cache:
            student = prune_channels(ctx.teacher, ctx.example, keep)
            recalibrate_batchnorm(student, ctx.splits.train, ctx.config.bn_calibration)
            cache[key] = evaluate(student, ctx.val_set)
        return cache[key]

    return score


def fit_to_measured_budget(ctx: Context, best: dict[str, Any], log: Callable[[str], None],
                           score: Callable[[dict[str, int]], float] | None = None,
                           attempts: int = 3) -> list[dict[str, Any]]:
    """Measure the best student on the device; while it is over a latency budget, trim it to fit a
    budget tightened by the measured overshoot, and measure again.

    The cost model is exact at the teacher and the smallest student, but between them a per-layer sum
    can be off by 10% on small, fast networks (measured: a ResNet-56 student predicted 0.835 ms ran at
    0.943 ms). The student gives up only what the measurement says it must, a channel step at a time
    where it costs the least of ``score`` (the search's reward accuracy) per unit of latency saved
    (:meth:`CostModel.trimmed_policy`; compared with other repairs in ``bench/repair_quality.py``).
    Returns one record per repair (empty when the first measurement fits).
    """
    config = ctx.config
    if config.budget_metric != "latency_ms" or ctx.measure is None:
        return []
    repairs: list[dict[str, Any]] = []
    keep = dict(best["keep"])
    target = search_budget(config)
    for attempt in range(attempts):
        measured = ctx.measure(build_student(ctx, {"keep": keep}), "candidate")["median"]
        # Accept with half the margin to spare: the final measurement repeats this one, and a student
        # a hair under the budget flips over on the next run's noise (seen: 0.94 then 0.949 ms for 0.946).
        accept = config.budget * (1.0 - config.margin / 2)
        if measured <= accept:
            break
        target *= config.budget / measured * (1.0 - config.margin)
        keep = ctx.cost_model.trimmed_policy(keep, target, score=score)
        repairs.append({"measured_ms": measured, "retarget_ms": round(target, 4), "keep": dict(keep)})
        log(f"student measured {measured:.3f} ms, over {accept:.3f} ms (the {config.budget:.3f} ms budget less half "
            f"the margin): trimming it to {target:.3f} ms predicted (repair {attempt + 1})")
    return repairs


def build_student(ctx: Context, policy: dict[str, Any]) -> Any:
    """The physically pruned student for a policy: ``{"keep": {group: channels}, "removed_units": [...]}``."""
    from hwcompress.pruning import prune_channels, remove_units

    model = ctx.teacher
    if policy.get("removed_units"):
        model = remove_units(model, policy["removed_units"])
    return prune_channels(model, ctx.example, policy.get("keep", {}))


def finalize(ctx: Context, best: dict[str, Any], history: list[dict[str, Any]], out: Path, started: float,
             search_seconds: float, bounds: dict[str, Any], interrupted: bool, log, console,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the best policy's student, fine-tune it by distillation, export, measure on the device, report.

    ``best`` holds the policy (``keep`` and, for N2N, ``removed_units``), the episode it came from and
    its validation accuracy during the search; ``extra`` is merged into the result document.
    """
    from hwcompress.analysis import analyze
    from hwcompress.distill import distill, evaluate
    from hwcompress.export import export_onnx
    from hwcompress.pruning import reconstruct_least_squares

    config = ctx.config
    keep = best["keep"]
    trained = best.get("model")
    # N2N trains its students during the search; fine-tuning continues from those weights.
    student = copy.deepcopy(trained) if trained is not None else build_student(ctx, best)
    if config.reconstruct and trained is None:
        calibration = torch.stack([ctx.splits.train[i][0] for i in range(min(256, len(ctx.splits.train)))])
        reconstruct_least_squares(student, ctx.teacher, calibration)
    recalibrate_batchnorm(student, ctx.splits.train, config.bn_calibration)
    accuracy_before = evaluate(student, ctx.splits.test)
    finetune_info: dict[str, Any] = {}
    if config.finetune_epochs > 0 and not interrupted:
        log(f"fine-tuning the student by distillation for {config.finetune_epochs:g} epochs")
        untuned = copy.deepcopy(student.state_dict())
        val_before = evaluate(student, ctx.splits.val)
        finetune_info = distill(student, ctx.teacher, ctx.splits.train, epochs=config.finetune_epochs,
                                seed=config.seed, progress=not ctx.quiet, description="fine-tune (KD)")
        val_after = evaluate(student, ctx.splits.val)
        finetune_info.update(val_accuracy_before=val_before, val_accuracy_after=val_after, kept="fine-tuned")
        if val_after < val_before:
            # Too short a fine-tuning can leave a student worse than it started (seen: 0.1 epoch, one
            # step at the initial learning rate, 95% -> 50%); the validation split decides, never the test.
            student.load_state_dict(untuned)
            finetune_info["kept"] = "before fine-tuning"
            ctx.notes.append(f"fine-tuning lowered the validation accuracy ({100 * val_before:.2f}% -> {100 * val_after:.2f}%); "
                             "the student is the one before fine-tuning (give more --finetune-epochs)")
    accuracy_after = evaluate(student, ctx.splits.test)
    student.eval()
    student_analysis = analyze(student, tuple(ctx.example.shape))
    teacher_analysis_macs = sum(layer.macs for layer in ctx.layers)
    teacher_params = sum(p.numel() for p in ctx.teacher.parameters())

    artifacts: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "student.onnx"
    measured = None
    if ctx.measure is not None:
        # The verdict gets more rounds than the search's checks: it is the number the user is told.
        measured = ctx.measure(student, "student", rounds=VERDICT_ROUNDS)
    export_onnx(student, tuple(ctx.example.shape), onnx_path)
    artifacts["onnx"] = onnx_path.name
    artifacts.update(save_student(student, tuple(ctx.example.shape), best, out))
    predicted = ctx.cost_model.cost(keep) if config.budget_metric == "latency_ms" and not best.get("removed_units") else best.get("predicted_latency_ms")
    if config.budget_metric == "latency_ms":
        if measured is not None:
            student_latency, budget_met = measured["median"], measured["median"] <= config.budget
        else:
            student_latency, budget_met = None, predicted <= config.budget
    else:
        value = student_analysis.macs if config.budget_metric == "macs" else student_analysis.params
        budget_met = value <= config.budget
        student_latency = measured["median"] if measured else None

    policy_rows = [
        {"group": g.name, "channels": g.channels, "kept": keep.get(g.name, g.channels),
         "ratio": round(keep.get(g.name, g.channels) / g.channels, 4)}
        for g in ctx.groups
    ]
    teacher_latency = ctx.teacher_measured["median"] if ctx.teacher_measured else None
    document = {
        "schema": RESULT_SCHEMA,
        "agent": config.agent,
        "device": {**ctx.descriptor.to_dict(), "facts": (ctx.teacher_measured or {}).get("facts", {})},
        "budget": {config.budget_metric: config.budget},
        "teacher": {
            "latency_ms": teacher_latency,
            "predicted_latency_ms": ctx.cost_model.cost(ctx.cost_model.full_policy()) if config.budget_metric == "latency_ms" else None,
            "accuracy": ctx.teacher_meta.get("test_accuracy"),
            "val_accuracy": ctx.teacher_meta.get("val_accuracy"),
            "macs": teacher_analysis_macs,
            "params": teacher_params,
        },
        "student": {
            "latency_ms": student_latency,
            "latency": measured and {k: v for k, v in measured.items() if k != "facts"},
            "predicted_latency_ms": predicted,
            "accuracy": accuracy_after,
            "accuracy_before_finetune": accuracy_before,
            "val_accuracy_during_search": best.get("accuracy"),
            "macs": student_analysis.macs,
            "params": student_analysis.params,
        },
        "budget_met": bool(budget_met),
        "reachable": {"teacher": bounds.get("teacher"), "smallest_student": bounds.get("smallest")},
        "cost_model_anchors": ctx.anchors,
        "budget_margin": _margin(config, student_latency, predicted, student_analysis),
        "policy": policy_rows,
        "episodes": len(history),
        "best_episode": best.get("episode"),
        "search_seconds": round(search_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "episodes_per_second": round(len(history) / search_seconds, 4) if search_seconds else None,
        "finetune": {k: v for k, v in finetune_info.items() if isinstance(v, (int, float, str))},
        "interrupted": interrupted,
        "config": config.to_dict(),
        "notes": ctx.notes,
        "versions": {"hwcompress": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "artifacts": artifacts,
        **(extra or {}),
    }
    from hwcompress.report import write_json_atomic

    write_json_atomic(history, out / "history.json")
    artifacts["history"] = "history.json"
    artifacts["plots"] = write_plots(document, history, out)
    artifacts["summary"] = "summary.md"
    tmp = out / ".summary.md.tmp"
    tmp.write_text(summary_markdown(document))
    os.replace(tmp, out / "summary.md")
    # Written last: a result.json in the folder means everything beside it is complete.
    write_json_atomic(document, out / "result.json")
    if not ctx.quiet:
        print_summary(document, console, out)
    return document


def _margin(config, measured, predicted, analysis) -> dict[str, Any]:
    if config.budget_metric == "latency_ms":
        value = measured if measured is not None else predicted
        source = "measured" if measured is not None else "predicted"
    else:
        value = analysis.macs if config.budget_metric == "macs" else analysis.params
        source = "counted"
    return {"value": value, "source": source, "over_by": max(0.0, value - config.budget),
            "over_by_percent": max(0.0, 100.0 * (value - config.budget) / config.budget)}


def save_student(student: Any, input_shape: tuple[int, ...], best: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the student three ways: a full module (hwcompress / torch.load), TorchScript (plain
    PyTorch, no hwcompress needed) and the policy (to re-apply with ``--policy``)."""
    files = {}
    full = out / "student.pt"
    tmp = out / ".student.pt.tmp"
    policy = policy_document(best)
    torch.save({"model": student, "input_shape": list(input_shape), "policy": policy,
                "format": "hwcompress.student/1"}, tmp)
    os.replace(tmp, full)
    files["weights"] = full.name
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(copy.deepcopy(student).eval(), torch.zeros(*input_shape))
        tmp = out / ".student.ts.tmp"
        scripted.save(str(tmp))
        os.replace(tmp, out / "student.ts")
        files["torchscript"] = "student.ts"
    except Exception:  # TorchScript is a convenience; the .pt and .onnx files are the contract
        pass
    (out / "policy.json").write_text(json.dumps(policy, indent=1))
    files["policy"] = "policy.json"
    return files


def policy_document(best: dict[str, Any]) -> dict[str, Any]:
    """What ``policy.json`` holds and ``--policy`` reads back."""
    return {"format": POLICY_FORMAT, "keep": dict(best["keep"]), "removed_units": list(best.get("removed_units", []))}


def load_policy(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``policy.json`` written by a search (one-line errors for anything else)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"policy file {path} not found") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read policy file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT or not isinstance(data.get("keep"), dict):
        raise UserError(f"{path} is not a hwcompress policy (expected format {POLICY_FORMAT!r} with a 'keep' map)")
    return {"keep": {str(k): int(v) for k, v in data["keep"].items()}, "removed_units": list(data.get("removed_units", []))}


def apply_policy(config: SearchConfig, policy_path: str, *, quiet: bool = False) -> dict[str, Any]:
    """Re-apply a saved policy to the teacher without searching: prune, fine-tune, measure, report."""
    with torch_threads(config.torch_threads):
        return _apply_policy(config, policy_path, quiet=quiet)


def _apply_policy(config: SearchConfig, policy_path: str, *, quiet: bool = False) -> dict[str, Any]:
    """Re-apply a saved policy to the teacher without searching: prune, fine-tune, measure, report.

    Group names must exist in this teacher; counts larger than a group (a policy from a smaller
    teacher) are capped at the group's size, and scaled policies can be written by hand.
    """
    console = _console()
    log = (lambda message: None) if quiet else (lambda message: console.print(f"[dim]{message}[/dim]"))
    out = Path(config.out)
    if (out / "result.json").exists():
        raise UserError(f"{out} already holds a result; choose another --out")
    started = time.perf_counter()
    policy = load_policy(policy_path)
    ctx = build_context(config, log)
    ctx.quiet = quiet
    by_name = {g.name: g for g in ctx.groups}
    unknown = sorted(set(policy["keep"]) - set(by_name))
    if unknown:
        raise UserError(f"policy {policy_path} names groups this teacher does not have: {', '.join(unknown[:5])}")
    keep = {name: max(1, min(count, by_name[name].channels)) for name, count in policy["keep"].items()}
    best = {"keep": keep, "removed_units": policy["removed_units"], "episode": None, "accuracy": None}
    out.mkdir(parents=True, exist_ok=True)
    return finalize(ctx, best, [], out, started, 0.0, {}, False, log, console, extra={"policy_source": str(policy_path)})


def write_plots(doc: dict[str, Any], history: list[dict[str, Any]], out: Path) -> list[str]:
    """The search folder's plots (:func:`hwcompress.plots.search_plots`); skipped with a note without matplotlib."""
    from hwcompress.plots import PLOTS_HINT, has_matplotlib, search_plots

    if not has_matplotlib():
        doc["notes"].append(f"plots skipped: matplotlib is not installed ({PLOTS_HINT})")
        return []
    return search_plots(doc, history, out)


def summary_markdown(doc: dict[str, Any]) -> str:
    t, s = doc["teacher"], doc["student"]
    budget_key, budget = next(iter(doc["budget"].items()))

    def ms(v):
        return "-" if v is None else f"{v:.3f} ms"

    lines = [
        f"# hwcompress search: {doc['agent']} on {doc['device']['name']}",
        "",
        f"Budget: {budget_key} = {budget:g}. **Budget met: {'yes' if doc['budget_met'] else 'no'}**"
        + ("" if doc["budget_met"] else f" (over by {doc['budget_margin']['over_by_percent']:.1f}%, {doc['budget_margin']['source']})")
        + (" — predicted from the device's LUT, not measured (this machine is not the device)."
           if doc["budget_margin"]["source"] == "predicted" else ""),
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| latency, measured | {ms(t['latency_ms'])} | {ms(s['latency_ms'])} |",
        f"| latency, predicted by the cost model | {ms(t.get('predicted_latency_ms'))} | {ms(s['predicted_latency_ms'])} |",
        f"| test accuracy | {100 * (t['accuracy'] or 0):.2f}% | {100 * s['accuracy']:.2f}% (before fine-tuning {100 * s['accuracy_before_finetune']:.2f}%) |",
        f"| MACs | {t['macs']:,} | {s['macs']:,} |",
        f"| parameters | {t['params']:,} | {s['params']:,} |",
        "",
        f"{doc['episodes']} episodes in {doc['search_seconds']:.0f} s (best: episode {doc['best_episode']}); total {doc['total_seconds']:.0f} s."
        + (" **Interrupted**: this is the best student so far, not fine-tuned." if doc["interrupted"] else ""),
        "",
        "Files: " + ", ".join(f"`{v}`" for k, v in doc["artifacts"].items() if isinstance(v, str)) + ", plots: "
        + ", ".join(f"`{p}`" for p in doc["artifacts"].get("plots", [])),
    ]
    for number, repair in enumerate(doc.get("budget_repairs") or [], 1):
        lines.append(f"\nRepair {number}: the searched student measured {repair['measured_ms']:.3f} ms, over the budget less "
                     f"half the margin; trimmed where it loses the least validation accuracy to {repair['retarget_ms']:.3f} ms "
                     "predicted, and measured again.")
    for note in doc.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def print_summary(doc: dict[str, Any], console, out: Path) -> None:
    from rich.table import Table

    t, s = doc["teacher"], doc["student"]
    table = Table(title=f"{doc['agent']} on {doc['device']['name']}: budget {next(iter(doc['budget'].items()))}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")

    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    table.add_row("latency ms (measured)", ms(t["latency_ms"]), ms(s["latency_ms"]))
    table.add_row("latency ms (predicted)", ms(t.get("predicted_latency_ms")), ms(s["predicted_latency_ms"]))
    table.add_row("test accuracy", f"{100 * (t['accuracy'] or 0):.2f}%", f"{100 * s['accuracy']:.2f}%")
    table.add_row("accuracy before fine-tune", "", f"{100 * s['accuracy_before_finetune']:.2f}%")
    table.add_row("MACs", f"{t['macs']:,}", f"{s['macs']:,}")
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}")
    console.print(table)
    verdict = "[green]budget met[/green]" if doc["budget_met"] else f"[red]budget NOT met[/red] (over by {doc['budget_margin']['over_by_percent']:.1f}%)"
    if doc["budget_margin"]["source"] == "predicted":
        verdict += (f" [yellow](predicted from the LUT, not measured: this machine is not {doc['device']['name']}; "
                    f"on the device run `hwcompress profile --device {doc['device']['name']} -m {out}/student.onnx`)[/yellow]")
    console.print(f"{verdict}; results in {out}/ (result.json, summary.md, student.onnx, student.pt, plots)")
