"""How the search scores a student without training it, and builds the student a policy describes.

Scoring follows AMC: the teacher pruned to the policy, its BatchNorm statistics re-estimated on a few
training images (``--bn-calibration``), accuracy on the reward-validation split (never the test split).
With ``--reward-finetune-steps N`` each student is first distilled from the teacher for N steps
(:func:`short_finetune`; Distiller's AMC ``--amc-ft-epochs``, HAQ's short-term retraining).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils.data import Subset

from hwcompress.measure.runner import cpu_flags
from hwcompress.model.data import has_label_list, stratified_subset
from hwcompress.model.training import batchnorm_sample, evaluate, reestimate_batchnorm
from hwcompress.slim.distill import distill
from hwcompress.slim.pruning import prune_channels
from hwcompress.slim.units import remove_units


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


def recalibrate_batchnorm(model: Any, dataset: Any, images: int, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics of a pruned model on ``images`` training images.

    Pruning shifts every activation distribution, so the teacher's statistics no longer fit and a
    pruned network scores near chance before fine-tuning, which leaves the search's reward flat.
    Re-estimating them (no weight changes; EagleEye's "adaptive BN", Li et al. 2020) restores a reward
    that ranks students the way fine-tuning does. Measured on the embedded ResNet-56 at 50% of the
    channels inside each block: 8.9% -> 97.0% validation accuracy. ``images=0`` keeps AMC's original
    behaviour (the teacher's statistics).

    The images are a shuffled sample in a fixed order (seed 0: every student sees the same ones), and
    only the BatchNorm layers run in train mode (:func:`hwcompress.model.training.reestimate_batchnorm`).
    Until 2026-11-28 they were the first ``images`` items in order, which in a ``train/`` folder read as
    it is (with ``val/`` beside it) are the first class's alone, and the whole model ran in train mode
    (dropout and stochastic depth active while the statistics were taken).

    The sample is read once per dataset and kept while the dataset lives (every student of a search uses
    the same images): an image folder is not decoded again for each student.
    """
    try:
        kept = _BN_SAMPLES.setdefault(dataset, {})
    except TypeError:  # a dataset that cannot be weakly referenced or hashed (a list of pairs): read each time
        reestimate_batchnorm(model, dataset, images, seed=0, batch_size=batch_size)
        return
    if (images, batch_size) not in kept:
        with torch.inference_mode(False):  # plain tensors, usable outside a scorer's inference mode too
            kept[(images, batch_size)] = batchnorm_sample(dataset, images, seed=0, batch_size=batch_size)
    reestimate_batchnorm(model, dataset, images, seed=0, batch_size=batch_size, sample=kept[(images, batch_size)])


#: The batches :func:`recalibrate_batchnorm` read, per training dataset (dropped with it).
_BN_SAMPLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_student(teacher: Any, example: Any, keep: dict[str, int], removed_units: list[str] | None = None) -> Any:
    """The physically pruned student: ``removed_units`` replaced by identity, then channels kept per ``keep``."""
    model = remove_units(teacher, removed_units) if removed_units else teacher
    return prune_channels(model, example, keep)


#: Score students with their weights in channels-last memory order (exact; PyTorch's CPU convolutions
#: run faster so: 13% per score on the embedded ResNet-56, ``bench/episode_cost.py``).
CHANNELS_LAST = True

#: Score students with every BatchNorm folded into the convolution before it once its statistics are
#: re-estimated, under inference mode (no autograd bookkeeping): the same accuracies (10 of 10 random
#: students of the embedded ResNet-56 identical), evaluation 20% cheaper there, ``bench/episode_cost.py``.
FOLD_NORMS = True


def conv_norm_pairs(model: Any, example: Any) -> list[tuple[str, str]]:
    """``(convolution, BatchNorm)`` module names where the norm reads the 2-D convolution's output.

    Found by tracing ``model`` once in eval mode; pruning keeps module names and dataflow, so a teacher's
    pairs hold for every student cut from it. Checked: with the pairs folded, a copy of ``model`` gives
    its outputs (a convolution whose output something else also reads would not); when it does not,
    no pair is returned and nothing is ever folded.
    """
    import copy

    nn = torch.nn
    probe = copy.deepcopy(model).eval()
    names = {id(m): n for n, m in probe.named_modules()}
    produced: dict[int, tuple[str, Any]] = {}  # the outputs are kept alive: an id is never reused
    pairs: list[tuple[str, str]] = []

    def hook(module: Any, inputs: tuple, output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            produced[id(output)] = (names[id(module)], output)
        elif inputs and id(inputs[0]) in produced and produced[id(inputs[0])][1] is inputs[0] and module.track_running_stats:
            pairs.append((produced[id(inputs[0])][0], names[id(module)]))

    hooks = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    x = torch.randn(tuple(example.shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            reference = probe(x)
    finally:
        for h in hooks:
            h.remove()
    if not pairs:
        return []
    with torch.no_grad():
        folded = fold_norms(probe, pairs)(x)
    if not isinstance(reference, torch.Tensor) or not torch.allclose(folded, reference, rtol=1e-3,
                                                                     atol=1e-4 * float(reference.abs().max()) + 1e-6):
        return []
    return pairs


def fold_norms(model: Any, pairs: list[tuple[str, str]]) -> Any:
    """Fold each pair's BatchNorm (its running statistics) into its convolution, in place; the norm becomes
    an identity. For evaluation only: the result no longer re-estimates or learns the norm."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            conv, norm = modules[conv_name], modules[norm_name]
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.affine:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            conv.weight = torch.nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).contiguous(memory_format=layout),
                                             requires_grad=False)
            conv.bias = torch.nn.Parameter(shift, requires_grad=False)
            parent, _, attribute = norm_name.rpartition(".")
            setattr(modules[parent] if parent else model, attribute, torch.nn.Identity())
    return model


#: CPU flags (``/proc/cpuinfo``) of a bfloat16 unit: x86's AMX and AVX-512 BF16, Arm's BF16 extension.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def resolve_scoring_precision(requested: str) -> tuple[str, str]:
    """The precision the search evaluates float students in, and why: ``auto`` is bfloat16 where the CPU
    has a bfloat16 unit (:data:`NATIVE_BF16_FLAGS`) and PyTorch's oneDNN uses it, else fp32 (emulated
    bfloat16 is slower than fp32). Decided from the CPU, not from a timing, so that a seed gives the same
    policy on the same machine every time."""
    if requested == "fp32":
        return "fp32", "the default (--scoring-precision auto scores in bfloat16 where the CPU has a unit for it)"
    if requested != "auto":
        return requested, f"asked for (--scoring-precision {requested})"
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    if not native:
        return "fp32", "this CPU has no bfloat16 unit"
    try:
        usable = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        usable = False
    if not usable:
        return "fp32", f"the CPU has {', '.join(native)} but PyTorch's oneDNN does not use it"
    return "bf16", f"this CPU computes bfloat16 natively ({', '.join(native)})"


#: Batch size and initial learning rate of the per-student distillation before scoring
#: (``--reward-finetune-steps``), and the defaults of N2N's per-student training
#: (``student_batch``, ``student_lr``), which read them from here.
SHORT_FINETUNE_BATCH = 64
SHORT_FINETUNE_LR = 0.05


def short_finetune(student: Any, teacher: Any, train_set: Any, steps: int, seed: int) -> None:
    """Distil ``student`` from ``teacher`` for ``steps`` SGD steps (KD loss, cosine decay from
    :data:`SHORT_FINETUNE_LR`, batches of :data:`SHORT_FINETUNE_BATCH`), in place; nothing for 0 steps.

    Far below chance, a pruned student's accuracy says little about what fine-tuning will make of it
    (mobilenet_v2 at 64 px, 0.35x of the teacher's latency: 9-20% before fine-tuning, 25-87% after, two
    seeds of one search 40 points apart; docs/benchmarks.md); a few steps of distillation give the reward
    a signal there. Deterministic under ``seed`` (the same student, the same weights)."""
    if steps > 0:
        distill(student, teacher, train_set, steps=steps, batch_size=SHORT_FINETUNE_BATCH, lr=SHORT_FINETUNE_LR, seed=seed)


#: Racing (Maron and Moore's Hoeffding races; Hyperband's early stopping, for one evaluation): a student an
#: agent scores against a bar is first evaluated on this share of the validation images (a stratified part,
#: the same for every student), and the rest is left out when the Wilson upper bound of that part's accuracy
#: at :data:`RACE_Z` standard errors is under the bar less :data:`RACE_MARGIN` (``--no-racing``: every image).
RACE_SHARE = 1 / 3
RACE_Z = 3.0
#: ... and under the bar by at least this much: a student that is only a little worse than the best keeps
#: a reward from every image. Without it the agent's trajectory ran lower: with the bar itself, students 5-10
#: points under the best (AMC's exploitation near it) were cut with their estimates biased low (a student is
#: cut exactly when its first part reads low), and the raced searches' best scored under the unraced ones'
#: in 6 of 8 seeds of 120 episodes on the embedded ResNet-56 (docs/benchmarks.md).
RACE_MARGIN = 0.05
#: Fewer validation images than this in the first part, and every student is scored on all of them.
RACE_MIN_IMAGES = 60


def upper_bound(correct: int, images: int, z: float | None = None) -> float:
    """The Wilson score interval's upper end for ``correct`` of ``images`` at ``z`` standard errors
    (:data:`RACE_Z` when None; sound at 0 and at ``images`` correct, where the normal interval collapses to
    a point)."""
    if images <= 0:
        return 1.0
    z = RACE_Z if z is None else z
    p, z2 = correct / images, z * z
    centre = p + z2 / (2 * images)
    spread = z * (p * (1 - p) / images + z2 / (4 * images * images)) ** 0.5
    return min(1.0, (centre + spread) / (1 + z2 / images))


def race_parts(val_set: Any, share: float = RACE_SHARE) -> tuple[Any, Any] | None:
    """The validation set split into the part every student is scored on first (a stratified share,
    :func:`~hwcompress.model.data.stratified_subset`; without a label list, items spread evenly over the
    set, not its first ones, which may be a few classes') and the rest; None when the first part would hold
    fewer than :data:`RACE_MIN_IMAGES` images (no racing)."""
    first_size = int(round(len(val_set) * share))
    if first_size < RACE_MIN_IMAGES or first_size >= len(val_set):
        return None
    if has_label_list(val_set):
        first = stratified_subset(val_set, first_size)
    else:
        first = Subset(val_set, sorted({i * len(val_set) // first_size for i in range(first_size)}))
    chosen = set(first.indices)
    rest = Subset(val_set, [i for i in range(len(val_set)) if i not in chosen])
    return first, rest


class PolicyScorer:
    """The search's accuracy of a channel policy, memoised: the teacher pruned to it, distilled for
    ``finetune_steps`` (:func:`short_finetune`; 0: no training), its BatchNorm statistics re-estimated,
    scored on ``val_set`` (evaluated in ``precision``).

    ``scorer(keep)`` is the accuracy on every validation image. ``scorer(keep, beat=a)`` races (when
    ``racing`` and the set is large enough, :func:`race_parts`): the student is scored on the first part,
    and when even the optimistic end of that part's accuracy (:func:`upper_bound`) is under ``a`` less
    :data:`RACE_MARGIN`, that part's accuracy is returned without the rest (a fixed stratified third, the
    same images for every student). The answer is a function of ``keep`` and ``beat`` alone: a student scored in full before and now asked with a bar it
    cannot reach gets its first part's accuracy too, and one cut before is scored in full when asked
    without ``beat`` (the repair, the final student) or with a bar it may reach. The validation images are
    always evaluated in the same two parts. :attr:`last_images` says how many images the last answer
    rests on (what an agent records as ``val_images``)."""

    def __init__(self, teacher: Any, example: Any, groups: list[Any], train_set: Any, val_set: Any,
                 bn_calibration: int, precision: str = "fp32", finetune_steps: int = 0, seed: int = 0,
                 racing: bool = False) -> None:
        self.teacher, self.example, self.groups = teacher, example, groups
        self.train_set, self.val_set, self.bn_calibration = train_set, val_set, bn_calibration
        self.precision, self.finetune_steps, self.seed = precision, finetune_steps, seed
        self.parts = race_parts(val_set) if racing else None
        self.pairs = conv_norm_pairs(teacher, example) if FOLD_NORMS else []
        # policy -> correct images per part evaluated (one entry: cut after the first part)
        self.counts: dict[tuple, list[int]] = {}
        #: How many validation images the last answer rests on.
        self.last_images = len(val_set)

    @property
    def racing(self) -> bool:
        """Whether a score may be cut (racing asked for, and a validation set large enough)."""
        return self.parts is not None

    def racing_summary(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """For result.json, from the search's records (``val_images``, written by the agents that race, and
        saved with the checkpoint, so a resumed run counts as an uninterrupted one): the parts, the bound,
        how many episodes were raced and how many of them were rewarded on the first part alone; None when
        none was raced."""
        raced = [r["val_images"] for r in history if r.get("val_images") is not None]
        if self.parts is None or not raced:
            return None
        return {"first_images": len(self.parts[0]), "images": len(self.val_set), "z": RACE_Z, "margin": RACE_MARGIN,
                "raced": len(raced), "cut": sum(n < len(self.val_set) for n in raced)}

    def __call__(self, keep: dict[str, int], beat: float | None = None) -> float:
        key = tuple(keep.get(g.name, g.channels) for g in self.groups)
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = self._score(keep, beat)
        self.last_images = len(self.val_set)
        if self.parts is None:
            return counts[0] / len(self.val_set) if len(self.val_set) else 0.0
        first = len(self.parts[0])
        if beat is not None and self._cut(counts[0], first, beat):
            # Cut: the same answer whether or not the rest was ever scored, so that what an episode gets does
            # not depend on what the memo holds (a resumed search starts with none and reaches the same policy).
            self.last_images = first
            return counts[0] / first
        if len(counts) == 1:  # cut before, asked for in full now
            counts = self.counts[key] = self._score(keep, None)
        return sum(counts) / len(self.val_set)

    @staticmethod
    def _cut(correct: int, images: int, beat: float) -> bool:
        """Whether a student with ``correct`` of the first part's ``images`` is far enough under ``beat``:
        its optimistic accuracy (:func:`upper_bound`) under ``beat`` less :data:`RACE_MARGIN`."""
        return upper_bound(correct, images) < beat - RACE_MARGIN

    def _score(self, keep: dict[str, int], beat: float | None) -> list[int]:
        student = prune_channels(self.teacher, self.example, keep)
        if CHANNELS_LAST and self.example.dim() == 4:
            student = student.to(memory_format=torch.channels_last)
        short_finetune(student, self.teacher, self.train_set, self.finetune_steps, self.seed)
        fold = self.pairs if FOLD_NORMS else None
        if self.parts is None:
            accuracy = score_student(student, self.train_set, self.val_set, self.bn_calibration, fold, precision=self.precision)
            return [round(accuracy * len(self.val_set))]
        first, rest = self.parts
        student = ready_student(student, self.train_set, self.bn_calibration, fold)
        counts = [round(evaluate_in(student, first, self.precision, fold is not None) * len(first))]
        if beat is not None and self._cut(counts[0], len(first), beat):
            return counts
        counts.append(round(evaluate_in(student, rest, self.precision, fold is not None) * len(rest)))
        return counts


def policy_scorer(teacher: Any, example: Any, groups: list[Any], train_set: Any, val_set: Any,
                  bn_calibration: int, precision: str = "fp32", finetune_steps: int = 0,
                  seed: int = 0, racing: bool = False) -> PolicyScorer:
    """The search's accuracy of a channel policy, memoised (:class:`PolicyScorer`)."""
    return PolicyScorer(teacher, example, groups, train_set, val_set, bn_calibration, precision, finetune_steps, seed, racing)


def score_student(student: Any, train_set: Any, val_set: Any, bn_calibration: int,
                  fold: list[tuple[str, str]] | None, precision: str = "fp32") -> float:
    """A student's reward accuracy: its BatchNorm statistics re-estimated on ``bn_calibration`` training
    images (in fp32), then its accuracy on ``val_set``, evaluated in ``precision`` (``bf16``: under
    PyTorch's CPU autocast, :func:`resolve_scoring_precision`). With ``fold`` (:func:`conv_norm_pairs`,
    possibly empty) the student is only scored and then thrown away: it runs under inference mode and the
    pairs are folded before the evaluation (it is changed in place); None scores it as it is."""
    return evaluate_in(ready_student(student, train_set, bn_calibration, fold), val_set, precision, fold is not None)


def ready_student(student: Any, train_set: Any, bn_calibration: int, fold: list[tuple[str, str]] | None) -> Any:
    """``student`` as :func:`score_student` evaluates it: BatchNorm re-estimated, then, with ``fold``, the
    pairs folded (in place, under inference mode)."""
    if fold is None:
        recalibrate_batchnorm(student, train_set, bn_calibration)
        return student
    with torch.inference_mode():
        recalibrate_batchnorm(student, train_set, bn_calibration)
    return fold_norms(student, fold)


def evaluate_in(student: Any, data: Any, precision: str, inference: bool) -> float:
    """Top-1 accuracy of a :func:`ready_student` on ``data`` in ``precision`` (under inference mode when
    ``inference``: the student was folded)."""
    low = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(inference), low:
        return evaluate(student, data)
