"""Tests of the data sets: the embedded digits splits, ImageFolder trees, factories, and user errors."""

from __future__ import annotations

import sys
import textwrap

import numpy
import pytest
import torch
from PIL import Image

from hwcompress.errors import UserError
from hwcompress.model.data import (
    DataSplits,
    RandomShift,
    digits_splits,
    load_data,
    loader,
    split_indices,
    split_sizes,
)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return digits_splits()


def _images(dataset) -> torch.Tensor:
    return dataset.tensors[0]


def test_digits_split_sizes_are_documented_and_add_up(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1169, 269, 359)
    assert split_sizes(1797) == (1169, 269, 359)
    assert digits.num_classes == 10 and digits.name == "digits"
    assert digits.input_shape == (1, 3, 32, 32)


def test_digits_shapes_dtypes_and_normalisation(digits):
    images, labels = digits.train.tensors
    assert images.shape == (1169, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert torch.equal(images[:, 0], images[:, 2])  # grey replicated to three channels
    assert abs(float(images.mean())) < 1e-4 and abs(float(images.std()) - 1) < 1e-4
    assert _images(digits.test).shape == (359, 3, 32, 32)


def test_split_indices_are_disjoint_and_cover_everything():
    train, val, test = split_indices(1797)
    assert len(set(train) | set(val) | set(test)) == 1797
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))


def test_digits_splits_do_not_share_images(digits):
    def rows(dataset):
        return {tuple(image[0, ::4, ::4].flatten().tolist()) for image in _images(dataset)}

    # Digits holds a few exact duplicates, so compare against the per-split counts, not zero.
    train, val, test = rows(digits.train), rows(digits.val), rows(digits.test)
    assert len(train & test) < 5 and len(val & test) < 5


def test_digits_splits_are_deterministic(digits):
    again = digits_splits()
    for a, b in [(digits.train, again.train), (digits.val, again.val), (digits.test, again.test)]:
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    other = digits_splits(seed=1)
    assert not torch.equal(other.test.tensors[1], digits.test.tensors[1])


def test_digits_size_and_load_data_default():
    small = load_data("digits", input_size=16)
    assert small.input_shape == (1, 3, 16, 16) and small.train[0][0].shape == (3, 16, 16)
    assert len(load_data(None).test) == 359


def test_loader_shuffles_reproducibly(digits):
    def first_labels(seed):
        return next(iter(loader(digits.train, 32, shuffle=True, seed=seed)))[1]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))
    assert loader(digits.train, 32).num_workers == 0


def test_random_shift_moves_images_within_bounds():
    images = torch.zeros(64, 3, 8, 8)
    images[:, :, 3:5, 3:5] = 1.0
    torch.manual_seed(0)
    shifted = RandomShift(2)(images)
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # the blob stays inside
    assert not torch.equal(shifted, images)
    torch.manual_seed(0)
    assert torch.equal(RandomShift(2)(images), shifted)
    assert torch.equal(RandomShift(0)(images), images)


def _write_class_tree(root, classes=("cat", "dog"), per_class=10, size=(20, 12)):
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (index * 100, i * 20, 50)).save(folder / f"{i}.png")


def test_image_folder_with_train_val_test(tmp_path):
    for split, count in [("train", 6), ("val", 2), ("test", 3)]:
        _write_class_tree(tmp_path / split, per_class=count)
    splits = load_data(str(tmp_path), input_size=16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)
    assert splits.num_classes == 2 and splits.class_names == ("cat", "dog")
    image, label = splits.test[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)
    assert splits.input_shape == (1, 3, 16, 16)


def test_image_folder_without_val_carves_it_from_train(tmp_path):
    _write_class_tree(tmp_path / "train", per_class=10)
    _write_class_tree(tmp_path / "test", per_class=2)
    splits = load_data(str(tmp_path), input_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (17, 3, 4)
    assert not set(splits.train.indices) & set(splits.val.indices)


def test_single_class_tree_is_split_with_a_fixed_seed(tmp_path):
    _write_class_tree(tmp_path, per_class=10)
    splits = load_data(str(tmp_path), input_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == split_sizes(20) == (13, 3, 4)
    again = load_data(str(tmp_path), input_size=8)
    assert splits.test.indices == again.test.indices
    assert splits.train[0][0].shape == (3, 8, 8)


def test_factory_returning_a_tuple_or_splits(tmp_path, monkeypatch):
    (tmp_path / "my_data_factory.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset
            from hwcompress.model.data import DataSplits

            def part(n, size):
                return TensorDataset(torch.zeros(n, 3, size, size), torch.arange(n) % 4)

            def as_tuple(input_size=24):
                return part(8, input_size), part(4, input_size), part(4, input_size)

            def as_splits():
                return DataSplits(part(8, 5), part(2, 5), part(2, 5), 4, (1, 3, 5, 5), "mine")

            def broken():
                raise RuntimeError("disk on fire\\nsecond line")

            def wrong():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    splits = load_data("my_data_factory:as_tuple")
    assert splits.num_classes == 4 and splits.input_shape == (1, 3, 24, 24) and len(splits.train) == 8
    assert load_data("my_data_factory:as_tuple", input_size=12).input_shape == (1, 3, 12, 12)
    assert load_data("my_data_factory:as_splits").name == "mine"
    with pytest.raises(UserError, match="RuntimeError: disk on fire second line") as caught:
        load_data("my_data_factory:broken")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="returned int"):
        load_data("my_data_factory:wrong")
    with pytest.raises(UserError, match="has no function 'missing'"):
        load_data("my_data_factory:missing")
    sys.modules.pop("my_data_factory", None)


def test_factory_import_error_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "my_bad_import.py").write_text("import no_such_module_for_hwcompress\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="cannot import 'my_bad_import'.*no_such_module_for_hwcompress"):
        load_data("my_bad_import:make")
    with pytest.raises(UserError, match="cannot import 'no_such_package_xyz.sub'.*No module named"):
        load_data("no_such_package_xyz.sub:make")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/definitely/not/here", "no such folder"),
        ("pkg.module:", "neither a folder nor"),
        ("pkg module:f", "neither a folder nor"),
        (":factory", "neither a folder nor"),
    ],
)
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as caught:
        load_data(spec)
    assert "\n" not in str(caught.value)


def test_folders_without_images_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no images"):
        load_data(str(tmp_path))  # empty folder, no class subfolders
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="no images"):
        load_data(str(tmp_path))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_data(str(tmp_path / "file.txt"))


def test_train_without_test_is_a_user_error(tmp_path):
    _write_class_tree(tmp_path / "train", per_class=2)
    with pytest.raises(UserError, match="no test/"):
        load_data(str(tmp_path))


@pytest.mark.parametrize("present, message", [(("test",), "has test/ but no train/"), (("val",), "has val/ but no train/"),
                                              (("test", "train-file"), "has test/ but no train/")])
def test_a_split_folder_without_train_is_a_user_error(tmp_path, present, message):
    """test/ (or val/) without train/ is a split tree missing its train split, not one class "test"."""
    for name in present:
        if name == "train-file":
            (tmp_path / "train").write_text("not a folder")
        else:
            _write_class_tree(tmp_path / name, per_class=2)
    with pytest.raises(UserError, match=message) as caught:
        load_data(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_an_image_folder_is_read_at_its_images_size_and_says_so(tmp_path):
    """Without an input size, images that share one size are read as they are (not upscaled to 224), a note
    names the size; images of several sizes are resized to 224 and the note says why."""
    _write_class_tree(tmp_path / "same", per_class=10, size=(16, 16))
    splits = load_data(str(tmp_path / "same"))
    assert splits.input_shape == (1, 3, 16, 16) and splits.train[0][0].shape == (3, 16, 16)
    assert len(splits.notes) == 1 and "input 16x16" in splits.notes[0] and "read as it is" in splits.notes[0]
    image, _ = splits.train[0]
    path = splits.train.dataset.samples[splits.train.indices[0]][0]
    raw = torch.tensor(numpy.asarray(Image.open(path).convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)  # every pixel as it is: no resize, no crop
    assert load_data(str(tmp_path / "same"), input_size=16).train[0][0].shape == (3, 16, 16)
    assert load_data(str(tmp_path / "same"), input_size=8).input_shape == (1, 3, 8, 8)
    _write_class_tree(tmp_path / "mixed", per_class=5, size=(16, 16))
    Image.new("RGB", (20, 12)).save(tmp_path / "mixed" / "cat" / "wide.png")
    mixed = load_data(str(tmp_path / "mixed"))
    assert mixed.input_shape == (1, 3, 224, 224) and mixed.train[0][0].shape == (3, 224, 224)
    assert "input 224x224" in mixed.notes[0] and "differ in size" in mixed.notes[0] and "20x12" in mixed.notes[0]
    _write_class_tree(tmp_path / "photos", per_class=5, size=(300, 240))  # one camera's photos: not a 300x240 input
    photos = load_data(str(tmp_path / "photos"))
    assert photos.input_shape == (1, 3, 224, 224) and "larger than 224" in photos.notes[0]
    assert load_data(str(tmp_path / "photos"), input_size=64).input_shape == (1, 3, 64, 64)


def test_a_validation_subset_keeps_every_class_in_its_proportion():
    from torch.utils.data import TensorDataset

    from hwcompress.model.data import class_counts, stratified_subset

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)  # sorted by class: the first 50 would all be 0s
    data = TensorDataset(torch.zeros(100, 1), labels)
    subset = stratified_subset(data, 50)
    assert len(subset) == 50 and class_counts(subset) == {0: 30, 1: 15, 2: 5}
    assert stratified_subset(data, 100) is data and stratified_subset(data, 7).indices == sorted(stratified_subset(data, 7).indices)
    assert class_counts(stratified_subset(data, 7)) == {0: 4, 1: 2, 2: 1}
    assert set(class_counts(stratified_subset(data, 2))) <= {0, 1, 2} and len(stratified_subset(data, 2)) == 2
    assert [int(data[i][1]) for i in stratified_subset(data, 10).indices] == [0] * 6 + [1] * 3 + [2]


def test_a_split_without_a_label_list_is_cut_to_its_first_items_and_reported_so():
    """A dataset whose labels cannot be read without loading its items gets the first N, and
    result.json's ``scoring.val_subset`` says "first", not "stratified"."""
    from torch.utils.data import Dataset, TensorDataset

    from hwcompress.model.data import has_label_list, stratified_subset
    from hwcompress.search.finish import _subset_kind

    class Items(Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, index):
            return torch.zeros(1), index % 2

    items = Items()
    assert not has_label_list(items) and list(stratified_subset(items, 5).indices) == [0, 1, 2, 3, 4]
    assert _subset_kind(stratified_subset(items, 5), items) == "first" and _subset_kind(items, items) == "all"
    labelled = TensorDataset(torch.zeros(20, 1), torch.arange(20) % 2)
    assert has_label_list(labelled) and _subset_kind(stratified_subset(labelled, 5), labelled) == "stratified"


def test_an_image_folder_split_is_held_in_memory_once_with_the_same_items(tmp_path):
    """A search scores every student on the reward-validation split: an image folder's is read once into
    memory (the same tensors, in order), unless its images take more than the limit; tensors stay as they are."""
    from torch.utils.data import Subset

    from hwcompress.model.data import held_in_memory

    for split, count in [("train", 6), ("val", 3), ("test", 2)]:
        _write_class_tree(tmp_path / split, per_class=count)
    splits = load_data(str(tmp_path), input_size=8)
    held, size = held_in_memory(splits.val)
    assert size == 6 * 3 * 8 * 8 * 4 and len(held) == len(splits.val) == 6
    for index in range(len(held)):
        assert torch.equal(held[index][0], splits.val[index][0]) and int(held[index][1]) == splits.val[index][1]
    subset = Subset(splits.train, [5, 0, 7])  # a subset of a folder too (a stratified subset, the val carved from train)
    held, size = held_in_memory(subset)
    assert size > 0 and [int(held[i][1]) for i in range(3)] == [subset[i][1] for i in range(3)]
    assert held_in_memory(splits.val, max_bytes=size - 1) == (splits.val, 0)  # over the limit: read lazily
    digits = digits_splits()
    assert held_in_memory(digits.val) == (digits.val, 0) and held_in_memory(Subset(digits.val, [1, 2]))[1] == 0
    pairs = [(digits.val[i][0], int(digits.val[i][1])) for i in range(3)]  # a custom dataset: items may be drawn anew
    assert held_in_memory(pairs) == (pairs, 0)


def test_the_noisy_digits_benchmark_data_loads_as_a_data_factory(monkeypatch):
    """bench/noisy_digits.py (the harder task bench/search_quality.py --data takes): a factory --data accepts,
    the same images every call, the embedded default's split sizes and labels, and not the plain digits."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    noisy = load_data("noisy_digits:splits", input_size=32)
    again = load_data("noisy_digits:splits", input_size=32)
    plain = digits_splits()
    assert (len(noisy.train), len(noisy.val), len(noisy.test)) == (1169, 269, 359) and noisy.input_shape == (1, 3, 32, 32)
    assert torch.equal(_images(noisy.train), _images(again.train))
    assert torch.equal(noisy.test.tensors[1], plain.test.tensors[1])  # the same digits, in the same splits
    assert not torch.allclose(_images(noisy.test), _images(plain.test), atol=0.5)
