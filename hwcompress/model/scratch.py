"""Train a torchvision architecture from random weights on the user's data (``search --train-teacher N``).

Nothing is downloaded at run time, so a torchvision name alone is a network with random weights. A
search needs a teacher that knows the data; this trains one (every layer, the classifier sized to the
data's classes) before the search, and keeps it as ``teacher.pt`` in the output folder so that a
resumed search uses the same teacher instead of training again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.files import write_atomic

FORMAT = "hwcompress.teacher/1"
LR = 0.05  # peak of the one-cycle schedule (train_supervised); batch 64, SGD with Nesterov momentum
BATCH = 64


def build(arch: str, num_classes: int) -> Any:
    """``arch`` from torchvision with random weights and a classifier for ``num_classes`` classes."""
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as error:
        raise UserError(f"cannot size {arch}'s classifier to {num_classes} classes ({error}); "
                        "train it yourself and pass it as a checkpoint (--model FILE.pt)") from None


def teacher_recipe(arch: str, splits: Any, epochs: int, seed: int) -> dict[str, Any]:
    """What decides the trained teacher: a saved one is reused only when all of it matches."""
    return {"arch": arch, "num_classes": int(splits.num_classes), "input_shape": list(splits.input_shape),
            "epochs": int(epochs), "seed": int(seed), "lr": LR, "batch_size": BATCH,
            "train_images": len(splits.train)}


def trained_teacher(arch: str, splits: Any, epochs: int, seed: int, out: str | Path | None,
                    log: Any = print) -> tuple[Any, dict[str, Any]]:
    """The teacher ``arch`` trained for ``epochs`` on ``splits.train`` (or the one saved in ``out`` by an
    earlier run with the same recipe). Returns the module (eval mode) and what the report says of it."""
    import torch

    from hwcompress.model.training import train_supervised

    recipe = teacher_recipe(arch, splits, epochs, seed)
    saved = Path(out) / "teacher.pt" if out is not None else None
    if saved is not None and saved.is_file():
        try:
            state = torch.load(saved, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the same remedy
            raise UserError(f"cannot read the trained teacher {saved} ({type(error).__name__}); delete it to train again") from None
        if isinstance(state, dict) and state.get("format") == FORMAT and state.get("recipe") == recipe:
            module = build(arch, recipe["num_classes"])
            module.load_state_dict(state["state_dict"])
            module.eval()
            log(f"teacher: {arch} trained here earlier ({saved}), reused")
            return module, {**state["report"], "from_cache": True, "path": str(saved)}
        raise UserError(f"{saved} holds a teacher trained with other settings; delete it or choose another --out")
    torch.manual_seed(seed)  # the initial weights follow the seed
    module = build(arch, recipe["num_classes"])
    log(f"teacher: training {arch} from random weights on {len(splits.train)} images for {epochs} epochs "
        "(--train-teacher; nothing is downloaded)")
    started = time.perf_counter()
    result = train_supervised(module, splits.train, epochs=epochs, lr=LR, seed=seed, batch_size=BATCH,
                              val_ds=splits.val, progress=True, description=f"Training the teacher {arch}")
    report = {"arch": arch, "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
              "val_accuracy": round(float(result["val_accuracy"]), 4),  # train_supervised scores val_ds
              "recipe": recipe}
    log(f"teacher: trained in {report['seconds']:.0f} s, validation accuracy {report['val_accuracy']:.2%}")
    if saved is not None:
        document = {"format": FORMAT, "recipe": recipe, "report": report, "state_dict": module.state_dict()}
        write_atomic(saved, lambda tmp: torch.save(document, tmp))
        report["path"] = str(saved)
    module.eval()
    return module, {**report, "from_cache": False}
