"""Training loops shared by the teacher and the students: supervised training, evaluation, and the
optimisation loop with its progress bar.

Everything is deterministic under a seed: the global torch generator is seeded (initial randomness and
augmentation) and the data loader shuffles with its own seeded generator. The functions print nothing
unless asked for a progress bar (drawn on stderr, so ``--json`` output on stdout stays clean).
Distillation (:mod:`hwcompress.slim.distill`) uses the same loop.
"""

from __future__ import annotations

import time
from collections import deque
from itertools import islice
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hwcompress.model.data import loader

#: ``progress(step, total_steps, loss)``, called after every optimisation step.
ProgressCallback = Callable[[int, int, float], None]
#: A batch augmentation, ``images -> images``, drawing randomness from the global torch generator.
Augment = Callable[[torch.Tensor], torch.Tensor]


def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a dataset or loader of ``(image, label)`` pairs.

    The model runs in eval mode under ``no_grad``; its previous mode is restored afterwards.

    Args:
        model: Classifier returning ``(N, classes)`` logits.
        data: Dataset or DataLoader.
        batch_size: Batch size when ``data`` is a dataset.

    Returns:
        Fraction of correctly classified items, in ``[0, 1]`` (0 for an empty dataset).
    """
    batches = data if isinstance(data, DataLoader) else loader(data, batch_size)
    device = device_of(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for images, labels in batches:
                predictions = model(images.to(device)).argmax(dim=1)
                correct += int((predictions.cpu() == labels.cpu()).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    return correct / total if total else 0.0


def train_supervised(
    model: nn.Module,
    train_ds: Dataset,
    epochs: int,
    lr: float,
    seed: int = 0,
    *,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Augment | None = None,
    val_ds: Dataset | None = None,
    progress: bool | ProgressCallback | None = None,
    description: str = "Training",
    keep_last: bool = False,
    bn_images: int = 0,
) -> dict[str, Any]:
    """Train a classifier from labels with cross-entropy, Nesterov SGD and a one-cycle schedule.

    The learning rate warms up over the first quarter of the steps to ``lr``, then follows a cosine
    down to almost zero, which reaches good accuracy in few epochs.

    Args:
        model: Network to train in place (on whatever device it is on).
        train_ds: Dataset of ``(image, label)`` pairs.
        epochs: Passes over ``train_ds``.
        lr: Peak learning rate.
        seed: Seed for shuffling, augmentation and any randomness in the model.
        batch_size: Items per step.
        momentum: SGD momentum (Nesterov).
        weight_decay: SGD weight decay.
        augment: Batch augmentation applied to the images of each step.
        val_ds: If given, accuracy on it is reported.
        progress: ``True`` for a progress bar on stderr, a callback ``(step, total, loss)``, or None.
        description: Label of the progress bar.
        keep_last: Train on every item each epoch: the short last batch is kept (see :func:`train_loader`);
            False drops it, as the students' fine-tuning and the embedded teacher do.
        bn_images: After training, re-estimate the BatchNorm running statistics from this many training
            items (:func:`reestimate_batchnorm`; 0: keep the running averages training left).

    Returns:
        ``loss`` (mean over the last epoch), ``steps``, ``steps_per_epoch``, ``epochs``, ``seconds``,
        ``bn_images`` (items the statistics were re-estimated from), and ``val_accuracy`` if ``val_ds``
        was given. The model is left in eval mode.
    """
    torch.manual_seed(seed)
    batches = train_loader(train_ds, batch_size, seed, keep_last=keep_last)
    total_steps = epochs * len(batches)
    optimizer = sgd(model, lr, momentum, weight_decay)
    # OneCycleLR divides by its warm-up's end step, pct_start * total_steps - 1: zero (ZeroDivisionError) at 4 steps.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.25 if total_steps != 4 else 0.3,
        cycle_momentum=False,
    )

    def objective(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    result = optimise(
        model, batches, total_steps, objective, optimizer, scheduler, augment, progress, description
    )
    result["steps_per_epoch"] = len(batches)
    result["bn_images"] = reestimate_batchnorm(model, train_ds, bn_images, seed, batch_size) if bn_images > 0 else 0
    return finish(model, result, val_ds)


def device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def train_loader(dataset: Dataset, batch_size: int, seed: int, keep_last: bool = False) -> DataLoader:
    """Batches of ``dataset`` reshuffled every epoch in an order fixed by ``seed``.

    One item alone makes BatchNorm fail in train mode, so a last batch of one never stands alone: by
    default (``keep_last=False``) the short last batch is dropped (those items wait for another epoch's
    order); with ``keep_last`` every item is used every epoch, the short last batch is kept, and one of a
    single item joins the batch before it.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    if not keep_last:
        return loader(dataset, batch_size, shuffle=True, seed=seed, drop_last=len(dataset) > batch_size)
    sampler = _EveryItem(len(dataset), batch_size, torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0)


def steps_per_epoch(size: int, batch_size: int) -> int:
    """Batches an epoch of ``size`` items makes with ``train_loader(keep_last=True)``: a last batch of one
    item joins the one before it."""
    full, rest = divmod(size, batch_size)
    return full + (rest > 1 or (rest == 1 and full == 0))


class _EveryItem(Sampler[list[int]]):
    """Shuffled batches that use every item once an epoch (``train_loader(keep_last=True)``)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self.size, self.batch_size, self.generator = size, batch_size, generator

    def __len__(self) -> int:
        return steps_per_epoch(self.size, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        batches = [order[start:start + self.batch_size] for start in range(0, self.size, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            single = batches.pop()
            batches[-1] += single  # a batch of one would break BatchNorm
        return iter(batches)


def batchnorm_sample(dataset: Dataset, images: int, seed: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The batches :func:`reestimate_batchnorm` runs: at most ``ceil(images / batch_size)`` batches of a
    shuffled pass over ``dataset`` whose order ``seed`` fixes (images only, labels dropped)."""
    batches = -(-min(images, len(dataset)) // batch_size)
    return [batch for batch, _labels in islice(train_loader(dataset, batch_size, seed, keep_last=True), batches)]


def reestimate_batchnorm(model: nn.Module, dataset: Dataset, images: int, seed: int, batch_size: int = 64,
                         sample: list[torch.Tensor] | None = None) -> int:
    """Replace every BatchNorm layer's running statistics with their average over ``images`` training items.

    Training leaves running averages (momentum 0.1) of batches seen while the weights were still moving;
    after a short training they describe earlier weights, and the model in eval mode scores far below what
    its weights do (measured: a resnet18 trained 15 epochs on 120 images, 60% test accuracy in eval mode,
    100% once re-estimated). Here the BatchNorm layers alone run in train mode (dropout and the rest in
    eval mode, as at inference), under ``no_grad``, with ``momentum=None`` (a cumulative average) over at
    most ``ceil(images / batch_size)`` batches of a shuffled pass whose order ``seed`` fixes
    (:func:`batchnorm_sample`; ``sample``: those batches already read). No weight changes. Returns how
    many items were used (0 when the model has no BatchNorm layer).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or images <= 0:
        return 0
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    device = device_of(model)
    used = 0
    try:
        with torch.no_grad():
            for batch in sample if sample is not None else batchnorm_sample(dataset, images, seed, batch_size):
                model(batch.to(device, copy=sample is not None))  # a kept sample must survive an in-place first op
                used += len(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return used


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        parameters, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
    )


def _endless(batches: DataLoader) -> Iterator[Any]:
    """Batches epoch after epoch; the loader's generator reshuffles each epoch."""
    while True:
        yield from batches


def optimise(
    model: nn.Module,
    batches: DataLoader,
    total_steps: int,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    augment: Augment | None,
    progress: bool | ProgressCallback | None,
    description: str,
) -> dict[str, Any]:
    """The loop shared by supervised training and distillation."""
    device = device_of(model)
    recent: deque[float] = deque(maxlen=max(len(batches), 1))
    callback, bar = _progress_reporter(progress, description, total_steps)
    model.train()
    started = time.perf_counter()
    try:
        for step, (images, labels) in zip(range(1, total_steps + 1), _endless(batches)):
            images, labels = images.to(device), labels.to(device)
            if augment is not None:
                images = augment(images)
            loss = objective(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            recent.append(float(loss.detach()))
            if callback is not None:
                callback(step, total_steps, recent[-1])
    finally:
        if bar is not None:
            bar.stop()
    return {
        "loss": sum(recent) / len(recent) if recent else float("nan"),
        "steps": total_steps,
        "epochs": total_steps / max(len(batches), 1),
        "seconds": time.perf_counter() - started,
    }


def finish(model: nn.Module, result: dict[str, Any], val_ds: Dataset | None) -> dict[str, Any]:
    model.eval()
    if val_ds is not None:
        result["val_accuracy"] = evaluate(model, val_ds)
    return result


def _progress_reporter(
    progress: bool | ProgressCallback | None, description: str, total_steps: int
) -> tuple[ProgressCallback | None, Any]:
    """Turn the ``progress`` argument into a per-step callback and, for ``True``, a started rich bar."""
    if callable(progress):
        return progress, None
    if not progress:
        return None, None
    import sys

    if not sys.stderr.isatty():
        # A log, not a terminal: a line every tenth of the way (and at the end), never a silent phase.
        started = time.perf_counter()
        marks = {max(1, round(total_steps * k / 10)) for k in range(1, 11)}

        def line(step: int, _total: int, loss: float) -> None:
            if step in marks:
                print(f"{description}: step {step}/{total_steps}, loss {loss:.3f}, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)

        return line, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(description, total=total_steps, loss=float("nan"))
    bar.start()

    def update(step: int, _total: int, loss: float) -> None:
        bar.update(task, completed=step, loss=loss)

    return update, bar
