"""Train a torchvision architecture from random weights on the user's data (``search --train-teacher N``).

Nothing is downloaded at run time, so a torchvision name alone is a network with random weights. A
search needs a teacher that knows the data; this trains one (every layer, the classifier sized to the
data's classes) before the search, and keeps it as ``teacher.pt`` in the output folder so that a
resumed search uses the same teacher instead of training again.

Every training image is used every epoch (the short last batch is kept), and after training the
BatchNorm statistics are re-estimated on training images: a few epochs on a small data set leave running
averages of batches seen while the weights were still moving, and the teacher scored far below its
weights in eval mode (a resnet18 after 15 epochs on 120 images: 60% test accuracy, 100% re-estimated).
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
BN_IMAGES = 1024  # training images the BatchNorm statistics are re-estimated on after training (16 batches)


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
            "train_images": len(splits.train), "last_batch": "kept", "bn_images": BN_IMAGES}


def recipe_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, str]:
    """What differs between a saved teacher's recipe and the wanted one: the setting, and in words."""
    if any(key not in saved for key in wanted):
        return {"version": "trained by an earlier hwcompress, which dropped the short last batch and kept the BatchNorm "
                           "statistics training left"}
    return {key: f"{key} {saved[key]}, now {value}" for key, value in wanted.items() if saved[key] != value}


def trained_teacher(arch: str, splits: Any, epochs: int, seed: int, out: str | Path | None,
                    log: Any = print, *, resumed: bool = False) -> tuple[Any, dict[str, Any]]:
    """The teacher ``arch`` trained for ``epochs`` on ``splits.train`` (or the one saved in ``out`` by an
    earlier run with the same recipe). Returns the module (eval mode) and what the report says of it.

    A ``teacher.pt`` with another recipe is refused (never replaced), except by a ``resumed`` search, whose
    settings differ from the saved run's only where ``--resume-override`` accepted it: there a change of
    epochs, input shape or data trains the teacher again and replaces the file (it says so), and a change of
    the seed alone keeps the trained teacher (the seed steers the search from then on, not a new teacher).
    """
    import torch

    recipe = teacher_recipe(arch, splits, epochs, seed)
    saved = Path(out) / "teacher.pt" if out is not None else None
    if saved is not None and saved.is_file():
        try:
            state = torch.load(saved, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the same remedy
            raise UserError(f"cannot read the trained teacher {saved} ({type(error).__name__}); delete it to train again") from None
        if not (isinstance(state, dict) and state.get("format") == FORMAT and isinstance(state.get("recipe"), dict)):
            raise UserError(f"{saved} is not a teacher --train-teacher trained; move it away, or choose another --out")
        changes = recipe_changes(state["recipe"], recipe)
        seed_only = resumed and set(changes) == {"seed"}
        if not changes or seed_only:
            module = build(arch, recipe["num_classes"])
            module.load_state_dict(state["state_dict"])
            module.eval()
            log(f"teacher: {arch} trained here earlier ({saved}), reused" + (
                f" (trained with seed {state['recipe']['seed']}: --resume-override seed changes the search's seed, "
                "not its trained teacher)" if seed_only else ""))
            return module, {**state["report"], "from_cache": True, "path": str(saved)}
        listed = "; ".join(changes.values())
        if not resumed:
            raise UserError(f"{saved} holds a teacher trained with other settings ({listed}); delete it to train again, "
                            "or choose another --out")
        log(f"teacher: {saved} was trained with other settings ({listed}); the resumed search trains its teacher "
            "again, and the new one replaces it")
    return _train(arch, splits, recipe, saved, log)


def _train(arch: str, splits: Any, recipe: dict[str, Any], saved: Path | None, log: Any) -> tuple[Any, dict[str, Any]]:
    """Train the teacher ``recipe`` describes and keep it as ``saved``."""
    import torch

    from hwcompress.model.training import steps_per_epoch, train_supervised

    epochs, seed = recipe["epochs"], recipe["seed"]
    torch.manual_seed(seed)  # the initial weights follow the seed
    module = build(arch, recipe["num_classes"])
    steps = steps_per_epoch(len(splits.train), BATCH)
    log(f"teacher: training {arch} from random weights on {len(splits.train)} images for {epochs} epochs of "
        f"{steps} step{'s' if steps != 1 else ''} (batches of up to {BATCH}; --train-teacher; nothing is downloaded)")
    started = time.perf_counter()
    result = train_supervised(module, splits.train, epochs=epochs, lr=LR, seed=seed, batch_size=BATCH,
                              val_ds=splits.val, progress=True, description=f"Training the teacher {arch}",
                              keep_last=True, bn_images=BN_IMAGES)
    report = {"arch": arch, "epochs": epochs, "steps": result["steps"], "seconds": round(time.perf_counter() - started, 1),
              "bn_images": result["bn_images"],  # the BatchNorm statistics' images, re-estimated after training
              "val_accuracy": round(float(result["val_accuracy"]), 4),  # train_supervised scores val_ds
              "recipe": recipe}
    log(f"teacher: trained in {report['seconds']:.0f} s, BatchNorm statistics re-estimated on {report['bn_images']} "
        f"training images, validation accuracy {report['val_accuracy']:.2%}")
    if saved is not None:
        document = {"format": FORMAT, "recipe": recipe, "report": report, "state_dict": module.state_dict()}
        write_atomic(saved, lambda tmp: torch.save(document, tmp))
        report["path"] = str(saved)
    module.eval()
    return module, {**report, "from_cache": False}
