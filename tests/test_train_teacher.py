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
    (["-m", "mobilenet_v3_small", "--data", "digits"], "--train-teacher 30"),  # the refusal names the remedy
    (["--train-teacher", "2"], "named by --model"),  # the embedded default comes trained
    (["-m", "hwcompress.model.embedded:resnet20", "--data", "digits", "--train-teacher", "2"], "comes trained"),
    (["-m", "mobilenet_v3_small", "--data", "digits", "--train-teacher", "-1"], "--train-teacher"),
])
def test_train_teacher_refusals_are_one_line(tmp_path, argv, message):
    done = subprocess.run([sys.executable, "-m", "hwcompress", "search", "--macs", "2e6", "-o", str(tmp_path / "o"), *argv],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
