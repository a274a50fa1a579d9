"""Turn a ``--model`` string into a model: torchvision name, ``pkg.module:factory``, checkpoint or ONNX.

Also parses ``--input-shape``. Every failure is a :class:`~hwcompress.errors.UserError` that names
what was wrong and how to fix it.
"""

from __future__ import annotations

import importlib
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.model.scratch import FORMAT as TEACHER_FORMAT
from hwcompress.model.scratch import build as build_torchvision

DEFAULT_MODEL = "resnet18"
EMBEDDED_NAMES = ("embedded", "resnet56-digits")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# torchvision classification models that were trained at another resolution than 224.
_TORCHVISION_SIZES = {"inception_v3": 299}


@dataclass
class LoadedModel:
    """A resolved model. Exactly one of ``module`` / ``onnx_path`` is the source of truth."""

    name: str
    module: Any | None
    onnx_path: Path | None
    input_shape: tuple[int, ...]
    source: str  # torchvision | factory | checkpoint | onnx | embedded
    metadata: dict[str, Any] | None = None


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"1,3,224,224"`` (also ``1x3x224x224``); None passes through."""
    if text is None or text == "":
        return None
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"malformed input shape {text!r}; expected comma-separated integers like 1,3,224,224") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UserError(f"malformed input shape {text!r}; expected positive integers like 1,3,224,224")
    return shape


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    spec: str | None = None,
    *,
    weights: str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Resolve ``spec`` to a model in eval mode.

    Args:
        spec: torchvision name (``resnet18``), ``pkg.module:factory`` (called with no arguments),
            a checkpoint (``.pt``: a pickled module, or ``{"model": module}``/``{"arch", "state_dict"}``, or
            the ``teacher.pt`` that ``search --train-teacher`` wrote),
            an ``.onnx`` file, or ``embedded`` for the default ResNet-56 on digits. None means resnet18.
        weights: a state-dict file loaded into the built model (torchvision or factory models); a
            ``teacher.pt`` from ``search --train-teacher`` rebuilds a torchvision model with its classifier.
        input_shape: overrides the default input shape.

    Returns:
        The loaded model with its input shape.
    """
    spec = spec or DEFAULT_MODEL
    path = Path(spec)
    if spec.lower().endswith(".onnx"):
        if weights:
            raise UserError("--weights does not apply to an .onnx model (its weights are inside the file)")
        return _load_onnx(path, input_shape)
    if spec in EMBEDDED_NAMES:
        from hwcompress.model import embedded

        module, meta = embedded.default_teacher()
        loaded = LoadedModel("resnet56-digits", module, None, input_shape or (1, 3, 32, 32), "embedded", meta)
    elif spec.lower().endswith(CHECKPOINT_SUFFIXES) or path.is_file():
        loaded = _load_checkpoint(path, input_shape)
    elif ":" in spec:
        loaded = LoadedModel(spec, _call_factory(spec), None, input_shape or (1, 3, 224, 224), "factory")
    else:
        names = torchvision_names()
        if spec not in names:
            close = [n for n in names if spec.lower() in n][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(
                f"unknown model {spec!r}{hint}; give a torchvision model name, pkg.module:factory, "
                "a checkpoint file or an .onnx file"
            )
        import torchvision

        module = torchvision.models.get_model(spec, weights=None)
        size = _TORCHVISION_SIZES.get(spec, 224)
        loaded = LoadedModel(spec, module, None, input_shape or (1, 3, size, size), "torchvision")
    if weights:
        state = _read_weights(weights)
        if isinstance(state, dict) and state.get("format") == TEACHER_FORMAT and loaded.source == "torchvision":
            return _trained_teacher(state, Path(weights), input_shape, arch=spec)  # its classifier sized as it was trained
        _load_weights(loaded.module, weights, state)
    loaded.module.eval()
    return loaded


def resolve_model(
    model: Any = None,
    *,
    weights: str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """A :class:`LoadedModel` from whatever a user holds: a ``--model`` string (:func:`load_model`), an
    ``nn.Module`` (used as it is; ``input_shape`` is then required), or an already loaded model."""
    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, (str, Path)):
        return load_model(None if model is None else str(model), weights=weights, input_shape=input_shape)
    if not callable(getattr(model, "forward", None)):
        raise UserError(f"model must be an nn.Module or a --model string, not {type(model).__name__}")
    if input_shape is None:
        raise UserError(f"give input_shape for the {type(model).__name__} module, e.g. input_shape=(1, 3, 224, 224)")
    if weights:
        _load_weights(model, weights)
    return LoadedModel(type(model).__name__, model, None, tuple(input_shape), "module")


def _call_factory(spec: str) -> Any:
    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"malformed factory {spec!r}; expected pkg.module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # let users point at a module in the current folder
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UserError(f"cannot import {module_name!r} for --model {spec}: {type(error).__name__}: {error}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserError(f"{module_name!r} has no attribute {attr!r} (from --model {spec})")
    try:
        model = factory()
    except Exception as error:
        raise UserError(f"model factory {spec} failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_checkpoint(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import torch

    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        # Full-module checkpoints are pickles; only load files you trust (documented in the CLI help).
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        meta = {k: v for k, v in obj.items() if k != "model" and not isinstance(v, torch.Tensor)}
        obj = obj["model"]
    elif isinstance(obj, dict) and obj.get("format") == TEACHER_FORMAT:  # a teacher `search --train-teacher` trained
        return _trained_teacher(obj, path, input_shape)
    elif isinstance(obj, dict) and "arch" in obj and "state_dict" in obj:
        built = load_model(obj["arch"])
        _apply_state_dict(built.module, obj["state_dict"], str(path))
        shape = input_shape or tuple(obj.get("input_shape", built.input_shape))
        return LoadedModel(path.stem, built.module, None, shape, "checkpoint", {"arch": obj["arch"]})
    if not isinstance(obj, torch.nn.Module):
        raise UserError(
            f"checkpoint {path} holds {type(obj).__name__}, not a model; for a bare state dict use "
            "--model ARCH --weights FILE"
        )
    shape = input_shape or tuple(meta.get("input_shape", (1, 3, 224, 224)))
    return LoadedModel(path.stem, obj, None, shape, "checkpoint", meta or None)


def _trained_teacher(document: dict[str, Any], path: Path, input_shape: tuple[int, ...] | None,
                     arch: str | None = None) -> LoadedModel:
    """The teacher a search trained with ``--train-teacher`` (its ``teacher.pt``), with its classifier's size;
    ``arch``: the architecture named with it (``-m ARCH --weights FILE``), which must be the one it was trained as."""
    recipe = document.get("recipe") or {}
    if not isinstance(recipe.get("arch"), str) or not isinstance(recipe.get("num_classes"), int):
        raise UserError(f"{path} is a trained teacher without its recipe (arch, num_classes); train it again with --train-teacher")
    if arch is not None and arch != recipe["arch"]:
        raise UserError(f"{path} was trained as {recipe['arch']} ({recipe['num_classes']} classes), not {arch}; "
                        f"pass -m {path} (or -m {recipe['arch']} --weights {path})")
    arch = recipe["arch"]
    if not isinstance(document.get("state_dict"), dict):
        raise UserError(f"{path} is a trained teacher without its weights (state_dict); train it again with --train-teacher")
    module = build_torchvision(arch, recipe["num_classes"])
    _apply_state_dict(module, document["state_dict"], str(path))
    module.eval()
    recorded = recipe.get("input_shape")  # the size it was trained at, when its recipe says
    shape = input_shape or tuple(recorded or (1, 3, 224, 224))
    meta = {"arch": arch, "trained": document.get("report"), **({"input_shape": list(recorded)} if recorded else {})}
    return LoadedModel(arch, module, None, shape, "checkpoint", meta)


def _apply_state_dict(module: Any, state: Any, where: str) -> None:
    try:
        module.load_state_dict(state)
    except Exception as error:
        why = _state_dict_mismatch(module, state) or " ".join(str(error).split())
        raise UserError(f"weights in {where} do not fit the model: {why}") from None


def _state_dict_mismatch(module: Any, state: Any) -> str | None:
    """One line on how ``state`` differs from ``module``'s state dict: counts, and the first few keys
    missing from the file, in the file but not the model, and of another shape (None: nothing to say)."""
    if not isinstance(state, dict):
        return f"the file holds {type(state).__name__}, not a state dict (names to tensors)"
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    resized = [f"{key} {_shape(value)} in the file, {_shape(expected[key])} in the model" for key, value in state.items()
               if key in expected and hasattr(value, "shape") and tuple(value.shape) != tuple(expected[key].shape)]

    def first(items: list[str]) -> str:
        return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")

    parts = [f"{len(missing)} of the model's {len(expected)} keys missing ({first(missing)})" if missing else "",
             f"{len(unexpected)} key{'s' if len(unexpected) > 1 else ''} the model lacks ({first(unexpected)})" if unexpected else "",
             f"{len(resized)} of another shape ({first(resized)})" if resized else ""]
    return "; ".join(part for part in parts if part) or None


def _shape(tensor: Any) -> str:
    return "x".join(map(str, tuple(tensor.shape))) or "scalar"


def _load_weights(module: Any, weights: str, state: Any = None) -> None:
    """Load a ``--weights`` file (or its contents, ``state``, already read) into ``module``."""
    state = _read_weights(weights) if state is None else state
    if isinstance(state, dict) and state.get("format") == TEACHER_FORMAT:
        raise UserError(f"{weights} is a teacher trained by search --train-teacher; pass it as the model itself: -m {weights}")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    _apply_state_dict(module, state, weights)


def _read_weights(weights: str) -> Any:
    """The contents of a ``--weights`` file (tensors only: ``weights_only``)."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"weights file {weights} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if pickled:  # weights_only refuses Python objects: a whole model (search's student.pt), not weights
            raise UserError(f"{weights} holds a whole model or other Python objects ({pickled.group(1)}), not a state dict; "
                            f"pass it as the model itself: --model {weights} (only a file you trust)") from None
        if not zipfile.is_zipfile(path) and not _legacy_torch_file(path):
            raise UserError(f"{weights} is not a PyTorch weights file; give a state dict saved with "
                            "torch.save(model.state_dict(), FILE)") from None
        raise UserError(f"cannot read weights file {weights}: {type(error).__name__}: {' '.join(str(error).split())}") from None


def _legacy_torch_file(path: Path) -> bool:
    """Whether ``path`` starts as torch.save's pre-1.6 format does: a pickle protocol header."""
    with open(path, "rb") as stream:
        return stream.read(1) == b"\x80"


def _load_onnx(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import onnx

    if not path.is_file():
        raise UserError(f"ONNX file {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise UserError(f"cannot read ONNX file {path}: {type(error).__name__}: {error}") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise UserError(f"ONNX file {path} has {len(graph_inputs)} inputs; hwcompress profiles single-input models")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    declared = tuple(d.dim_value if d.dim_value > 0 else 0 for d in dims)
    if input_shape is None:
        if any(d == 0 for d in declared):
            raise UserError(f"ONNX file {path} has a dynamic input shape {declared}; pass --input-shape")
        input_shape = declared
    fixed = "x".join(str(d) if d else "?" for d in declared)
    if len(input_shape) != len(declared) or any(d and d != s for d, s in zip(declared, input_shape)):
        raise UserError(f"ONNX file {path} takes input {fixed} (dimensions of 0 or ? are free); --input-shape "
                        f"{','.join(map(str, input_shape))} does not fit it")
    return LoadedModel(path.stem, None, path, input_shape, "onnx")
