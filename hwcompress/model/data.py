"""Data sets for training, reward validation and testing.

Every source ends up as a :class:`DataSplits`: three map-style datasets yielding ``(image, label)``
with images already as normalised float tensors. ``train`` fine-tunes and distils students, ``val`` is
the reward-validation split the search scores candidates on, and ``test`` is held out for the final
report only, so search decisions never see it.

Sources, chosen by :func:`load_data`:

* ``None`` or ``"digits"``: the embedded default, scikit-learn's bundled 8x8 digits upscaled to 32x32
  (:func:`digits_splits`). No download.
* a folder: an ImageFolder tree, either with ``train/``, ``test/`` and optionally ``val/`` subfolders,
  or a single tree of class folders that is split with a fixed seed. Its images are read at their own
  size when they all share one of at most 224x224, else resized and centre-cropped to 224 (or to
  ``input_size``); the splits' ``notes`` say which.
* ``"pkg.module:factory"``: a function returning a :class:`DataSplits` or a ``(train, val, test)`` tuple.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hwcompress.errors import UserError

#: Fractions of a single pool that become the test and reward-validation splits; the rest is train.
TEST_FRACTION = 0.20
VAL_FRACTION = 0.15
#: Seed of the permutation that splits a single pool; fixed so a split never changes between runs.
SPLIT_SEED = 0

#: ImageNet statistics, the normalisation torchvision's pretrained models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224

# A dotted module path, a colon, a Python identifier: "pkg.module:factory".
_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HOW_TO = "pass 'digits', an ImageFolder folder, or 'pkg.module:factory'"


@dataclass
class DataSplits:
    """The three splits of one data set, plus what a model needs to know about its inputs.

    Attributes:
        train: Dataset used to fine-tune and distil.
        val: Reward-validation dataset scored during the search.
        test: Held-out dataset for the final report.
        num_classes: Number of classes (labels are ``0 .. num_classes - 1``).
        input_shape: Shape of a batch of one input, e.g. ``(1, 3, 32, 32)``.
        name: Short name used in reports.
        class_names: Optional names of the classes, in label order.
        skipped: Image files left out because they could not be read (``--skip-bad-images``).
        notes: What the report should say about how the data was read (an image folder's input size).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    class_names: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def split_sizes(total: int) -> tuple[int, int, int]:
    """Return the ``(train, val, test)`` sizes a pool of ``total`` items is split into.

    Test and val are ``floor(20%)`` and ``floor(15%)`` of the pool; train takes the rest, so the
    sizes always add up to ``total``.
    """
    test = int(total * TEST_FRACTION)
    val = int(total * VAL_FRACTION)
    return total - val - test, val, test


def split_indices(total: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int], list[int]]:
    """Split ``range(total)`` into disjoint ``(train, val, test)`` index lists with a seeded permutation.

    Args:
        total: Number of items in the pool.
        seed: Seed of the permutation; the same seed always gives the same split.

    Returns:
        Three disjoint lists of indices covering ``range(total)``.
    """
    n_train, n_val, _ = split_sizes(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def digits_splits(seed: int = 0, size: int = 32) -> DataSplits:
    """The embedded default data set: scikit-learn's digits, upscaled to ``size`` x ``size`` RGB.

    The 1,797 bundled 8x8 images (pixel values 0..16) are scaled to 0..1, upscaled bilinearly,
    replicated to three channels and normalised with the train split's mean and standard deviation.
    With the default fractions the splits hold 1,169 train, 269 val and 359 test images.

    Args:
        seed: Seed of the permutation that assigns images to splits.
        size: Side of the upscaled images.

    Returns:
        The splits as ``TensorDataset`` objects of ``(float images (N, 3, size, size), int64 labels)``.
    """
    from sklearn.datasets import load_digits  # sklearn is slow to import; only the default needs it

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.int64)

    train_idx, val_idx, test_idx = (torch.tensor(ix) for ix in split_indices(len(labels), seed))
    # Statistics from train only, so nothing about val or test leaks into the inputs.
    mean = images[train_idx].mean()
    std = images[train_idx].std()
    images = (images - mean) / std

    def part(ix: torch.Tensor) -> TensorDataset:
        return TensorDataset(images[ix], labels[ix])

    return DataSplits(
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        num_classes=10,
        input_shape=(1, 3, size, size),
        name="digits",
        class_names=tuple(str(d) for d in range(10)),
    )


class RandomShift:
    """Batch augmentation: shift each image by up to ``max_shift`` pixels in x and y.

    Borders are filled by replicating the edge, which for digits is background. Randomness comes from
    the global torch generator, so ``torch.manual_seed`` makes it repeatable.

    Args:
        max_shift: Largest shift in pixels, in each direction.
    """

    def __init__(self, max_shift: int = 2) -> None:
        self.max_shift = max_shift

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return a shifted copy of a ``(N, C, H, W)`` batch."""
        p = self.max_shift
        if p <= 0:
            return images
        n, c, h, w = images.shape
        padded = F.pad(images, (p, p, p, p), mode="replicate")
        dy = torch.randint(0, 2 * p + 1, (n,), device=images.device)
        dx = torch.randint(0, 2 * p + 1, (n,), device=images.device)
        rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]
        cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]
        # One gather for the whole batch instead of a Python loop of crops.
        return padded[
            torch.arange(n, device=images.device)[:, None, None, None],
            torch.arange(c, device=images.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


def loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A deterministic single-process ``DataLoader``.

    Args:
        dataset: Map-style dataset.
        batch_size: Items per batch.
        shuffle: Reshuffle every epoch, in an order fixed by ``seed``.
        seed: Seed of the loader's own generator, independent of the global torch generator.
        drop_last: Drop a short last batch (a batch of one breaks BatchNorm in train mode).

    Returns:
        A ``DataLoader`` with ``num_workers=0``.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


def class_counts(dataset: Any, limit: int = 50_000) -> dict[int, int] | None:
    """Items per label, read from the dataset's own label list where it has one (``targets``,
    ``tensors``, a ``Subset`` of those), else by reading up to ``limit`` items; None when it is larger
    than that and has no label list (the check is then skipped rather than slow)."""
    labels: list[int] | None = None
    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        labels = None if inner is None else [inner[i] for i in dataset.indices]
    else:
        labels = _labels(dataset)
    if labels is None:
        if len(dataset) > limit:
            return None
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return counts


def stratified_subset(dataset: Any, size: int) -> Any:
    """A fixed subset of ``size`` items with the classes in their proportions (each class's first items,
    in order; deterministic), or ``dataset`` itself when it has no more than ``size``. Without a label
    list (see :func:`class_counts`) the first ``size`` items."""
    if size >= len(dataset):
        return dataset
    labels = _labels(dataset)
    if labels is None:
        return Subset(dataset, range(size))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    # Largest remainder: each class gets its share of ``size``, at least one item while room is left.
    shares = {c: len(ix) * size / len(labels) for c, ix in by_class.items()}
    quota = {c: min(len(by_class[c]), max(1, int(share))) for c, share in shares.items()}
    for c in sorted(shares, key=lambda c: shares[c] - int(shares[c]), reverse=True):
        if sum(quota.values()) >= size:
            break
        if quota[c] < len(by_class[c]):
            quota[c] += 1
    while sum(quota.values()) > size:  # more classes than ``size``: drop the largest quotas' extras
        largest = max(quota, key=lambda c: quota[c])
        quota[largest] -= 1
    chosen = sorted(i for c, ix in by_class.items() for i in ix[: quota[c]])
    return Subset(dataset, chosen)


#: A split read lazily (an image folder) is held in memory for a search when its images take at most this.
IN_MEMORY_BYTES = 1 << 30


def held_in_memory(dataset: Any, max_bytes: int = IN_MEMORY_BYTES) -> tuple[Any, int]:
    """``dataset`` read once into a ``TensorDataset`` of (images, labels) when it is an image folder (or a
    subset of one), whose items are files decoded on each access, and its images take at most
    ``max_bytes``; else ``dataset`` itself (tensors, and other datasets, whose items may be drawn anew on
    each access). Returns the dataset and the bytes its images now hold in memory (0: left as it was).
    The items are the same tensors in the same order (a folder's transform here is deterministic), so a
    search that scores every student on it reads each image once instead of once per student."""
    from torchvision.datasets import DatasetFolder

    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    if len(dataset) == 0 or not isinstance(inner, DatasetFolder):
        return dataset, 0
    first, _label = dataset[0]
    if not isinstance(first, torch.Tensor) or first.numel() * first.element_size() * len(dataset) > max_bytes:
        return dataset, 0
    images = torch.empty((len(dataset), *first.shape), dtype=first.dtype)
    labels = torch.empty(len(dataset), dtype=torch.int64)
    start = 0
    for batch, label in loader(dataset, 256):
        images[start:start + len(batch)] = batch
        labels[start:start + len(batch)] = torch.as_tensor(label)
        start += len(batch)
    return TensorDataset(images, labels), images.numel() * images.element_size()


def has_label_list(dataset: Any) -> bool:
    """Whether ``dataset``'s labels can be read without loading its items (what
    :func:`stratified_subset` needs to keep the classes in their proportions)."""
    return _labels(dataset) is not None


def _labels(dataset: Any) -> list[int] | None:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        return [int(v) for v in dataset.tensors[1].tolist()]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(v) for v in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    return None


def check_splits(splits: DataSplits) -> None:
    """Refuse data a search cannot learn from: fewer than two classes, or a class missing from a split
    (its accuracy would be meaningless). One line naming the split and the class."""
    train = class_counts(splits.train)
    if train is None:
        return
    if len(train) < 2:
        raise UserError(f"the data has {len(train)} class in train; a classifier needs at least two (check the class folders)")
    names = splits.class_names
    for split_name in ("val", "test"):
        counts = class_counts(getattr(splits, split_name))
        if counts is None:
            continue
        missing = sorted(set(train) - set(counts))
        if missing:
            label = ", ".join(str(names[m]) if names and m < len(names) else str(m) for m in missing[:5])
            raise UserError(f"class {label} has no image in the {split_name} split; every class needs images in "
                            "train, val and test (add images, or remove the class)")


def load_data(spec: str | None, input_size: int | None = None, skip_bad_images: bool = False) -> DataSplits:
    """Load the data set named by a ``--data`` value.

    Args:
        spec: ``None`` or ``"digits"`` for the embedded default, a folder holding an ImageFolder tree,
            or ``"pkg.module:factory"``.
        input_size: Side of the square images: the upscale size for digits (default 32), the resize
            and centre-crop size for folders (default: the images' own size when they all share one,
            else 224), passed to a factory that takes an ``input_size`` argument.

    Returns:
        The data set's splits.

    Raises:
        UserError: The folder is missing or holds no images, or the factory cannot be imported, fails,
            or returns something other than splits.
    """
    if spec is None or spec == "digits":
        return digits_splits(size=input_size or 32)
    path = Path(spec).expanduser()
    if path.exists():
        return _image_folder_splits(path, input_size, skip_bad_images)
    if ":" in spec:
        return _factory_splits(spec, input_size)
    raise UserError(f"--data {spec!r}: no such folder; {_HOW_TO}")


def _readable(path: str, sizes: set[tuple[int, int]] | None = None) -> str | None:
    """Why the image at ``path`` cannot be decoded, or None when it can (its width and height then join
    ``sizes``: the header has them, so this costs nothing more)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
            if sizes is not None:
                sizes.add(tuple(image.size))
        return None
    except Exception as error:  # PIL raises many kinds for a damaged file
        return f"{type(error).__name__}: {error}"


def _drop_unreadable(dataset: Any, skip: bool, bad: list[str], sizes: set[tuple[int, int]] | None = None) -> None:
    """Check every image of an ImageFolder before anything expensive runs; a bad one is named (or, with
    ``skip``, dropped and counted in ``bad``); the sizes of the good ones are collected in ``sizes``."""
    keep = []
    for path, label in dataset.samples:
        problem = _readable(path, sizes)
        if problem is None:
            keep.append((path, label))
            continue
        if not skip:
            raise UserError(f"image {path} cannot be read ({problem[:120]}); remove it, or pass --skip-bad-images "
                            "to leave out the images that cannot be read")
        bad.append(path)
    dataset.samples = dataset.imgs = keep
    dataset.targets = [label for _, label in keep]


def _image_folder_splits(root: Path, input_size: int | None, skip_bad_images: bool = False) -> DataSplits:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise UserError(f"--data {str(root)!r} is a file, not a folder; {_HOW_TO}")
    bad: list[str] = []
    sizes: set[tuple[int, int]] = set()
    read: list[Any] = []  # every ImageFolder: its transform is set once the images' sizes are known

    def folder(path: Path) -> Any:
        try:
            dataset = ImageFolder(str(path))
        except FileNotFoundError as exc:
            raise UserError(
                f"--data {str(path)!r} holds no images in class subfolders "
                f"(expected {path}/<class>/<image>.png): {_one_line(exc)}"
            ) from exc
        _drop_unreadable(dataset, skip_bad_images, bad, sizes)
        read.append(dataset)
        return dataset

    split_folders = [name for name in ("test", "val") if (root / name).is_dir()]
    if split_folders and not (root / "train").is_dir():
        raise UserError(
            f"--data {str(root)!r} has {split_folders[0]}/ but no train/ folder; add train/ with the same class "
            f"folders (or put the class folders directly in {root} to have them split)"
        )
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise UserError(
                f"--data {str(root)!r} has train/ but no test/ folder; add test/ (and optionally val/)"
            )
        train = folder(root / "train")
        test = folder(root / "test")
        classes = train.classes
        if test.classes != classes:
            raise UserError(
                f"--data {str(root)!r}: test/ classes {test.classes} differ from train/ classes {classes}"
            )
        if (root / "val").is_dir():
            val = folder(root / "val")
            if val.classes != classes:
                raise UserError(
                    f"--data {str(root)!r}: val/ classes {val.classes} differ from train/ classes {classes}"
                )
        else:
            # No val/: carve the reward-validation split out of train so test stays untouched.
            n_val = int(len(train) * VAL_FRACTION)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
            val = Subset(train, order[:n_val])
            train = Subset(train, order[n_val:])
    else:
        pool = folder(root)
        classes = pool.classes
        train_idx, val_idx, test_idx = split_indices(len(pool))
        train, val, test = Subset(pool, train_idx), Subset(pool, val_idx), Subset(pool, test_idx)

    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise UserError(
            f"--data {str(root)!r} is too small to split into train, val and test; add more images"
        )
    transform, height, width, note = _folder_transform(root, input_size, sizes)
    for dataset in read:
        dataset.transform = transform
    return DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        input_shape=(1, 3, height, width),
        name=root.name,
        class_names=tuple(classes),
        skipped=tuple(bad),
        notes=(note,),
    )


def _folder_transform(root: Path, input_size: int | None, sizes: set[tuple[int, int]]) -> tuple[Any, int, int, str]:
    """How an image folder's images become tensors, the height and width they get, and a note saying so.

    Images that all share one size no larger than 224 are read at that size, as they are (``input_size``
    may name it, and names any shared size); otherwise they are resized and centre-cropped to
    ``input_size`` (default 224), the usual ImageNet evaluation pipeline (256 -> 224).
    """
    from torchvision import transforms

    tensor = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    shared = next(iter(sizes)) if len(sizes) == 1 else None  # (width, height)
    # Read as they are: images of one size, when asked for that size, or by default when no larger than the
    # default (a folder of one camera's 4032x3024 photos is not a 4032x3024 network input).
    small = shared is not None and max(shared) <= DEFAULT_IMAGE_SIZE
    if shared is not None and ((input_size is None and small) or input_size == shared[0] == shared[1]):
        width, height = shared
        return transforms.Compose(tensor), height, width, (
            f"input {height}x{width}: the size of every image in --data {root}, read as it is"
            + ("" if input_size else " (--input-shape 1,3,S,S resizes them to S)"))
    size = input_size or DEFAULT_IMAGE_SIZE
    resize = round(size * 256 / 224)
    found = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:2]) + (" and more" if len(sizes) > 2 else "")
    why = (f"the size asked for; the images are {found}" if input_size else
           f"the images are {found}, larger than {DEFAULT_IMAGE_SIZE}; --input-shape 1,3,S,S chooses S" if shared else
           f"the images differ in size: {found}; --input-shape 1,3,S,S chooses S")
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), *tensor]), size, size, (
        f"input {size}x{size}: each image in --data {root} resized to {resize} on its short side and "
        f"centre-cropped ({why})")


def _factory_splits(spec: str, input_size: int | None) -> DataSplits:
    if not _FACTORY_PATTERN.match(spec):
        raise UserError(f"--data {spec!r} is neither a folder nor of the form 'pkg.module:factory'")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module, not ours
        raise UserError(
            f"--data {spec!r}: cannot import {module_name!r} ({_one_line(exc)}); "
            "check the name and that it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--data {spec!r}: module {module_name!r} has no function {attr!r}")

    kwargs = {}
    if input_size is not None and "input_size" in _parameters(factory):
        kwargs["input_size"] = input_size
    try:
        result = factory(**kwargs)
    except Exception as exc:
        raise UserError(f"--data {spec!r}: the factory raised {_one_line(exc)}") from exc

    if not isinstance(result, DataSplits) and not (isinstance(result, Sequence) and len(result) in (2, 3)):
        raise UserError(f"--data {spec!r}: the factory returned {type(result).__name__}; "
                        "return hwcompress.model.data.DataSplits or a (train, val, test) tuple of datasets")
    try:
        return splits_from(result, name=attr)
    except UserError as error:
        raise UserError(f"--data {spec!r}: {error}") from None


def splits_from(data: Any, name: str = "datasets") -> DataSplits:
    """:class:`DataSplits` from what a Python caller holds: splits already, or ``(train, val)`` or
    ``(train, val, test)`` datasets of ``(image tensor, label)`` pairs (with two, the validation set
    stands in for the test set: the report's test accuracy is then a validation accuracy)."""
    if isinstance(data, DataSplits):
        return data
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) in (2, 3):
        train, val = data[0], data[1]
        test = data[2] if len(data) == 3 else val
        if len(train) == 0 or len(val) == 0 or len(test) == 0:
            raise UserError("the train, validation and test datasets must not be empty")
        image = train[0][0]
        if not hasattr(image, "shape"):
            raise UserError(f"a dataset item must be (image tensor, label), got {type(image).__name__} as the image")
        return DataSplits(
            train=train,
            val=val,
            test=test,
            num_classes=_count_classes(train),
            input_shape=(1, *tuple(image.shape)),
            name=name,
            class_names=tuple(train.classes) if hasattr(train, "classes") else None,
        )
    raise UserError(
        f"data must be (train, val) or (train, val, test) datasets, DataSplits, a folder or 'pkg.module:factory'; "
        f"got {type(data).__name__}"
    )


def resolve_data(data: Any, input_size: int | None = None, skip_bad_images: bool = False) -> DataSplits:
    """:class:`DataSplits` from a ``--data`` string (:func:`load_data`), None (digits), or datasets
    (:func:`splits_from`)."""
    if data is None or isinstance(data, (str, Path)):
        return load_data(None if data is None else str(data), input_size, skip_bad_images)
    return splits_from(data)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` squeezed onto one line, since user errors are shown as a single line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _count_classes(dataset: Any) -> int:
    """Number of classes, from the dataset's metadata when it has some, else by reading every label."""
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    if hasattr(dataset, "targets"):
        return int(max(dataset.targets)) + 1
    return int(max(int(label) for _, label in dataset)) + 1
