"""A harder image task made from scikit-learn's bundled digits, for benchmarks that need students to differ.

After 8 epochs of distillation every student on the plain digits ends within a point or two of its teacher
(docs/benchmarks.md, "Pruning and quantization: resnet18 at 64 px, down to the floor of int8"), so
a comparison of compression methods there measures noise. Here each digit is shifted at random by up
to an eighth of the image, a second digit of another class is laid over it at ``overlay`` of its
intensity, also shifted, and Gaussian noise of standard deviation ``noise`` is added (on pixel values in
0..1), all drawn once from ``seed`` (the same images every run). The label is the first digit's. Splits
as the embedded default's (1,169 / 269 / 359), normalised with the train split's mean and deviation.

A data factory, as ``--data`` takes one (``bench/`` on ``PYTHONPATH``)::

    PYTHONPATH=bench hwcompress search --data noisy_digits:splits -m resnet18 --train-teacher 8 ...
    python bench/search_quality.py --quantized --data noisy_digits:splits --model resnet18 ...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from hwcompress.model.data import DataSplits, split_indices


def splits(input_size: int | None = None, overlay: float = 0.6, noise: float = 0.35, seed: int = 0) -> DataSplits:
    """The noisy, overlaid digits at ``input_size`` px (default 64)."""
    from sklearn.datasets import load_digits

    size = input_size or 64
    digits = load_digits()
    base = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    base = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    count, reach = len(labels), max(1, size // 8)

    def shifted(images: torch.Tensor) -> torch.Tensor:
        moves = torch.randint(-reach, reach + 1, (len(images), 2), generator=generator)
        return torch.stack([torch.roll(image, (int(dy), int(dx)), dims=(1, 2)) for image, (dy, dx) in zip(images, moves)])

    # The overlaid digit: of another class, drawn at random.
    others = torch.randint(0, count, (count,), generator=generator)
    for _ in range(8):
        same = labels[others] == labels
        if not same.any():
            break
        others[same] = torch.randint(0, count, (int(same.sum()),), generator=generator)
    images = shifted(base) + overlay * shifted(base[others])
    images = images + noise * torch.randn(images.shape, generator=generator)
    images = images.expand(-1, 3, -1, -1).contiguous()
    train_idx, val_idx, test_idx = (torch.tensor(ix) for ix in split_indices(count, seed))
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std

    def part(ix: torch.Tensor) -> TensorDataset:
        return TensorDataset(images[ix], labels[ix])

    return DataSplits(train=part(train_idx), val=part(val_idx), test=part(test_idx), num_classes=10,
                      input_shape=(1, 3, size, size), name="noisy-digits", class_names=tuple(str(d) for d in range(10)))
