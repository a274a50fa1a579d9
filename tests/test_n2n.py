"""N2N on the search pipeline: both stages on a tiny teacher, the cache, invalid students, resume, --policy,
and stage-1 surgery on the architectures the issue names (ResNet blocks, torchvision resnet18, VGG-style)."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hwcompress.budget import Budget
from hwcompress.model.analysis import analyze
from hwcompress.model.embedded import resnet_cifar
from hwcompress.search.agent import make_agent
from hwcompress.search.config import SearchConfig
from hwcompress.search.cost import CostModel
from hwcompress.search.n2n import search as n2n
from hwcompress.search.n2n.agent import N2NAgent, N2NSettings
from hwcompress.search.n2n.policy import INVALID_REWARD, KEEP, RATIOS, RemovalPolicy, normalise
from hwcompress.search.run import apply_policy, resume_search, run_search
from hwcompress.slim.pruning import find_channel_groups, prune_channels, round_channels
from hwcompress.slim.units import find_removable_units, remove_units

SHAPE = (1, 3, 32, 32)
TINY = "hwcompress.model.embedded:resnet20"
# Stage 1 with a strong bias towards "remove" samples the same (all removed) student again and again,
# which exercises the cache; stage 2 then has to shrink it under the budget.
OPTIONS = {"removal_epochs": 2, "shrink_epochs": 2, "rollouts": 3, "student_steps": 2, "student_batch": 16,
           "base_steps": 1, "keep_bias": -4.0}



def _config(out, **overrides):
    base = dict(budget=Budget.macs(12e6), agent="n2n", model=TINY, data="digits", episodes=12, seed=0,
                finetune_epochs=0.02, out=str(out), runs=3, val_limit=64, bn_calibration=32, agent_options=dict(OPTIONS),
                plots=False)
    base.update(overrides)
    return SearchConfig(**base)


def _counting(original, calls):
    """Wraps the per-student training so the tests can count it."""

    def train(search, student, teacher, steps):
        calls.append(steps)
        return original(search, student, teacher, steps)

    return train


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("n2n") / "out"
    calls = []
    patch = pytest.MonkeyPatch()
    patch.setattr(n2n.N2NSearch, "_train", _counting(n2n.N2NSearch._train, calls))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)  # the tiny teacher is a randomly initialised factory model: the same one every run
        doc = run_search(_config(out), progress=False).report
    finally:
        patch.undo()
        torch.set_num_threads(before)
    return doc, out, calls


def test_result_contract_and_budget(searched):
    doc, out, _ = searched
    saved = json.loads((out / "result.json").read_text())
    assert saved["schema"] == "hwcompress.search/1" and saved["agent"] == "n2n"
    assert saved["budget_met"] is True and saved["student"]["macs"] <= 12e6 < saved["teacher"]["macs"]
    assert saved["episodes"] == (2 + 2) * 3 == len(json.loads((out / "history.json").read_text()))
    assert saved["student"]["params"] < saved["teacher"]["params"]
    best = saved["n2n"]["best"]
    assert best["within_budget"] and best["cost"] <= 12e6
    assert saved["n2n"]["stage1"]["rollouts"] == saved["n2n"]["stage2"]["rollouts"] == 6
    for name in ("student.onnx", "student.pt", "policy.json", "summary.md", "checkpoint.pt"):
        assert (out / name).exists(), name
    policy = json.loads((out / "policy.json").read_text())
    assert policy["removed_units"] == best["removed_units"] and policy["keep"] == best["keep"]
    teacher_groups = {g.name for g in find_channel_groups(resnet_cifar(20), torch.zeros(SHAPE))}
    assert set(policy["keep"]) <= teacher_groups  # stage 2 groups keep the teacher's names


def test_removed_units_are_never_first_strided_or_projection(searched):
    doc, out, _ = searched
    units = {u.name for u in find_removable_units(resnet_cifar(20).eval(), torch.zeros(SHAPE))}
    assert units == {"layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"}
    removed = {name for h in json.loads((out / "history.json").read_text()) for name in h["removed_units"]}
    assert removed and removed <= units
    assert not removed & {"stem", "stem.0", "layer2.0", "layer3.0", "fc"}


def test_students_sampled_twice_are_trained_once(searched):
    doc, out, calls = searched
    history = json.loads((out / "history.json").read_text())
    architectures = {(tuple(h["removed_units"]), tuple(sorted(h.get("keep", {}).items()))) for h in history}
    assert len(architectures) < len(history)  # the biased policy repeats itself...
    assert any(h["cached"] for h in history)
    trained = [h for h in history if not h["cached"] and h["accuracy"] is not None]
    # ...and only new architectures are trained, plus the stage-2 base once (with its extra steps)
    assert len(calls) == len(trained) + 1 == doc["n2n"]["counters"]["trained"]
    assert calls.count(OPTIONS["student_steps"] + OPTIONS["base_steps"]) == 1
    for h in history:  # a cached rollout reports the first training's accuracy
        first = next(g for g in history if g["removed_units"] == h["removed_units"] and g.get("keep") == h.get("keep"))
        assert h["accuracy"] == first["accuracy"]


def test_resume_gives_the_same_history(searched, tmp_path, monkeypatch):
    doc, out, _ = searched
    original = n2n.N2NSearch.shrink_rollout
    calls = []

    def interrupt(search, epoch):
        calls.append(epoch)
        if len(calls) == 4:  # the first rollout of stage 2's second epoch
            raise KeyboardInterrupt
        return original(search, epoch)

    monkeypatch.setattr(n2n.N2NSearch, "shrink_rollout", interrupt)
    torch.manual_seed(0)
    partial = run_search(_config(tmp_path / "out"), progress=False).report
    assert partial["interrupted"] is True
    monkeypatch.setattr(n2n.N2NSearch, "shrink_rollout", original)
    (tmp_path / "out" / "result.json").unlink()
    torch.manual_seed(0)
    resumed = resume_search(tmp_path / "out", progress=False).report
    straight = json.loads((out / "history.json").read_text())
    again = json.loads((tmp_path / "out" / "history.json").read_text())
    assert straight == again
    assert resumed["student"]["params"] == doc["student"]["params"]
    assert json.loads((tmp_path / "out" / "policy.json").read_text()) == json.loads((out / "policy.json").read_text())


def test_policy_file_rebuilds_the_n2n_student(searched, tmp_path):
    doc, out, _ = searched
    torch.manual_seed(0)
    again = apply_policy(_config(tmp_path / "again", finetune_epochs=0), str(out / "policy.json"), progress=False).report
    assert again["student"]["params"] == doc["student"]["params"]
    assert again["student"]["macs"] == doc["student"]["macs"]


def _bare_search(budget=100.0):
    """A _Search with only what _score touches, to test rewards without a pipeline."""
    search = n2n.N2NSearch.__new__(n2n.N2NSearch)
    search.settings = N2NSettings(student_steps=1)
    search.budget, search.metric, search.stage = budget, "macs", 1
    search.cache, search.best, search.stage1_best, search.base = {}, None, None, None
    search.counters = {"trained": 0, "cache_hits": 0, "not_trained_over_budget": 0, "invalid": 0, "train_seconds": 0.0}
    search.teacher_accuracy, search.teacher_params = 0.9, 1000
    history = []
    search.ctx = SimpleNamespace(example=torch.zeros(1, 4), history=history,
                                 report=lambda record, candidate=None: history.append(record))
    trained = []
    search._train = lambda student, teacher, steps: trained.append(student) or 0.9
    return search, trained


def test_invalid_students_get_minus_one():
    search, trained = _bare_search()
    reference = (None, 0.9, 1000)

    def broken():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    def shape_error():
        return nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))

    assert search._score(("a",), 50.0, 500, broken, reference, 0, {})["reward"] == INVALID_REWARD
    assert search._score(("b",), 50.0, 500, shape_error, reference, 0, {})["reward"] == INVALID_REWARD
    # not smaller than its teacher: -1 without building it
    assert search._score(("c",), 50.0, 1000, broken, reference, 0, {})["reward"] == INVALID_REWARD
    assert not trained and search.best is None and search.counters["invalid"] == 3
    ok = search._score(("d",), 50.0, 500, lambda: nn.Linear(4, 2), reference, 0, {})
    assert ok["reward"] == pytest.approx(0.75) and len(trained) == 1  # C = 0.5: C(2 - C) = 0.75, A / A_t = 1
    # over the budget: annealed penalty, then exactly -1 with no training once epsilon is 0
    over = search._score(("e",), 500.0, 500, lambda: nn.Linear(4, 2), reference, 5, {})
    assert -1 < over["reward"] < 0.75 and len(trained) == 2
    late = search._score(("f",), 500.0, 500, lambda: nn.Linear(4, 2), reference, 15, {})
    assert late["reward"] == -1.0 and len(trained) == 2
    again = search._score(("d",), 50.0, 500, lambda: nn.Linear(4, 2), reference, 3, {})
    assert again["cached"] and again["reward"] == ok["reward"] and len(trained) == 2
    assert search.best["within_budget"] and search.best["cost"] == 50.0


def test_stage_costs_match_the_built_students():
    torch.manual_seed(0)
    model = resnet_cifar(depth=20).eval()
    x = torch.zeros(SHAPE)
    layers = analyze(model, SHAPE).layers
    units = find_removable_units(model, x)
    removed = [u.name for u in units[::2]]
    student = remove_units(model, removed)
    rows = n2n.stage1_rows(layers, units, removed)
    built = analyze(student, SHAPE)
    assert sum(r.macs for r in rows) == built.macs and sum(r.params for r in rows) == built.params
    groups = find_channel_groups(student, x)
    cost = CostModel(built.layers, groups, metric="macs", multiple=8, lbound=0.2)
    keep = {g.name: round_channels(g.channels, 0.5, 8) for g in groups}
    pruned = analyze(prune_channels(student, x, keep), SHAPE)
    assert cost.cost(keep) == pruned.macs and sum(r.params for r in cost.layers_for(keep)) == pruned.params


def _vgg_style():
    layers, c = [], 3
    for v in (16, 16, "M", 32, 32, 32, "M", 64, 64):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        c = v
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def _torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize("make", [lambda: resnet_cifar(depth=20), _torchvision_resnet18, _vgg_style],
                         ids=["resnet20", "resnet18", "vgg"])
def test_stage1_sampling_removal_and_pruning_run_on_each_architecture(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(SHAPE)
    layers = analyze(model, SHAPE).layers
    units = find_removable_units(model, x)
    assert units
    features = normalise(n2n.unit_features(units, layers, "macs", None))
    policy = RemovalPolicy(features.shape[1], keep_bias=-0.5, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    teacher_groups = {g.name: g.channels for g in find_channel_groups(model, x)}
    for _ in range(3):
        actions, log_prob = policy.sample(features, generator)
        removed = [u.name for u, a in zip(units, actions.tolist()) if a != KEEP]
        assert not any(first_conv == m or first_conv.startswith(m + ".") for u in units for m in u.members)
        student = remove_units(model, removed)
        assert student(x).shape == model(x).shape
        assert analyze(student, SHAPE).params == sum(r.params for r in n2n.stage1_rows(layers, units, removed))
        groups = find_channel_groups(student, x)
        assert all(teacher_groups[g.name] == g.channels for g in groups)
        keep = {g.name: round_channels(g.channels, RATIOS[i % len(RATIOS)], 8) for i, g in enumerate(groups)}
        assert prune_channels(student, x, keep)(x).shape == (1, 10)
        log_prob.backward()
    assert all(u.kind in ("residual", "layer") for u in units)
    for unit in units:  # nothing offered changes a shape: no stride, no projection
        for member in unit.members:
            for m in model.get_submodule(member).modules():
                assert not isinstance(m, nn.Conv2d) or m.stride == (1, 1)


def test_settings_split_the_episodes_and_reject_nonsense():
    assert N2NSettings().stage_epochs(120) == (12, 12)
    assert N2NSettings(rollouts=3).stage_epochs(10) == (2, 1)
    assert N2NSettings(removal_epochs=4).stage_epochs(120) == (4, 20)
    assert N2NSettings(removal_epochs=1, shrink_epochs=2).stage_epochs(999) == (1, 2)
    from hwcompress.errors import UserError

    with pytest.raises(UserError, match="student_loss"):
        N2NSettings(student_loss="mse")
    agent = make_agent("n2n", {"rollouts": 2})
    assert isinstance(agent, N2NAgent) and agent.settings.rollouts == 2
    with pytest.raises(UserError, match="settings are"):
        make_agent("n2n", {"no_such": 1})


def test_fewer_episodes_than_two_epochs_of_rollouts_are_refused():
    """N2N runs at least one controller epoch of `rollouts` students per stage: fewer --episodes than that would
    score more students than asked, so they are refused naming the minimum; explicit epoch counts set it instead."""
    from hwcompress.errors import UserError
    from hwcompress.search.config import N2N_ROLLOUTS

    assert N2NSettings().rollouts == N2N_ROLLOUTS == 5
    with pytest.raises(UserError, match=r"--agent n2n needs --episodes of at least 10: .* \(got 1\)"):
        SearchConfig(budget=Budget.macs(1e7), agent="n2n", episodes=1)
    with pytest.raises(UserError, match="at least 6"):
        SearchConfig(budget=Budget.macs(1e7), agent="n2n", episodes=5, agent_options={"rollouts": 3})
    assert SearchConfig(budget=Budget.macs(1e7), agent="n2n", episodes=6, agent_options={"rollouts": 3}).episodes == 6
    both = {"removal_epochs": 1, "shrink_epochs": 1, "rollouts": 2}
    assert SearchConfig(budget=Budget.macs(1e7), agent="n2n", episodes=1, agent_options=both).episodes == 1
    assert SearchConfig(budget=Budget.macs(1e7), agent="amc", episodes=1).episodes == 1  # AMC scores what it is given
