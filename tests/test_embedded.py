"""Tests of the embedded default: the CIFAR ResNet family and the cached default teacher."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hwcompress.model import embedded
from hwcompress.model.embedded import BasicBlock, TeacherRecipe, default_teacher, resnet20, resnet56, resnet_cifar


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet56_has_27_blocks_and_option_b_parameter_count():
    model = resnet56()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [9, 9, 9]
    # 853,018 with parameter-free shortcuts + two 1x1 conv/BN projections (2,752 parameters).
    assert _count_params(model) == 855_770
    # Only the first block of stages 2 and 3 changes shape, so only they carry a projection.
    projected = [name for name, m in model.named_modules() if isinstance(m, BasicBlock) and len(m.shortcut)]
    assert projected == ["layer2.0", "layer3.0"]


def test_module_names_are_clean():
    names = dict(resnet20().named_modules())
    for name in ["stem", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.shortcut.0", "layer3.2.conv2", "fc"]:
        assert name in names
    assert isinstance(names["pool"], nn.AdaptiveAvgPool2d)
    assert _count_params(resnet20()) == 272_474


@pytest.mark.parametrize("depth", [7, 9, 2])
def test_bad_depth_is_rejected(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(depth)


def test_forward_shape_and_num_classes():
    model = resnet_cifar(depth=8, num_classes=7, widths=(8, 16, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        # Global average pooling makes the network input-size agnostic.
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 7)


def test_non_strided_block_can_be_replaced_by_identity():
    model = resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.layer2[1] = nn.Identity()
        after = model(x)
    assert after.shape == before.shape
    assert not torch.allclose(after, before)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8


def test_exports_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = resnet_cifar(depth=8).eval()
    path = tmp_path / "resnet8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {node.op_type for node in graph.graph.node}
    assert {"Conv", "Add", "Gemm"} <= ops


def test_default_teacher_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPRESS_CACHE_DIR", str(tmp_path))
    tiny = TeacherRecipe(depth=8, epochs=1, batch_size=128)

    model, meta = default_teacher(recipe=tiny, progress=False)
    assert meta["from_cache"] is False
    assert not model.training
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    assert meta["epochs"] == 1 and meta["seed"] == 0
    cached = list((tmp_path / "teacher").iterdir())
    assert [p.name for p in cached] == [f"resnet8-digits-seed0-{tiny.digest(0)}.pt"]  # no temporary left

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(embedded, "_train_teacher", must_not_train)
    again, meta_again = default_teacher(recipe=tiny, progress=False)
    assert meta_again["from_cache"] is True
    assert meta_again["test_accuracy"] == meta["test_accuracy"]
    assert not again.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name

    # A different recipe is a different cache file, so it would have to train.
    with pytest.raises(AssertionError, match="trained again"):
        default_teacher(recipe=tiny, progress=False, epochs=2)


def test_unreadable_cache_is_retrained(tmp_path, monkeypatch):
    tiny = TeacherRecipe(depth=8, epochs=1, batch_size=128)
    path = tmp_path / "teacher" / f"resnet8-digits-seed0-{tiny.digest(0)}.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    calls = []
    real_train = embedded._train_teacher

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(embedded, "_train_teacher", counting_train)
    _, meta = default_teacher(cache_dir=tmp_path, recipe=tiny, progress=False)
    assert calls == [1] and meta["from_cache"] is False
    _, meta = default_teacher(cache_dir=tmp_path, recipe=tiny, progress=False)
    assert calls == [1] and meta["from_cache"] is True


def test_recipe_digest_depends_on_recipe_and_seed():
    recipe = TeacherRecipe()
    assert recipe.digest(0) == TeacherRecipe().digest(0)
    assert recipe.digest(0) != recipe.digest(1)
    assert recipe.digest(0) != TeacherRecipe(epochs=recipe.epochs + 1).digest(0)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPRESS_CACHE_DIR", str(tmp_path / "env"))
    assert embedded.teacher_cache_dir() == tmp_path / "env" / "teacher"
    assert embedded.teacher_cache_dir(tmp_path / "arg") == tmp_path / "arg" / "teacher"
    monkeypatch.delenv("HWCOMPRESS_CACHE_DIR")
    assert embedded.teacher_cache_dir().name == "teacher"
    assert "hwcompress" in str(embedded.teacher_cache_dir())
