"""The Python API: compress, profile and compare from a notebook or a script, three lines each.

::

    import hwcompress

    result = hwcompress.compress(model, (train_set, val_set), budget=hwcompress.Budget.latency_ratio(0.6))
    result.student, result.budget_met, result.report          # nn.Module, bool, the result document

    report = hwcompress.profile("resnet18", device="cpu")     # report.to_dict(): hwcompress.profile/1
    table = hwcompress.compare(["resnet18", "mobilenet_v2"])  # table.to_dict(): hwcompress.compare/1

Nothing is printed unless ``progress=True``, and nothing is written unless ``out`` names a folder. The
command line is a thin layer over these same calls. Errors in what is passed raise
:class:`hwcompress.UserError` with a one-line message.
"""

from __future__ import annotations

import operator
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.measure.compare import CompareReport, compare_models
from hwcompress.measure.profile import profile_model
from hwcompress.measure.report import ProfileReport
from hwcompress.model.data import DataSplits, resolve_data
from hwcompress.model.loading import LoadedModel, parse_input_shape
from hwcompress.search.config import SearchConfig, check_latency_only
from hwcompress.search.prepare import PYTHON_OBJECT
from hwcompress.search.run import SearchResult, apply_policy, resume_search, run_search

__all__ = ["compare", "compress", "profile", "resume"]

#: The keyword settings profile() and compare() take besides their named arguments.
PROFILE_SETTINGS = ("runs", "warmup", "threads", "precision", "per_layer", "device_file", "weights", "workdir")
COMPARE_SETTINGS = ("runs", "warmup", "threads", "precision", "device_file")


def _shape(input_shape: Any) -> tuple[int, ...] | None:
    """``input_shape`` as a tuple of ints: a sequence of whole numbers, or a string like ``"1,3,224,224"``."""
    if input_shape is None:
        return None
    if isinstance(input_shape, str):
        return parse_input_shape(input_shape)
    try:  # operator.index: ints and NumPy's integers, not floats or bools' look-alikes in strings
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        raise UserError(f"input_shape must be positive whole numbers like (1, 3, 224, 224), not {input_shape!r}") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UserError(f"input_shape must be positive whole numbers like (1, 3, 224, 224), not {input_shape!r}")
    return shape


def _check_keywords(function: str, settings: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UserError(f"{function}() has no setting {', '.join(unknown)}; settings are: {', '.join(known)}")



def _teacher_and_data(model: Any, data: Any, input_shape: tuple[int, ...] | None, weights: str | None,
                      ) -> tuple[str | None, LoadedModel | None, str | None, DataSplits | None]:
    """Config strings and loaded objects for ``model`` and ``data``: strings stay strings (loaded by the
    search, resumable from the command line); Python objects are loaded here."""
    splits = None
    data_spec = None
    if data is None or isinstance(data, (str, os.PathLike)):
        data_spec = None if data is None else str(data)
    else:
        splits = resolve_data(data)
        data_spec = PYTHON_OBJECT
    if model is None or isinstance(model, (str, os.PathLike)):
        return (None if model is None else str(model)), None, data_spec, splits
    if isinstance(model, LoadedModel):
        return PYTHON_OBJECT, model, data_spec, splits
    if not callable(getattr(model, "forward", None)):
        raise UserError(f"model must be an nn.Module or a --model string, not {type(model).__name__}")
    if data is None:
        raise UserError("give data for your model: (train, val) or (train, val, test) datasets, a folder or 'pkg.module:factory'")
    shape = input_shape
    if shape is None:
        shape = splits.input_shape if splits is not None else resolve_data(data_spec).input_shape
    if weights:
        raise UserError("weights applies to a --model string; load them into your module before passing it")
    return PYTHON_OBJECT, LoadedModel(type(model).__name__, model, None, tuple(shape), "module"), data_spec, splits


def compress(
    model: Any = None,
    data: Any = None,
    *,
    budget: Budget,
    device: str | None = None,
    agent: str = "amc",
    episodes: int = 120,
    finetune_epochs: float = 8.0,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    input_shape: Sequence[int] | None = None,
    agent_options: dict[str, Any] | None = None,
    policy: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    **settings: Any,
) -> SearchResult:
    """Compress ``model`` until it meets ``budget`` on ``device``; the student is measured there.

    Args:
        model: an ``nn.Module``, or any ``--model`` string (torchvision name, ``pkg.module:factory``,
            checkpoint); None for the embedded default (a ResNet-56 trained on scikit-learn's digits).
        data: ``(train, val)`` or ``(train, val, test)`` datasets of ``(image, label)``, an ImageFolder
            folder, ``pkg.module:factory``, or None for the embedded digits.
        budget: :meth:`Budget.latency_ms`, :meth:`Budget.latency_ratio`, :meth:`Budget.macs` or
            :meth:`Budget.params`.
        device: a device name from the catalog (``hwcompress devices``); None: ``cpu``, or the device
            ``device_file`` describes.
        agent: ``amc``, ``n2n``, ``uniform``, ``random``, or a plugin's.
        episodes: students the agent may score.
        finetune_epochs: distillation epochs for the final student.
        seed: every random choice follows it.
        out: a folder for result.json, student.onnx, the plots and the checkpoint; None writes nothing.
        progress: print progress and the closing table on stderr.
        input_shape: the input shape (default: the data's).
        agent_options: the agent's own settings (as ``--agent-option``).
        policy: re-apply this ``policy.json`` instead of searching.
        quantize: ``"int8"`` (every layer the device runs in int8 quantized, channels pruned on top to meet
            the budget) or ``"mixed"`` (the agent chooses int8 or float per channel group too); the student's
            accuracy and latency are then its int8 model's, as ONNX Runtime runs it.
        **settings: any other :class:`~hwcompress.search.config.SearchConfig` field (``lut``,
            ``reward``, ``lbound``, ``anchors``, ``runs``, ``threads``, ``warmup_episodes``...).

    Returns:
        :class:`~hwcompress.search.run.SearchResult`: ``student``, ``budget_met``, ``report``.

    Raises:
        UserError: bad input (one line saying what and how to fix it), an infeasible budget.
        hwcompress.search.prepare.BudgetAlreadyMet: the teacher already meets the budget.
    """
    if not isinstance(budget, Budget):
        raise UserError("budget must be a hwcompress.Budget: Budget.latency_ms(x), Budget.latency_ratio(r), "
                        "Budget.macs(n) or Budget.params(n)")
    _check_keywords("compress", settings, sorted(f.name for f in fields(SearchConfig)))
    try:  # as the CLI refuses their flags: a MACs or parameter budget never measures latency
        check_latency_only(budget, settings)
    except UserError as error:
        raise UserError(in_api_words(str(error))) from None
    shape = _shape(input_shape)
    if agent_options is not None and not isinstance(agent_options, dict):
        raise UserError(f"agent_options must be a dict like {{'delta_decay': 0.9}}, not {type(agent_options).__name__}")
    model_spec, teacher, data_spec, splits = _teacher_and_data(model, data, shape, settings.get("weights"))
    try:
        config = SearchConfig(budget=budget, agent=agent, agent_options=dict(agent_options or {}), device=device,
                              model=model_spec, data=data_spec, input_shape=shape, episodes=episodes,
                              finetune_epochs=finetune_epochs, seed=seed, out=None if out is None else str(out),
                              quantize=quantize, **settings)
    except UserError as error:  # the settings' checks speak the CLI's flags; here they are keywords
        raise UserError(in_api_words(str(error))) from None
    if policy is not None:
        return apply_policy(config, policy, progress=progress, teacher=teacher, data=splits)
    return run_search(config, progress=progress, teacher=teacher, data=splits)


#: CLI flags whose Python counterpart is not the flag's name as a keyword.
_API_WORDS = {"--latency-ratio": "Budget.latency_ratio", "--latency-ms": "Budget.latency_ms", "--macs": "Budget.macs",
              "--params": "Budget.params", "--agent-option": "agent_options"}


def in_api_words(message: str) -> str:
    """``message`` (a check written for the CLI) with each ``--flag`` named as the Python API takes it:
    ``--warmup-episodes`` -> ``warmup_episodes``, ``--latency-ratio`` -> ``Budget.latency_ratio``."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: _API_WORDS.get(m.group(0), m.group(1).replace("-", "_")), message)


def resume(out: str | os.PathLike[str], *, model: Any = None, data: Any = None, progress: bool = False,
           override: Sequence[str] = (), **changes: Any) -> SearchResult:
    """Continue the search checkpointed in ``out`` (pass the same ``model`` and ``data`` objects when
    they were Python objects). ``changes`` must match the saved run, except more ``episodes`` and the
    settings named in ``override``."""
    teacher = splits = None
    if model is not None or data is not None:
        _, teacher, _, splits = _teacher_and_data(model, data, changes.get("input_shape"), None)
    return resume_search(Path(out), changes=changes, override=override, progress=progress, teacher=teacher, data=splits)


def profile(model: Any = "resnet18", *, device: str | None = "cpu", input_shape: Sequence[int] | None = None,
            lut: str | os.PathLike[str] | None = None, **settings: Any) -> ProfileReport:
    """Measure ``model`` on ``device`` (or predict it from the device's LUT): latency median and spread,
    MACs, FLOPs, parameters, whole model and per layer.

    Args:
        model: an ``nn.Module`` (give ``input_shape``) or any ``--model`` string.
        device: a device name from the catalog; ``device_file`` takes a TOML file instead.
        input_shape: the input shape (default: the model's usual one): a sequence of ints, or a string
            like ``"1,3,224,224"``.
        lut: predict from this LUT instead of measuring.
        **settings: ``runs``, ``warmup``, ``threads``, ``precision``, ``per_layer``, ``device_file``,
            ``weights``, ``workdir``.

    Returns:
        :class:`~hwcompress.measure.report.ProfileReport` (``to_dict()`` is the ``hwcompress.profile/1``
        document).
    """
    _check_keywords("profile", settings, PROFILE_SETTINGS)
    return profile_model(model, device=device, input_shape=_shape(input_shape), lut=None if lut is None else str(lut), **settings)


def compare(models: Sequence[Any], *, device: str | None = "cpu", input_shape: Sequence[int] | None = None,
            rounds: int = 5, lut: str | os.PathLike[str] | None = None, **settings: Any) -> CompareReport:
    """Measure ``models`` on ``device`` in interleaved rounds; each is quoted as its median per-round
    ratio to the first (the reference), with the range.

    Args:
        models: two or more ``nn.Module`` objects or ``--model`` strings; the first is the reference.
        input_shape: a sequence of ints, or a string like ``"1,3,224,224"``.
        **settings: ``runs``, ``warmup``, ``threads``, ``precision``, ``device_file``.

    Returns:
        :class:`~hwcompress.measure.compare.CompareReport` (``to_dict()`` is the ``hwcompress.compare/1``
        document).
    """
    if isinstance(models, (str, os.PathLike)) or not isinstance(models, Sequence):
        raise UserError(f"models must be a list of two or more models (the first is the reference), not {models!r}")
    _check_keywords("compare", settings, COMPARE_SETTINGS)
    return compare_models(list(models), device=device, input_shape=_shape(input_shape),
                          rounds=rounds, lut=None if lut is None else str(lut), **settings)
