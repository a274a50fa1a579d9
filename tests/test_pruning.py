"""Tests of hwcompress.slim.pruning: channel groups, channel pruning, rounding, unit removal, reconstruction.

Inputs are tiny (32x32 for CIFAR-style nets, 64x64 for torchvision ones) so the file runs in well
under a minute on two CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hwcompress.slim import pruning as P
from hwcompress.slim import reconstruct as R
from hwcompress.slim import units as U

torchvision = pytest.importorskip("torchvision")


# --------------------------------------------------------------------------------------------------
# Small local networks
# --------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """CIFAR basic block; ``shortcut`` is empty (identity) unless the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, three stages of two blocks (widths 8/16/32), average pool, linear classifier."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), blocks: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            first_stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[Block(cin, w, first_stride), *[Block(w, w, 1) for _ in range(blocks - 1)]]))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_vgg(pool: int = 1) -> nn.Sequential:
    """VGG-style plain net: conv-bn-relu runs, max pools, a linear head after ``pool x pool`` pooling."""
    layers: list[nn.Module] = []
    cin = 3
    for w in (8, 8, "M", 16, 16, "M", 32, 32):
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(
        nn.Sequential(*layers), nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(cin * pool * pool, 10)
    )


class ConcatNet(nn.Module):
    """Two branches concatenated, then a 1x1 conv: indices of the second branch are offset."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 1)
        self.b = nn.Conv2d(8, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.mix = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(x)), 2)
        return self.fc(torch.flatten(x, 1))


class ScaledNet(nn.Module):
    """A bare ``nn.Parameter`` scales channels in ``forward`` (torch-pruning's unwrapped parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x)) * self.scale))
        return torch.softmax(self.fc(x.mean((2, 3))), 1)


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-trivial weights and BN statistics, deterministic, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.2)
    return model.eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, torch's thread pool spin-waits and slows tiny ops 10x+."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _seeded(torchvision.models.resnet18(num_classes=10))


@pytest.fixture(scope="module")
def mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return _seeded(torchvision.models.mobilenet_v2(num_classes=10))


# --------------------------------------------------------------------------------------------------
# round_channels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "ratio", "multiple", "expected"),
    [
        (64, 0.5, 8, 32),
        (64, 0.3, 8, 24),  # round(19.2) = 19, rounded up to 24
        (10, 0.9, 8, 8),  # 9 -> 16 > 10 -> floored to 8
        (10, 0.05, 8, 8),  # never below the multiple when c >= multiple
        (64, 0.0, 8, 8),
        (16, 1.0, 8, 16),
        (17, 1.0, 8, 16),  # 17 -> 24 > 17 -> 16
        (16, 1.5, 8, 16),  # ratios above 1 keep everything
        (5, 0.5, 8, 2),  # c < multiple: plain rounding (half to even: 2.5 -> 2)
        (5, 0.0, 8, 1),
        (3, 1.0, 8, 3),
        (10, 0.35, 1, 4),  # multiple 1: no rounding beyond round(3.5) = 4
        (1, 0.1, 8, 1),
    ],
)
def test_round_channels_cases(channels: int, ratio: float, multiple: int, expected: int) -> None:
    assert P.round_channels(channels, ratio, multiple) == expected


def test_round_channels_invariants() -> None:
    for c in range(1, 70):
        for m in (1, 4, 8, 16):
            previous = 0
            for ratio in [i / 20 for i in range(21)]:
                d = P.round_channels(c, ratio, m)
                assert 1 <= d <= c
                if c >= m:
                    assert d % m == 0 and d >= m
                assert d >= previous  # monotone in the ratio
                previous = d
            assert P.round_channels(c, 1.0, m) == (c if c < m else c // m * m)


@pytest.mark.parametrize(
    ("channels", "ratio", "quantum", "expected"),
    [
        (64, 0.3, 16, 32),  # 19 -> 24 (multiple 8) -> a whole block of 16 above one block: 32
        (64, 0.1, 16, 8),  # below one block the multiple's steps stay
        (64, 0.25, 16, 16),
        (24, 1.0, 16, 16),  # 24 is between blocks: floored to one block
        (40, 0.9, 16, 32),  # 36 -> 40 -> 48 > 40 -> floored to 32
        (64, 0.3, 12, 24),  # a quantum that is not a multiple of the multiple is not used
        (64, 0.3, 8, 24),  # nor one that is the multiple
    ],
)
def test_round_channels_in_whole_blocks_from_one_block_up(channels: int, ratio: float, quantum: int,
                                                          expected: int) -> None:
    assert P.round_channels(channels, ratio, 8, quantum) == expected


def test_round_channels_with_a_quantum_stays_monotone_and_in_blocks() -> None:
    for c in range(1, 130):
        previous = 0
        for ratio in [i / 40 for i in range(41)]:
            d = P.round_channels(c, ratio, 8, 16)
            assert 1 <= d <= c and d >= previous
            if d >= 16:
                assert d % 16 == 0
            previous = d


@pytest.mark.parametrize(("args"), [(0, 0.5, 8), (8, 0.5, 0), (8, -0.1, 8), (8, math.nan, 8), (2.5, 0.5, 1), (8, 0.5, 8, 0)])
def test_round_channels_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        P.round_channels(*args)


# --------------------------------------------------------------------------------------------------
# Channel groups
# --------------------------------------------------------------------------------------------------


def test_cifar_resnet_groups_couple_residual_stages() -> None:
    model = _seeded(TinyResNet()).train()
    groups = P.find_channel_groups(model, X32)
    assert model.training and all(m.training for m in model.modules())  # flags restored
    by_name = {g.name: g for g in groups}
    # stem+stage 1, one group per block conv1 (6), stage 2, stage 3
    assert len(groups) == 1 + 6 + 2
    assert [g.index for g in groups] == list(range(len(groups)))
    assert set(by_name["conv1"].producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert set(by_name["conv1"].consumers) == {
        "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"
    }
    for stage, width in ((2, 16), (3, 32)):
        group = by_name[f"layer{stage}.0.conv2"]  # the stage's first producer in execution order
        assert group.channels == width
        assert set(group.producers) == {
            f"layer{stage}.0.conv2", f"layer{stage}.0.shortcut.0", f"layer{stage}.1.conv2"
        }
    assert set(by_name["layer3.0.conv2"].consumers) == {"layer3.1.conv1", "fc"}
    for block in ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"):
        g = by_name[f"{block}.conv1"]
        assert g.producers == [f"{block}.conv1"] and g.consumers == [f"{block}.conv2"]
    # the classifier's outputs are never pruned, the input never touched
    assert all("fc" not in g.producers for g in groups)
    assert [g.name for g in P.find_channel_groups(model, X32)] == [g.name for g in groups]  # stable


def test_embedded_resnet56_group_count() -> None:
    embedded = pytest.importorskip("hwcompress.model.embedded")
    model = embedded.resnet_cifar(56)
    groups = P.find_channel_groups(model, X32)
    assert len(groups) == 27 + 3  # one per block conv1 plus one per residual stage
    assert max(len(g.producers) for g in groups) == 10  # stem + nine block conv2s of stage 1


def test_group_importance_matches_torch_pruning() -> None:
    model = _seeded(TinyResNet())
    plan = P._plan_for(model, X32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X32, verbose=False)
    scorer = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    modules = dict(model.named_modules())
    for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear]):
        root = graph._module2name[group[0].dep.target.module]
        ours = next(gp for gp in plan.groups if gp.tp_root == root)
        expected = scorer(group).double()
        assert torch.allclose(P._group_importance(modules, ours, "l1"), expected, rtol=1e-5)


def test_output_reaching_channels_are_never_a_group() -> None:
    head = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))  # conv output
    names = {g.name for g in P.find_channel_groups(head, X32)}
    assert names == {"0"}

    class Softmaxed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(torch.relu(self.body(x))), 1)

    assert {g.name for g in P.find_channel_groups(Softmaxed(), X32)} == {"body"}


def test_mobilenet_v2_depthwise_follow_producer(mobilenet_v2: nn.Module, tmp_path) -> None:
    groups = P.find_channel_groups(mobilenet_v2, X64)
    assert len(groups) == 25
    depthwise = [n for n, m in mobilenet_v2.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    carried = [d for g in groups for d in g.depthwise]
    assert sorted(carried) == sorted(depthwise)  # each depthwise conv in exactly one group
    for g in groups:
        assert not set(g.producers) & set(depthwise) and g.name not in depthwise
        for dw in g.depthwise:
            # features.K.conv.1.0 (depthwise) follows features.K.conv.0.0 (1x1 expand), or the stem
            block = dw.rsplit(".conv.", 1)[0]
            assert g.name in (f"{block}.conv.0.0", "features.0.0")
    group = next(g for g in groups if g.name == "features.4.conv.0.0")
    keep = P.round_channels(group.channels, 0.5, 8)
    pruned = P.prune_channels(mobilenet_v2, X64, {group.name: keep})
    dw = pruned.get_submodule(group.depthwise[0])
    assert keep % 8 == 0 and dw.in_channels == dw.out_channels == dw.groups == keep
    assert pruned.get_submodule(group.name).out_channels == keep
    assert pruned.get_submodule(group.consumers[0]).in_channels == keep
    assert pruned(X64).shape == (1, 10)
    assert _params(pruned) < _params(mobilenet_v2)
    torch.onnx.export(pruned, X64, str(tmp_path / "m.onnx"), dynamo=False, opset_version=17)
    assert (tmp_path / "m.onnx").stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# prune_channels
# --------------------------------------------------------------------------------------------------


def test_resnet18_half_everywhere_exports_and_matches_onnxruntime(resnet18: nn.Module, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    groups = P.find_channel_groups(resnet18, X64)
    assert len(groups) == 12
    keep = {g.name: P.round_channels(g.channels, 0.5, 8) for g in groups}
    pruned = P.prune_channels(resnet18, X64, keep)
    assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())  # original untouched
    assert type(pruned) is type(resnet18)
    assert _params(pruned) < 0.3 * _params(resnet18)
    assert pruned.conv1.out_channels == 32 and pruned.layer4[1].conv2.out_channels == 256
    assert pruned.fc.out_features == 10 and pruned.conv1.in_channels == 3
    for g in P.find_channel_groups(pruned, X64):
        assert g.channels == keep[g.name]
    with torch.no_grad():
        expected = pruned(X64)
    path = tmp_path / "r18.onnx"
    torch.onnx.export(pruned, X64, str(path), dynamo=False, opset_version=17, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": X64.numpy()})
    # relative to the outputs' scale: the two runtimes' kernels sum in an order that depends on the CPU
    assert float((torch.from_numpy(got) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


@pytest.mark.parametrize("net", ["tiny_resnet", "concat", "vgg_flatten", "scaled", "mobilenet_v2"])
def test_fast_path_equals_torch_pruning_group_prune(net: str, mobilenet_v2: nn.Module) -> None:
    model, x = {
        "tiny_resnet": (lambda: (_seeded(TinyResNet()), X32)),
        "concat": (lambda: (_seeded(ConcatNet()), X32)),
        "vgg_flatten": (lambda: (_seeded(tiny_vgg(pool=2)), X32)),
        "scaled": (lambda: (_seeded(ScaledNet()), X32)),
        "mobilenet_v2": (lambda: (mobilenet_v2, X64)),
    }[net]()
    groups = P.find_channel_groups(model, x)
    keep = {g.name: max(1, (g.channels * (i % 3 + 1)) // 4) for i, g in enumerate(groups)}
    fast = P.prune_channels(model, x, keep)
    reference = P._reference_prune(model, x, keep)
    assert P._plan_for(model, x).exact  # the direct path was taken, not the fallback
    assert _same_state(fast, reference)
    assert fast(x).shape == model(x).shape
    if net == "scaled":
        assert fast.scale.shape == (1, keep["c1"], 1, 1)


def test_concat_groups_are_offset_correctly() -> None:
    model = _seeded(ConcatNet())
    groups = {g.name: g for g in P.find_channel_groups(model, X32)}
    assert set(groups) == {"stem", "a", "b", "mix"}
    assert groups["b"].consumers == ["mix"] and groups["b"].channels == 10
    pruned = P.prune_channels(model, X32, {"a": 3, "b": 4})
    assert pruned.mix.in_channels == 7 and pruned.bn.num_features == 7
    kept = P.kept_channels(pruned)
    a_keep, b_keep = kept["a"]["out"], kept["b"]["out"]
    assert kept["mix"]["in"] == a_keep + [6 + i for i in b_keep]  # b's channels sit after a's 6
    assert torch.equal(pruned.mix.weight, model.mix.weight[:, kept["mix"]["in"]])


def test_prune_channels_is_deterministic_and_keeps_strongest() -> None:
    model = _seeded(TinyResNet())
    keep = {"layer1.0.conv1": 3, "layer2.0.conv2": 5}
    first, second = P.prune_channels(model, X32, keep), P.prune_channels(model, X32, keep)
    assert _same_state(first, second)
    assert P.kept_channels(first) == P.kept_channels(second)
    # group L1 of conv1's output + bn1's scale + conv2's input slices, as torch-pruning scores it
    w1, w2, gamma = model.layer1[0].conv1.weight, model.layer1[0].conv2.weight, model.layer1[0].bn1.weight
    score = (w1.abs().flatten(1).sum(1) + gamma.abs() + w2.abs().transpose(0, 1).flatten(1).sum(1)) / 3
    expected = sorted(torch.argsort(score, descending=True)[:3].tolist())
    kept = P.kept_channels(first)["layer1.0.conv1"]["out"]
    assert kept == expected
    assert torch.equal(first.layer1[0].conv1.weight, w1[expected])
    assert torch.equal(first.layer1[0].conv2.weight, w2[:, expected])
    # the stage-2 group cut every coupled layer to 5
    for name in ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"):
        assert first.get_submodule(name).out_channels == 5
    assert first.layer3[0].conv1.in_channels == 5 and first.layer3[0].shortcut[0].in_channels == 5


def test_importance_uses_live_weights_after_in_place_change() -> None:
    model = _seeded(TinyResNet())
    group = "layer1.1.conv1"
    kept = P.kept_channels(P.prune_channels(model, X32, {group: 1}))[group]["out"]
    weakest = P.kept_channels(P.prune_channels(model, X32, {group: 7}))[group]["out"]
    dropped = (set(range(8)) - set(weakest)).pop()
    with torch.no_grad():
        model.layer1[1].conv1.weight.data[dropped] *= 1000.0  # .data: no version bump, same storage
    assert P.kept_channels(P.prune_channels(model, X32, {group: 1}))[group]["out"] == [dropped] != kept


def test_prune_channels_amc_and_l2_criteria_run() -> None:
    model = _seeded(TinyResNet())
    for criterion in ("l2", "amc"):
        pruned = P.prune_channels(model, X32, {"conv1": 4}, importance=criterion)
        assert pruned.conv1.out_channels == 4 and pruned(X32).shape == (1, 10)


def test_prune_channels_validation() -> None:
    model = _seeded(TinyResNet())
    with pytest.raises(ValueError, match="unknown channel group"):
        P.prune_channels(model, X32, {"fc": 5})
    with pytest.raises(ValueError, match="unknown channel group"):
        P.prune_channels(model, X32, {"layer1.0.conv2": 4})  # a producer, but not the group's name
    with pytest.raises(ValueError, match="out of range"):
        P.prune_channels(model, X32, {"conv1": 0})
    with pytest.raises(ValueError, match="out of range"):
        P.prune_channels(model, X32, {"conv1": 9})
    with pytest.raises(ValueError, match="integer"):
        P.prune_channels(model, X32, {"conv1": 2.5})
    with pytest.raises(ValueError, match="integer"):
        P.prune_channels(model, X32, {"conv1": True})
    with pytest.raises(ValueError, match="importance"):
        P.prune_channels(model, X32, {"conv1": 4}, importance="taylor")
    same = P.prune_channels(model, X32, {"conv1": 8})  # keeping everything is a plain copy
    assert _same_state(same, model) and same is not model


def test_repeated_pruning_composes_kept_indices() -> None:
    model = _seeded(TinyResNet())
    once = P.prune_channels(model, X32, {"layer2.0.conv1": 12})
    twice = P.prune_channels(once, X32, {"layer2.0.conv1": 6})
    kept = P.kept_channels(twice)["layer2.0.conv1"]["out"]
    assert len(kept) == 6 and set(kept) <= set(P.kept_channels(once)["layer2.0.conv1"]["out"])
    assert torch.equal(twice.layer2[0].conv1.weight, model.layer2[0].conv1.weight[kept])


# --------------------------------------------------------------------------------------------------
# Removable units
# --------------------------------------------------------------------------------------------------


def test_removable_units_cifar_resnet() -> None:
    model = _seeded(TinyResNet())
    units = U.find_removable_units(model, X32)
    assert [u.name for u in units] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert all(u.kind == "residual" for u in units)
    assert units[0].params == _params(model.layer1[0]) and units[0].macs == 2 * 8 * 8 * 9 * 32 * 32
    slim = U.remove_units(model, [u.name for u in units[1:]])
    assert isinstance(slim.layer1[1], nn.Identity) and not isinstance(model.layer1[1], nn.Identity)
    assert slim(X32).shape == (1, 10)
    assert _params(slim) == _params(model) - sum(u.params for u in units[1:])


def test_removable_units_leave_the_model_alone() -> None:
    model = _seeded(TinyResNet()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    U.find_removable_units(model, torch.randn(2, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_removable_units_resnet18(resnet18: nn.Module) -> None:
    units = U.find_removable_units(resnet18, X64)
    assert [u.name for u in units] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    slim = U.remove_units(resnet18, units[2:])
    assert slim(X64).shape == (1, 10) and _params(slim) < _params(resnet18)


def test_removable_units_plain_vgg() -> None:
    model = _seeded(tiny_vgg())
    units = U.find_removable_units(model, X32)
    # the cin == cout, stride-1 convs; not the first conv, not the widening ones, not the classifier
    assert [u.name for u in units] == ["0.3", "0.10", "0.17"]
    assert units[0].kind == "layer" and units[0].members == ("0.3", "0.4", "0.5")
    slim = U.remove_units(model, ["0.10"])  # a name takes its bn and relu along
    assert all(isinstance(slim.get_submodule(n), nn.Identity) for n in ("0.10", "0.11", "0.12"))
    assert slim(X32).shape == (1, 10)
    assert _params(slim) == _params(model) - units[1].params
    with pytest.raises(ValueError):
        U.remove_units(model, ["0.99"])
    with pytest.raises(ValueError):
        U.remove_units(model, [""])


def test_removable_units_mobilenet_v2(mobilenet_v2: nn.Module) -> None:
    units = U.find_removable_units(mobilenet_v2, X64)
    residual = [u.name for u in units if u.kind == "residual"]
    assert residual == [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    slim = U.remove_units(mobilenet_v2, [u for u in units if u.kind == "residual"])
    assert slim(X64).shape == (1, 10) and _params(slim) < _params(mobilenet_v2)
    # inside a non-residual block, the stride-1 depthwise conv run is a unit (N2N removes layers)
    layer = next(u for u in units if u.name == "features.1.conv.0.0")
    assert layer.kind == "layer" and layer.members == ("features.1.conv.0.0", "features.1.conv.0.1", "features.1.conv.0.2")


def test_stage_containers_are_not_units() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Sequential(Block(8, 8, 1), Block(8, 8, 1)),  # a stage: same shape in and out
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    assert [u.name for u in U.find_removable_units(_seeded(model), X32)] == ["1.0", "1.1"]


def test_untraceable_model_raises_a_clear_error() -> None:
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)  # channel shuffle: view + transpose
    try:
        P.find_channel_groups(model, X64)
    except P.UnsupportedModelError as exc:
        assert "cannot trace" in str(exc) and "ShuffleNet" in str(exc)
    else:
        pytest.skip("this torch-pruning version traces channel shuffle (1.6.1 divides by zero)")


# --------------------------------------------------------------------------------------------------
# Least-squares reconstruction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "group", "keep", "consumer"),
    [("vgg", "0.3", 3, "0.7"), ("vgg_flatten", "0.17", 16, "3"), ("concat", "b", 4, "mix")],
    ids=["conv3x3", "linear", "conv1x1-after-concat"],
)
def test_reconstruction_lowers_the_pruned_layer_error(net: str, group: str, keep: int, consumer: str) -> None:
    model = _seeded({"vgg": tiny_vgg, "vgg_flatten": lambda: tiny_vgg(pool=2), "concat": ConcatNet}[net]())
    pruned = P.prune_channels(model, X32, {group: keep})
    kept = P.kept_channels(pruned)
    assert len(kept[consumer]["in"]) < model.get_submodule(consumer).weight.shape[1]
    calibration = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    features: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(consumer).register_forward_hook(
        lambda m, a, o: features.update(x=a[0].detach(), y=o.detach())
    )
    with torch.no_grad():
        model(calibration)
    hook.remove()
    x_kept = features["x"][:, kept[consumer]["in"]]

    def error() -> float:
        with torch.no_grad():
            return (pruned.get_submodule(consumer)(x_kept) - features["y"]).pow(2).mean().item()

    naive = error()
    refitted = R.reconstruct_least_squares(pruned, model, calibration.split(16), points_per_image=20)
    assert consumer in refitted
    assert error() < 0.7 * naive
    assert pruned(X32).shape[0] == 1


def test_reconstruction_needs_a_pruning_record() -> None:
    model = _seeded(tiny_vgg())
    with pytest.raises(ValueError, match="prune_channels"):
        R.reconstruct_least_squares(model, model, X32)
    pruned = P.prune_channels(model, X32, {"0.3": 4})
    with pytest.raises(ValueError, match="cannot reconstruct"):
        R.reconstruct_least_squares(pruned, model, X32, layer_names=["0.0"])  # input never pruned


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 5, (3, 2), stride=2, padding=(1, 2), dilation=2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.Conv2d(4, 5, 1),
    ],
    ids=["strided-dilated-uneven", "3x3", "1x1"],
)
def test_sampled_patches_match_unfold(conv: nn.Conv2d) -> None:
    x = torch.randn(3, 4, 11, 9, generator=torch.Generator().manual_seed(5))
    out = conv(x)
    rows, pick = R._sample_patches(x, out.shape[-2:], conv, conv.padding, 7, torch.Generator().manual_seed(0))
    cols = torch.nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    expected = torch.gather(cols, 2, pick.unsqueeze(1).expand(-1, cols.shape[1], -1)).transpose(1, 2)
    assert torch.equal(rows, expected.reshape(rows.shape))
    # and the rows times the weight give the conv's output at those positions
    with torch.no_grad():
        flat = (rows @ conv.weight.flatten(1).t() + conv.bias).view(3, -1, 5)
        direct = torch.gather(out.flatten(2), 2, pick.unsqueeze(1).expand(-1, 5, -1)).transpose(1, 2)
    assert torch.allclose(flat, direct, atol=1e-5)


def test_reconstruction_with_same_padding() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 6, 4, padding="same"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )
    model = _seeded(model)
    pruned = P.prune_channels(model, X32, {"0": 4})
    calibration = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = (pruned[2](pruned[1](pruned[0](calibration))) - model[2](model[1](model[0](calibration))))
    assert R.reconstruct_least_squares(pruned, model, calibration, points_per_image=50) == ["2"]
    with torch.no_grad():
        after = (pruned[2](pruned[1](pruned[0](calibration))) - model[2](model[1](model[0](calibration))))
    assert after.pow(2).mean() < before.pow(2).mean()
