"""Knowledge distillation: how a compressed student recovers its teacher's accuracy.

:func:`distill` trains a student to mimic its teacher, either with Hinton's softened-softmax loss
(``"kd"``) or with the plain L2 distance between logits that N2N uses for its short per-student budget
(``"l2"``); the budget is given in epochs or in optimisation steps. The loop is the teacher's own
(:mod:`hwcompress.model.training`), so both are deterministic under a seed and print nothing unless
asked for a progress bar.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hwcompress.model.training import Augment, ProgressCallback, device_of, finish, optimise, sgd, train_loader

__all__ = ["KDLoss", "distill", "logit_l2_loss"]


class KDLoss(nn.Module):
    """Hinton et al.'s distillation loss.

    ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)``.
    The ``T^2`` factor keeps the soft term's gradients on the same scale whatever the temperature.

    Args:
        temperature: Softmax temperature ``T``; higher exposes more of the teacher's ranking of wrong
            classes.
        alpha: Weight of the soft (teacher) term; ``1 - alpha`` goes to the hard-label term.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the loss, a scalar; without ``targets`` only the soft term (unweighted by ``alpha``)."""
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits.detach() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if targets is None:
            return soft
        return self.alpha * soft + (1.0 - self.alpha) * F.cross_entropy(student_logits, targets)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


def logit_l2_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """N2N's distillation loss: mean squared error between raw logits, the teacher's detached.

    Args:
        student_logits: ``(N, classes)`` student outputs.
        teacher_logits: ``(N, classes)`` teacher outputs.

    Returns:
        The mean over batch and classes, a scalar.
    """
    return F.mse_loss(student_logits, teacher_logits.detach())


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_ds: Dataset,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    loss: Literal["kd", "l2"] = "kd",
    temperature: float = 4.0,
    alpha: float = 0.9,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: Augment | None = None,
    progress: bool | ProgressCallback | None = None,
    val_ds: Dataset | None = None,
    description: str = "Distilling",
) -> dict[str, Any]:
    """Train ``student`` to reproduce ``teacher``'s outputs on ``train_ds``.

    The student is usually a compressed copy of the teacher, already close to a good solution, so the
    learning rate decays with a cosine from the first step (no warm-up). The teacher runs in eval mode
    under ``no_grad`` and is left in its previous mode.

    Args:
        student: Network trained in place.
        teacher: Network whose logits are the targets.
        train_ds: Dataset of ``(image, label)`` pairs.
        epochs: Budget in passes over ``train_ds`` (may be fractional); give this or ``steps``.
        steps: Budget in optimisation steps, cycling through the data as needed.
        loss: ``"kd"`` for :class:`KDLoss`, ``"l2"`` for :func:`logit_l2_loss` (labels unused).
        temperature: KD temperature.
        alpha: KD weight of the soft term.
        lr: Initial learning rate of Nesterov SGD.
        batch_size: Items per step.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        seed: Seed for shuffling, augmentation and any randomness in the student.
        augment: Batch augmentation; teacher and student see the same augmented images.
        progress: ``True`` for a progress bar on stderr, a callback ``(step, total, loss)``, or None.
        val_ds: If given, the student's accuracy on it is reported.
        description: Label of the progress bar.

    Returns:
        ``loss`` (mean over the last epoch's worth of steps), ``steps``, ``epochs``, ``seconds``, and
        ``val_accuracy`` if ``val_ds`` was given. The student is left in eval mode.

    Raises:
        ValueError: Neither or both of ``epochs`` and ``steps`` given, or an unknown ``loss``.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    if loss == "kd":
        kd = KDLoss(temperature, alpha)
    elif loss != "l2":
        raise ValueError(f"loss must be 'kd' or 'l2', got {loss!r}")

    torch.manual_seed(seed)
    batches = train_loader(train_ds, batch_size, seed)
    total_steps = steps if steps is not None else math.ceil(epochs * len(batches))
    optimizer = sgd(student, lr, momentum, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    )
    teacher_device = device_of(teacher)
    teacher_was_training = teacher.training
    teacher.eval()

    def objective(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(images.to(teacher_device)).to(images.device)
        student_logits = student(images)
        if loss == "kd":
            return kd(student_logits, teacher_logits, labels)
        return logit_l2_loss(student_logits, teacher_logits)

    try:
        result = optimise(
            student, batches, total_steps, objective, optimizer, scheduler, augment, progress, description
        )
    finally:
        teacher.train(teacher_was_training)
    return finish(student, result, val_ds)


