"""Fake int8 in PyTorch: a float model that rounds where ONNX Runtime's Q/DQ int8 model rounds.

The stand-in the search was measured against (:mod:`hwcompress.slim.quantize` is the real thing):

* **weights** of int8 conv/linear layers rounded per output channel, symmetric, to 255 levels
  (ONNX Runtime's per-channel int8: scale = max |w_c| / 127). Rounding the unfolded weight is exactly
  rounding the BatchNorm-folded one that the exported graph carries: folding scales each output
  channel by one factor, and a per-channel symmetric grid scales with it;
* **activations** rounded to uint8 with MinMax ranges (including 0) calibrated on the same training
  images, where the Q/DQ graph quantizes: the input of every int8 layer, the end of each fused
  conv/linear (+BatchNorm, +activation) chain, and the outputs of standalone activations and pooling
  (the residual adds' ReLU). A functional add without a module after it is not seen, so its output
  is not rounded here while ONNX Runtime rounds it.

Measured on the embedded ResNet-56 and 12 pruned students (``bench/quantized_scoring.py``, one thread,
269 validation images): top-1 agreement with ONNX Runtime's int8 model 98.1-100% (median 99.6%),
accuracy within 0.37 points, Kendall tau 0.941 over the 13 models; 2.62-3.45 s per model against
1.37-2.62 s for ONNX Runtime itself, which is why the search scores with the runtime
(:mod:`hwcompress.search.quantized`). Kept as the measured reference, and for training-aware uses.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import torch
from torch import nn

__all__ = ["fake_quantized"]

_CHAIN_HEADS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU)
_STANDALONE = _ACTIVATIONS + (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool1d)


def _round_weight(weight: torch.Tensor, levels: int = 127) -> torch.Tensor:
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / float(levels)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.clamp(torch.round(weight / scale.reshape(shape)), -levels, levels) * scale.reshape(shape)


def _fake_uint8(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 if high > low else 1.0
    zero = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


class _Points:
    """Quantization points keyed by (module name, call index within one forward)."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int, str], tuple[float, float]] = {}
        self.observing = True
        self.calls: dict[str, int] = {}

    def touch(self, key: tuple[str, int, str], x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            low, high = float(x.min()), float(x.max())
            old = self.ranges.get(key)
            self.ranges[key] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
            return x
        low, high = self.ranges.get(key, (float(x.min()), float(x.max())))
        return _fake_uint8(x, low, high)


def _chain_ends(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, set[int]], dict[str, str]]:
    """Per module, the calls whose output ends a fused chain (or a standalone op), and the chain head
    (the conv/linear) each call belongs to."""
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    handles = []
    for name, leaf in model.named_modules():
        if name and not list(leaf.children()):
            def hook(mod: Any, inputs: Any, output: Any, name: str = name) -> None:
                calls.append((name, mod, inputs[0] if inputs else None, output))
            handles.append(leaf.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    ends: dict[str, set[int]] = {}
    owner: dict[str, str] = {}
    seen: dict[str, int] = {}
    last_head = ""
    for index, (name, mod, _inp, out) in enumerate(calls):
        call = seen.get(name, 0)
        seen[name] = call + 1
        if isinstance(mod, _CHAIN_HEADS):
            last_head = name
        following = calls[index + 1] if index + 1 < len(calls) else None
        fused_next = following is not None and following[2] is out and (
            isinstance(following[1], _ACTIVATIONS) or (isinstance(mod, _CHAIN_HEADS) and isinstance(following[1], _NORMS)))
        if isinstance(mod, _CHAIN_HEADS + _NORMS) and fused_next:
            continue  # the runtime fuses what follows: the chain ends later
        if isinstance(mod, _CHAIN_HEADS + _NORMS + _STANDALONE):
            ends.setdefault(name, set()).add(call)
            owner[f"{name}#{call}"] = last_head
    return ends, owner


def fake_quantized(model: nn.Module, calibration: Sequence[torch.Tensor], int8_layers: Iterable[str] | None = None,
                   reduce_range: bool = False) -> nn.Module:
    """A copy of ``model`` that rounds weights and activations as its int8 Q/DQ export would.

    Args:
        model: the float model (not changed).
        calibration: input batches the activation ranges are observed on.
        int8_layers: conv/linear module names that run in int8 (None: every one).
        reduce_range: weights in 7 bits (-64..64), as ONNX Runtime's ``reduce_range`` quantizes them
            (activations keep 8 bits).

    Returns:
        The copy, in eval mode; it runs in float, so any batch size works.
    """
    student = copy.deepcopy(model).eval()
    heads = {name for name, m in student.named_modules() if isinstance(m, _CHAIN_HEADS)}
    int8 = heads if int8_layers is None else heads & set(int8_layers)
    with torch.no_grad():
        for name, module in student.named_modules():
            if name in int8:
                module.weight.copy_(_round_weight(module.weight, 64 if reduce_range else 127))
    ends, owner = _chain_ends(student, calibration[0][:1])
    points = _Points()
    handles = []

    def reset(_module: Any, _inputs: Any) -> None:
        points.calls.clear()

    handles.append(student.register_forward_pre_hook(reset))
    for name, module in student.named_modules():
        if name in int8:
            def pre(_mod: Any, inputs: Any, name: str = name) -> Any:
                call = points.calls.get(f"{name}>", 0)
                points.calls[f"{name}>"] = call + 1
                return (points.touch((name, call, "in"), inputs[0]), *inputs[1:])
            handles.append(module.register_forward_pre_hook(pre))
        if name in ends:
            def post(_mod: Any, _inputs: Any, output: Any, name: str = name) -> Any:
                call = points.calls.get(name, 0)
                points.calls[name] = call + 1
                if call in ends[name] and owner.get(f"{name}#{call}", "") in int8:
                    return points.touch((name, call, "out"), output)
                return output
            handles.append(module.register_forward_hook(post))
    with torch.no_grad():
        for batch in calibration:
            student(batch)
    points.observing = False
    student._fake_quant_handles = handles  # kept alive with the copy
    return student
