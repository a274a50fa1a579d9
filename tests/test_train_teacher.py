"""`search -m TORCHVISION_NAME --train-teacher N`: the teacher is trained here from random weights, kept in
the output folder, reused by a resumed run, and refused where it does not apply."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hwcompress.errors import UserError
from hwcompress.model import scratch
from hwcompress.model.data import digits_splits


def test_the_trained_teacher_is_kept_and_reused(tmp_path):
    splits = digits_splits(size=16)  # a quarter of the work of 32 px
    lines: list[str] = []
    module, report = scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append)
    assert not report["from_cache"] and (tmp_path / "teacher.pt").is_file()
    assert module.fc.out_features == splits.num_classes  # the head is sized to the data
    assert report["val_accuracy"] > 0.3  # it learned (85% here after two epochs at 16 px; chance is 10%)
    again, second = scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append)
    assert second["from_cache"] and second["val_accuracy"] == report["val_accuracy"]
    for (name, mine), theirs in zip(module.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    assert any("reused" in line for line in lines)
    with pytest.raises(UserError, match="other settings"):  # another recipe never silently takes the saved one
        scratch.trained_teacher("resnet18", splits, 3, 0, tmp_path, lines.append)
    # Another search takes it as its teacher: as a checkpoint, or as the weights of its architecture, the
    # classifier sized as it was trained and the input shape its recipe's unless one is given.
    from hwcompress.model.loading import load_model

    for loaded in (load_model(str(tmp_path / "teacher.pt")), load_model("resnet18", weights=str(tmp_path / "teacher.pt"))):
        assert loaded.name == "resnet18" and loaded.source == "checkpoint" and loaded.input_shape == (1, 3, 16, 16)
        assert loaded.metadata["trained"]["val_accuracy"] == report["val_accuracy"] and not loaded.module.training
        for (name, mine), theirs in zip(module.state_dict().items(), loaded.module.state_dict().values(), strict=True):
            assert torch.equal(mine, theirs), name
    assert load_model(str(tmp_path / "teacher.pt"), input_shape=(1, 3, 32, 32)).input_shape == (1, 3, 32, 32)
    with pytest.raises(UserError, match=r"was trained as resnet18 \(10 classes\), not resnet34; pass -m "):
        load_model("resnet34", weights=str(tmp_path / "teacher.pt"))  # another architecture: what it was trained as
    with pytest.raises(UserError, match="is a teacher trained by search --train-teacher; pass it as the model itself"):
        load_model("hwcompress.model.embedded:resnet20", weights=str(tmp_path / "teacher.pt"))  # not a torchvision name


def test_search_trains_a_torchvision_teacher_first(tmp_path):
    out = tmp_path / "out"
    # digits at 16 px: a quarter of the work of 32 px, and still 85% after two epochs (chance is 10%)
    command = [sys.executable, "-m", "hwcompress", "search", "-m", "resnet18", "--train-teacher", "2",
               "--data", "digits", "--input-shape", "1,3,16,16", "--macs", "5e6", "--episodes", "2", "--finetune-epochs", "0", "--val-limit", "64", "--no-plots",
               "-o", str(out), "--quiet", "--json", "-"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    trained = doc["teacher"]["trained_here"]
    assert trained["arch"] == "resnet18" and trained["epochs"] == 2 and not trained["from_cache"]
    assert (out / "teacher.pt").is_file() and doc["teacher"]["accuracy"] > 0.3
    # Another search takes the trained teacher as its model, at the size it was trained at (16 px, not digits'
    # default 32), and says so.
    again = [sys.executable, "-m", "hwcompress", "search", "-m", str(out / "teacher.pt"), "--data", "digits", "--macs", "5e6",
             "--episodes", "1", "--finetune-epochs", "0", "--val-limit", "64", "--no-plots", "-o", str(tmp_path / "again"),
             "--json", "-"]
    done = subprocess.run(again, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    from hwcompress.model.analysis import analyze

    second = json.loads(done.stdout[done.stdout.index("{"):])
    assert second["teacher"]["macs"] == doc["teacher"]["macs"] == analyze(scratch.build("resnet18", 10), (1, 3, 16, 16)).macs
    assert second["teacher"]["accuracy"] == doc["teacher"]["accuracy"]  # the same weights on the same test split
    assert "input 16x16: the size resnet18 was trained at" in done.stdout + done.stderr


@pytest.mark.parametrize("argv, message", [
    # the refusal names the remedy: the command given, with --train-teacher added
    (["-m", "mobilenet_v3_small", "--data", "digits"], "hwcompress search --macs 2e6 -o"),
    (["--train-teacher", "2"], "named by --model"),  # the embedded default comes trained
    (["-m", "hwcompress.model.embedded:resnet20", "--data", "digits", "--train-teacher", "2"], "comes trained"),
    (["-m", "mobilenet_v3_small", "--data", "digits", "--train-teacher", "-1"], "--train-teacher"),
])
def test_train_teacher_refusals_are_one_line(tmp_path, argv, message):
    done = subprocess.run([sys.executable, "-m", "hwcompress", "search", "--macs", "2e6", "-o", str(tmp_path / "o"), *argv],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _small_digits():
    """Digits at 16 px with 100 training images: two batches of the teacher's 64 an epoch, 64 and 36."""
    from dataclasses import replace

    from hwcompress.model.data import stratified_subset

    splits = digits_splits(size=16)
    return replace(splits, train=stratified_subset(splits.train, 100), val=stratified_subset(splits.val, 100))


def test_train_loader_keep_last_uses_every_item_and_never_a_batch_of_one():
    from torch.utils.data import TensorDataset

    from hwcompress.model.training import steps_per_epoch, train_loader

    for size, sizes in ((100, [64, 36]), (129, [64, 65]), (64, [64]), (65, [65]), (30, [30])):
        items = TensorDataset(torch.arange(size), torch.zeros(size, dtype=torch.long))
        batches = train_loader(items, 64, seed=3, keep_last=True)
        assert len(batches) == steps_per_epoch(size, 64) == len(sizes)
        first, second = ([int(i) for batch, _ in batches for i in batch] for _epoch in range(2))
        assert sorted(first) == sorted(second) == list(range(size))  # every item, once an epoch
        assert [len(batch) for batch, _ in batches] == sizes  # a batch of one joins the one before it
        if size > 30:
            assert first != second  # reshuffled every epoch, in an order the seed fixes
            assert first == [int(i) for batch, _ in train_loader(items, 64, seed=3, keep_last=True) for i in batch]
    assert len(train_loader(TensorDataset(torch.arange(100), torch.zeros(100)), 64, 0)) == 1  # the default drops it


def test_a_training_of_four_steps_runs():
    """OneCycleLR divided by zero at exactly 4 steps: `--train-teacher 4` on 65 to 127 training images (one
    step an epoch then) stopped with a ZeroDivisionError, as would `--train-teacher 2` now (two steps)."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from hwcompress.model.training import train_supervised

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(100, 4), torch.randint(0, 2, (100,)))
    assert train_supervised(nn.Linear(4, 2), data, 4, lr=0.05, batch_size=64)["steps"] == 4  # one step an epoch
    assert train_supervised(nn.Linear(4, 2), data, 2, lr=0.05, batch_size=64, keep_last=True)["steps"] == 4


def test_reestimate_batchnorm_is_bounded_and_changes_no_weight():
    from torch import nn
    from torch.utils.data import TensorDataset

    from hwcompress.model.training import reestimate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    images = TensorDataset(torch.randn(200, 3, 8, 8) * 3 + 1, torch.zeros(200, dtype=torch.long))
    model(images[:2][0])  # sizes the lazy layer
    norm, weights = model[2], [p.detach().clone() for p in model.parameters()]
    stats = []
    for training, global_seed in ((True, 1), (False, 2)):
        model.train(training)
        torch.manual_seed(global_seed)  # the dropout stays in eval mode: the global generator plays no part
        assert reestimate_batchnorm(model, images, 100, seed=5, batch_size=64) == 128  # two batches, bounded
        assert int(norm.num_batches_tracked) == 2 and norm.momentum == 0.1 and model.training == training
        stats.append((norm.running_mean.clone(), norm.running_var.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*stats, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    assert reestimate_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), images, 100, seed=5) == 0  # no BatchNorm


def test_the_teacher_trains_on_every_image_and_fits_its_batchnorm_statistics(tmp_path, capfd):
    """A short training on a small data set left BatchNorm running averages of batches seen while the weights
    were still moving: the teacher scored near chance in eval mode (9% here; 60% instead of 100% on a user's 120
    images) and its short last batch was never used (one step of 64 an epoch)."""
    from torch.optim.swa_utils import update_bn

    from hwcompress.model.data import loader
    from hwcompress.model.training import evaluate
    from hwcompress.search.scoring import torch_threads

    splits = _small_digits()
    with torch_threads(1):
        module, report = scratch.trained_teacher("resnet18", splits, 10, 0, tmp_path, lambda line: None)
    assert "Training the teacher resnet18: step 20/20" in capfd.readouterr().err  # 10 epochs of 64 + 36 images
    assert report["steps"] == 20 and report["bn_images"] == 100 and int(module.bn1.num_batches_tracked) == 2
    accuracy = evaluate(module, splits.val)
    assert report["val_accuracy"] == round(accuracy, 4) > 0.6  # 84% (chance is 10%)
    update_bn(loader(splits.train, 100), module)  # the statistics of the weights, from all 100 images at once
    assert abs(evaluate(module, splits.val) - accuracy) <= 0.1  # it scores as its weights do (84% both)


def test_a_teacher_trained_otherwise_is_refused_unless_a_resumed_search_overrides(tmp_path):
    splits, lines = _small_digits(), []
    scratch.trained_teacher("resnet18", splits, 1, 0, tmp_path, lines.append)
    saved = tmp_path / "teacher.pt"
    with pytest.raises(UserError, match=r"trained with other settings \(epochs 1, now 2\); delete it to train again"):
        scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append)  # a new search: never replaced
    # A resumed search whose --resume-override accepted another --seed keeps the teacher it trained ...
    _, kept = scratch.trained_teacher("resnet18", splits, 1, 7, tmp_path, lines.append, resumed=True)
    assert kept["from_cache"] and kept["recipe"]["seed"] == 0 and "--resume-override seed" in lines[-1]
    # ... and one that accepted other --train-teacher epochs trains it again, says so, and keeps the new one.
    _, trained = scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append, resumed=True)
    assert not trained["from_cache"] and trained["epochs"] == 2 and trained["steps"] == 4
    assert any("(epochs 1, now 2); the resumed search trains its teacher again" in line for line in lines)
    assert torch.load(saved, weights_only=True)["recipe"]["epochs"] == 2
    assert scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append)[1]["from_cache"]
    # A teacher.pt from before every image and refitted BatchNorm statistics: trained again on resume, else refused.
    document = torch.load(saved, weights_only=True)
    document["recipe"] = {k: v for k, v in document["recipe"].items() if k not in ("last_batch", "bn_images")}
    torch.save(document, saved)
    with pytest.raises(UserError, match="trained by an earlier hwcompress"):
        scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append)
    torch.save({"state_dict": {}}, saved)  # not one --train-teacher wrote: refused even on resume, never replaced
    with pytest.raises(UserError, match="is not a teacher --train-teacher trained"):
        scratch.trained_teacher("resnet18", splits, 2, 0, tmp_path, lines.append, resumed=True)


def test_resume_override_train_teacher_trains_the_teacher_again(tmp_path):
    """The refusal of `--resume OUT --train-teacher 2` advises `--resume-override train_teacher`; following
    it trains the teacher again instead of refusing the saved teacher.pt."""
    from hwcompress.budget import Budget
    from hwcompress.search.config import SearchConfig
    from hwcompress.search.run import resume_search, run_search

    out = tmp_path / "out"
    config = SearchConfig(budget=Budget.macs(5e6), model="resnet18", data="digits", input_shape=(1, 3, 16, 16),
                          train_teacher=1, episodes=1, finetune_epochs=0, val_limit=64, plots=False, out=str(out))
    first = run_search(config, progress=False).report["teacher"]["trained_here"]
    assert first["epochs"] == 1 and not first["from_cache"]
    with pytest.raises(UserError, match="accept them with --resume-override train_teacher"):
        resume_search(out, changes={"train_teacher": 2, "episodes": 2}, progress=False)
    resumed = resume_search(out, changes={"train_teacher": 2, "episodes": 2}, override=["train_teacher"], progress=False)
    trained = resumed.report["teacher"]["trained_here"]
    assert trained["epochs"] == 2 and not trained["from_cache"] and resumed.report["episodes"] == 2
    # The first run's episode was scored against the old teacher: dropped, and both episodes searched anew.
    assert "the search starts over, dropping the 1 episode scored against the old one" in " ".join(resumed.report["notes"])
    assert not any("resumed after" in note for note in resumed.report["notes"])
    assert [h["episode"] for h in json.loads((out / "history.json").read_text())] == [0, 1]
    assert torch.load(out / "teacher.pt", weights_only=True)["recipe"]["epochs"] == 2
