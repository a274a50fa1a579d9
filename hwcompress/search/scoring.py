"""How the search scores a student without training it, and builds the student a policy describes.

Scoring follows AMC: the teacher pruned to the policy, its BatchNorm statistics re-estimated on a few
training images (``--bn-calibration``), accuracy on the reward-validation split (never the test split).
With ``--reward-finetune-steps N`` each student is first distilled from the teacher for N steps
(:func:`short_finetune`; Distiller's AMC ``--amc-ft-epochs``, HAQ's short-term retraining).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

from hwcompress.measure.runner import cpu_flags
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


def policy_scorer(teacher: Any, example: Any, groups: list[Any], train_set: Any, val_set: Any,
                  bn_calibration: int, precision: str = "fp32", finetune_steps: int = 0,
                  seed: int = 0) -> Callable[[dict[str, int]], float]:
    """The search's accuracy of a channel policy, memoised: the teacher pruned to it, distilled for
    ``finetune_steps`` (:func:`short_finetune`; 0: no training), its BatchNorm statistics re-estimated,
    scored on ``val_set`` (evaluated in ``precision``)."""
    cache: dict[tuple, float] = {}
    pairs = conv_norm_pairs(teacher, example) if FOLD_NORMS else []

    def score(keep: dict[str, int]) -> float:
        key = tuple(keep.get(g.name, g.channels) for g in groups)
        if key not in cache:
            student = prune_channels(teacher, example, keep)
            if CHANNELS_LAST and example.dim() == 4:
                student = student.to(memory_format=torch.channels_last)
            short_finetune(student, teacher, train_set, finetune_steps, seed)
            cache[key] = score_student(student, train_set, val_set, bn_calibration, pairs if FOLD_NORMS else None,
                                       precision=precision)
        return cache[key]

    return score


def score_student(student: Any, train_set: Any, val_set: Any, bn_calibration: int,
                  fold: list[tuple[str, str]] | None, precision: str = "fp32") -> float:
    """A student's reward accuracy: its BatchNorm statistics re-estimated on ``bn_calibration`` training
    images (in fp32), then its accuracy on ``val_set``, evaluated in ``precision`` (``bf16``: under
    PyTorch's CPU autocast, :func:`resolve_scoring_precision`). With ``fold`` (:func:`conv_norm_pairs`,
    possibly empty) the student is only scored and then thrown away: it runs under inference mode and the
    pairs are folded before the evaluation (it is changed in place); None scores it as it is."""
    low = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if fold is None:
        recalibrate_batchnorm(student, train_set, bn_calibration)
        with low:
            return evaluate(student, val_set)
    with torch.inference_mode():
        recalibrate_batchnorm(student, train_set, bn_calibration)
    fold_norms(student, fold)
    with torch.inference_mode(), low:
        return evaluate(student, val_set)
