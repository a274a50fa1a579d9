"""The embedded default: a CIFAR-style ResNet trained on scikit-learn's digits, cached after first use.

hwcompress needs no downloads to show what it does. The default teacher is a ResNet-56 (He et al.,
2016: three stages of nine basic blocks, widths 16/32/64) trained on the bundled digits data set
upscaled to 32x32 (:func:`hwcompress.model.data.digits_splits`). It is trained on first use with a fixed
seed, in about three minutes on two CPU cores, and cached in the user cache folder; later calls load it.

The shortcut at a shape change is a 1x1 convolution plus BatchNorm ("option B") rather than the
paper's parameter-free zero padding, because dependency-graph pruning and ONNX export need real
modules there. With it ResNet-56 has 855,770 parameters (853,018 with option A).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwcompress.files import write_atomic
from hwcompress.model.data import RandomShift, digits_splits
from hwcompress.model.training import evaluate, train_supervised

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache folder.
CACHE_DIR_ENV = "HWCOMPRESS_CACHE_DIR"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``shortcut`` is an empty ``nn.Sequential`` (identity) when input and output shapes match, so such
    a block can be replaced by ``nn.Identity`` without changing the network's shapes; otherwise it is
    a strided 1x1 convolution plus BatchNorm.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of the first convolution and the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, three stages of basic blocks, global average pooling, a linear head.

    Build it with :func:`resnet_cifar`. Submodules are ``stem``, ``layer1`` .. ``layer3`` (each an
    ``nn.Sequential`` of :class:`BasicBlock`), ``pool`` and ``fc``.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        in_channels = widths[0]
        stages = []
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, width, stride if index == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_cifar(
    depth: int = 56, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)
) -> nn.Module:
    """Build a CIFAR-style ResNet with option-B (1x1 convolution) shortcuts, Kaiming-initialised.

    Args:
        depth: Number of weighted layers, ``6 n + 2`` for ``n`` blocks per stage (8, 14, 20, 32, 56, 110).
        num_classes: Outputs of the linear head.
        widths: Channels of the three stages; the stem has ``widths[0]``.

    Returns:
        The network, expecting ``(N, 3, H, W)`` inputs (32x32 in the paper).

    Raises:
        ValueError: ``depth`` is not of the form ``6 n + 2`` with ``n >= 1``.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110), got {depth}")
    return ResNetCifar((depth - 2) // 6, num_classes, tuple(widths))


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 (three blocks per stage, 0.27M parameters)."""
    return resnet_cifar(20, num_classes)


def resnet56(num_classes: int = 10) -> nn.Module:
    """ResNet-56 (nine blocks per stage, 0.86M parameters)."""
    return resnet_cifar(56, num_classes)


@dataclass(frozen=True)
class TeacherRecipe:
    """How the default teacher is trained. Any change gives a new cache file, hence a retrain.

    Attributes:
        depth: ResNet depth.
        epochs: Passes over the digits train split.
        lr: Peak learning rate of the one-cycle schedule.
        batch_size: Images per optimisation step.
        weight_decay: SGD weight decay.
        max_shift: Random-shift augmentation, in pixels.
        version: Bumped when the training code changes in a way the fields above do not capture.
    """

    depth: int = 56
    epochs: int = 15
    lr: float = 0.1
    batch_size: int = 64
    weight_decay: float = 5e-4
    max_shift: int = 2
    version: int = 1

    def digest(self, seed: int) -> str:
        """Short hash of the recipe and seed, used in the cache file name."""
        text = json.dumps({**asdict(self), "seed": seed, "data": "digits-32"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEFAULT_RECIPE = TeacherRecipe()


def teacher_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder cached teachers live in.

    Args:
        override: Folder to use instead of the default.

    Returns:
        ``override`` if given, else ``$HWCOMPRESS_CACHE_DIR``, else the platform's user cache folder
        for hwcompress; in every case with ``teacher/`` appended.
    """
    if override is None:
        override = os.environ.get(CACHE_DIR_ENV) or None
    if override is None:
        import platformdirs

        override = platformdirs.user_cache_dir("hwcompress")
    return Path(override).expanduser() / "teacher"


def default_teacher(
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    epochs: int | None = None,
    recipe: TeacherRecipe | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained default teacher: ResNet-56 on digits, trained on first use and cached.

    Args:
        cache_dir: Folder for the cache (``teacher/`` is appended); default ``$HWCOMPRESS_CACHE_DIR`` or
            the user cache folder.
        seed: Training seed; each seed is cached separately.
        progress: Show a progress bar (on stderr) while training.
        epochs: Override the recipe's number of epochs.
        recipe: Override the whole training recipe (tests use a tiny one).

    Returns:
        The model in eval mode on the CPU, and metadata: ``test_accuracy``, ``val_accuracy``,
        ``epochs``, ``seed``, ``train_seconds``, ``torch_version``, ``params``, ``recipe``,
        ``recipe_hash``, plus ``cache_path`` and ``from_cache`` describing this call.
    """
    recipe = recipe or DEFAULT_RECIPE
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    digest = recipe.digest(seed)
    path = teacher_cache_dir(cache_dir) / f"resnet{recipe.depth}-digits-seed{seed}-{digest}.pt"

    if path.exists():
        try:
            model = resnet_cifar(recipe.depth)
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state_dict"])
            meta = dict(saved["meta"])
        except Exception as exc:  # a truncated or foreign file: retrain rather than fail
            logger.warning("ignoring unreadable teacher cache %s (%s); retraining", path, exc)
        else:
            model.eval()
            return model, {**meta, "cache_path": str(path), "from_cache": True}

    # Training seeds the global generator; fork it so the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        model, meta = _train_teacher(recipe, seed, progress)
    meta["recipe_hash"] = digest
    state = {"state_dict": model.state_dict(), "meta": meta}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return model, {**meta, "cache_path": str(path), "from_cache": False}


def _train_teacher(recipe: TeacherRecipe, seed: int, progress: bool) -> tuple[nn.Module, dict[str, Any]]:

    splits = digits_splits()
    torch.manual_seed(seed)  # the initial weights depend on the seed too
    model = resnet_cifar(recipe.depth, splits.num_classes)
    started = time.perf_counter()
    train_supervised(
        model,
        splits.train,
        epochs=recipe.epochs,
        lr=recipe.lr,
        seed=seed,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        augment=RandomShift(recipe.max_shift),
        progress=progress,
        description="Training the default teacher (first use only)",
    )
    seconds = time.perf_counter() - started
    model.eval()
    meta = {
        "model": f"resnet{recipe.depth}",
        "dataset": splits.name,
        "test_accuracy": evaluate(model, splits.test),
        "val_accuracy": evaluate(model, splits.val),
        "epochs": recipe.epochs,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "torch_version": str(torch.__version__),
        "params": sum(p.numel() for p in model.parameters()),
        "recipe": asdict(recipe),
    }
    return model, meta


