"""What scoring a student costs when the data is an image folder: read per student, or read once.

A search scores every student on the reward-validation split and re-estimates its BatchNorm statistics on
a sample of training images. From an image folder each item is a file decoded on every access, so until
2026-11-28 both were decoded again for every student; now the validation images are read once into
memory (``held_in_memory``, up to 1 GiB) and the BatchNorm sample once per dataset
(``recalibrate_batchnorm``). This writes scikit-learn's digits as an ImageFolder tree (``train/``,
``val/``, ``test/``; PNG at ``--size`` px, or JPEG with ``--format jpg``), loads it as ``--data`` would,
and scores ``--students`` random students of torchvision's resnet18 (random weights: only the time and
the sameness of the scores matter) both ways, alternating which goes first; it prints seconds per score,
the ratio, and whether every score agreed.

    python bench/folder_scoring.py [--students 12] [--size 64] [--format png] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from episode_cost import random_policy  # noqa: E402

from hwcompress.model.data import digits_splits, held_in_memory, load_data  # noqa: E402
from hwcompress.search import scoring  # noqa: E402
from hwcompress.slim.pruning import find_channel_groups, prune_channels  # noqa: E402


def write_folder(root: Path, size: int, fmt: str) -> None:
    """The digits splits as an ImageFolder tree, each image saved at ``size`` px."""
    splits = digits_splits()
    for name, dataset in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        images, labels = dataset.tensors
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / name / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            grey = image[0]
            pixels = ((grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).convert("RGB").resize((size, size)).save(folder / f"{index}.{fmt}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--bn-calibration", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.size, args.format)
        splits = load_data(str(root), input_size=args.size)
        example = torch.zeros(*splits.input_shape)
        teacher = torchvision.models.resnet18(num_classes=splits.num_classes).eval()
        groups = find_channel_groups(teacher, example)
        pairs = scoring.conv_norm_pairs(teacher, example)
        rng = random.Random(args.seed)
        students = [random_policy(groups, rng) for _ in range(args.students)]
        started = time.perf_counter()
        held, size = held_in_memory(splits.val)
        read_once = time.perf_counter() - started
        times: dict[str, list[float]] = {"read per student": [], "read once": []}
        agree = True
        for index, keep in enumerate(students):
            scores = {}
            for arm in (("read per student", "read once") if index % 2 == 0 else ("read once", "read per student")):
                student = prune_channels(teacher, example, keep).to(memory_format=torch.channels_last)
                if arm == "read per student":
                    scoring._BN_SAMPLES.clear()  # as before: the sample read again for this student
                started = time.perf_counter()
                scores[arm] = scoring.score_student(student, splits.train, splits.val if arm == "read per student" else held,
                                                    args.bn_calibration, pairs)
                times[arm].append(time.perf_counter() - started)
            agree = agree and scores["read per student"] == scores["read once"]
        before, now = (statistics.median(times[arm]) for arm in times)
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; digits as "
              f"{args.format.upper()} at {args.size} px: {len(splits.val)} validation images ({size / 2**20:.1f} MB held, "
              f"read in {read_once:.2f} s), BatchNorm on {args.bn_calibration}, {len(students)} random resnet18 students")
        print("| images | s per score | speed-up | scores agree |")
        print("|---|---|---|---|")
        print(f"| read per student | {before:.3f} |  |  |")
        print(f"| read once | {now:.3f} | {before / now:.2f}x | {'all' if agree else 'NO'} |")


if __name__ == "__main__":
    main()
