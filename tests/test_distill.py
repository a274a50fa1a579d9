"""Tests of training and distillation: the losses, determinism, budgets, and evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from hwcompress.model.data import loader
from hwcompress.model.embedded import resnet_cifar
from hwcompress.model.training import evaluate, train_supervised
from hwcompress.slim.distill import KDLoss, distill, logit_l2_loss

WIDTHS = (4, 8, 8)  # tiny networks keep every test well under a second per step


def _dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return TensorDataset(images, labels)


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resnet_cifar(depth=8, widths=WIDTHS)


def _kl(student, teacher, images, temperature=4.0) -> float:
    with torch.no_grad():
        return float(KDLoss(temperature)(student.eval()(images), teacher.eval()(images)))


def test_kd_loss_matches_hinton_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    temperature, alpha = 3.0, 0.7
    p_teacher = F.softmax(t / temperature, 1)
    soft = p_teacher * (p_teacher.log() - F.log_softmax(s / temperature, 1))
    expected = alpha * temperature**2 * soft.sum(1).mean() + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(KDLoss(temperature, alpha)(s, t, y), expected, atol=1e-6)
    assert float(KDLoss()(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_logit_l2_loss_is_mse_and_does_not_reach_the_teacher():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    loss = logit_l2_loss(s, t)
    assert torch.allclose(loss, ((s - t) ** 2).mean())
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_kd_steps_reduce_divergence_from_teacher():
    data = _dataset()
    teacher, student = _tiny(1), _tiny(2)
    images = data.tensors[0]
    before = _kl(student, teacher, images)
    result = distill(student, teacher, data, steps=15, loss="kd", lr=0.05, batch_size=32, seed=0)
    after = _kl(student, teacher, images)
    assert after < 0.8 * before
    assert result["steps"] == 15 and result["epochs"] == pytest.approx(15 / 3)
    assert result["seconds"] > 0 and result["loss"] > 0
    assert not teacher.training and not student.training


def test_l2_distillation_reduces_logit_distance():
    data = _dataset()
    teacher, student = _tiny(1), _tiny(2)
    images = data.tensors[0]

    def distance() -> float:
        with torch.no_grad():
            return float(logit_l2_loss(student.eval()(images), teacher.eval()(images)))

    before = distance()
    distill(student, teacher, data, epochs=4, loss="l2", lr=0.02, batch_size=32, seed=0)
    assert distance() < 0.8 * before


def test_distillation_is_deterministic_under_a_seed():
    data = _dataset()
    teacher = _tiny(1)

    def run(seed: int) -> dict[str, torch.Tensor]:
        student = _tiny(2)
        noise = lambda x: x + 0.1 * torch.randn_like(x)  # draws from the seeded global generator
        distill(student, teacher, data, steps=5, batch_size=16, seed=seed, augment=noise)
        return student.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_teacher_is_not_changed_and_keeps_its_mode():
    data = _dataset(48)
    teacher, student = _tiny(1), _tiny(2)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(student, teacher, data, steps=3, batch_size=16)
    assert teacher.training  # restored
    # Eval mode during distillation means BatchNorm running statistics did not move either.
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_budget_arguments_are_checked():
    data = _dataset(32)
    with pytest.raises(ValueError, match="exactly one"):
        distill(_tiny(0), _tiny(1), data)
    with pytest.raises(ValueError, match="exactly one"):
        distill(_tiny(0), _tiny(1), data, epochs=1, steps=1)
    with pytest.raises(ValueError, match="'kd' or 'l2'"):
        distill(_tiny(0), _tiny(1), data, steps=1, loss="mse")
    empty = TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        distill(_tiny(0), _tiny(1), empty, steps=1)


def test_steps_budget_cycles_through_the_data_and_reports_progress():
    data = _dataset(32)
    seen = []
    result = distill(
        _tiny(0),
        _tiny(1),
        data,
        steps=7,
        batch_size=16,
        progress=lambda step, total, loss: seen.append((step, total)),
        val_ds=data,
    )
    assert result["steps"] == 7 and result["epochs"] == pytest.approx(3.5)
    assert seen == [(step, 7) for step in range(1, 8)]
    assert 0.0 <= result["val_accuracy"] <= 1.0


def test_train_supervised_learns_a_separable_problem():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=generator)
    images = torch.randn(64, 3, 8, 8, generator=generator) * 0.3 + labels.view(-1, 1, 1, 1).float() * 2 - 1
    data = TensorDataset(images, labels)
    model = resnet_cifar(depth=8, num_classes=2, widths=WIDTHS)
    result = train_supervised(model, data, epochs=6, lr=0.05, seed=0, batch_size=16, val_ds=data)
    assert result["val_accuracy"] == 1.0
    assert result["steps"] == 24 and not model.training


def test_evaluate_accepts_datasets_and_loaders_and_restores_mode():
    data = _dataset(40)
    model = _tiny(0).train()
    accuracy = evaluate(model, data, batch_size=16)
    assert 0.0 <= accuracy <= 1.0
    assert evaluate(model, loader(data, 7)) == accuracy
    assert model.training

    class Oracle(torch.nn.Module):
        def forward(self, x):
            return F.one_hot(data.tensors[1][: len(x)], 10).float()

    assert evaluate(Oracle(), data, batch_size=64) == 1.0
    assert evaluate(model, TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))) == 0.0


def test_batchnorm_is_recalibrated_on_a_sample_of_every_class_not_the_first_items():
    """A train/ folder is read class by class: the first 64 items were all one class's, and a student's
    statistics described that class alone. The sample is shuffled in a fixed order now."""
    import torch
    from torch.utils.data import TensorDataset

    from hwcompress.search.scoring import recalibrate_batchnorm

    # 256 items sorted by class: the first half all 0.0, the second all 4.0 (one channel, 2x2 pixels).
    images = torch.cat([torch.zeros(128, 1, 2, 2), torch.full((128, 1, 2, 2), 4.0)])
    data = TensorDataset(images, torch.cat([torch.zeros(128), torch.ones(128)]).long())
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Dropout(0.5)).eval()
    recalibrate_batchnorm(model, data, 64)
    assert 1.0 < float(model[0].running_mean) < 3.0  # both classes (the first 64 items alone: 0.0)
    first = float(model[0].running_mean)
    recalibrate_batchnorm(model, data, 64)
    assert float(model[0].running_mean) == first and not model.training  # the same sample every time; eval mode kept


def test_the_batchnorm_sample_is_read_once_per_dataset():
    """Every student of a search re-estimates its statistics on the same images: they are read once per
    dataset (an image folder decodes each item again on every access), with the same result."""
    import torch
    from torch.utils.data import Dataset

    from hwcompress.model.training import reestimate_batchnorm
    from hwcompress.search.scoring import recalibrate_batchnorm

    class Counting(Dataset):
        def __init__(self):
            self.reads = 0

        def __len__(self):
            return 300

        def __getitem__(self, index):
            self.reads += 1
            return torch.full((1, 2, 2), float(index)), index % 2

    data = Counting()
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1)).eval()
    recalibrate_batchnorm(model, data, 100)
    first, reads = float(model[0].running_mean), data.reads
    assert reads == 128  # two batches of 64
    with torch.inference_mode():  # as a scorer calls it
        recalibrate_batchnorm(model, data, 100)
    recalibrate_batchnorm(model, data, 100)
    assert data.reads == reads and float(model[0].running_mean) == first
    fresh = torch.nn.Sequential(torch.nn.BatchNorm2d(1)).eval()
    reestimate_batchnorm(fresh, data, 100, seed=0)  # the same sample as read directly
    assert float(fresh[0].running_mean) == first and data.reads == 2 * reads

    class Shifting(torch.nn.Module):  # a first op that changes its input in place must not change the kept sample
        def forward(self, x):
            return x.add_(100.0)

    recalibrate_batchnorm(torch.nn.Sequential(Shifting(), torch.nn.BatchNorm2d(1)), data, 100)
    recalibrate_batchnorm(model, data, 100)
    assert float(model[0].running_mean) == first
    # A dataset that cannot be weakly referenced (a list of pairs, which the Python API accepts) is read each time.
    pairs = [data[i] for i in range(300)]
    recalibrate_batchnorm(model, pairs, 100)
    assert float(model[0].running_mean) == first
