"""AMC's least-squares reconstruction of pruned layers (section 1.5 of the paper).

:func:`reconstruct_least_squares` refits a pruned conv/linear so that, on the *original* model's input
features at the kept channels, it reproduces the original layer's output (ordinary least squares on
randomly sampled spatial positions; kxk convs through ``F.unfold``). It changes the pruned model in
place, the one exception to the surgery's rule of returning new modules::

    reconstruct_least_squares(student, model, calibration)    # optional, after prune_channels
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwcompress.slim.pruning import _KEPT_ATTR

__all__ = ["reconstruct_least_squares"]


# --------------------------------------------------------------------------------------------------
# Least-squares reconstruction (AMC section 1.5)
# --------------------------------------------------------------------------------------------------


def _batches(calibration_inputs: torch.Tensor | Iterable[Any]) -> Iterable[torch.Tensor]:
    if isinstance(calibration_inputs, torch.Tensor):
        yield calibration_inputs
        return
    for batch in calibration_inputs:
        # DataLoaders yield (inputs, targets); take the inputs.
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def _sample_patches(
    x: torch.Tensor,
    out_hw: Sequence[int],
    conv: nn.Conv2d,
    padding: Sequence[int],
    points: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """im2col rows at ``points`` random output positions per image, without unfolding whole maps.

    Returns the rows ``[N * points, C * kh * kw]`` (the order of ``F.unfold`` and of
    ``weight.flatten(1)``) and the flat output positions ``[N, points]`` they belong to. Gathering
    only the sampled patches keeps memory at ``N * points * C * k * k`` instead of a full unfold.
    """
    n = x.shape[0]
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    points = min(points, out_h * out_w)
    pick = torch.randint(out_h * out_w, (n, points), generator=generator).to(x.device)
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ky = torch.arange(kh, device=x.device).view(1, 1, kh, 1) * dh
    kx = torch.arange(kw, device=x.device).view(1, 1, 1, kw) * dw
    rows = (pick // out_w).view(n, points, 1, 1) * sh + ky  # [N, P, kh, 1]
    cols = (pick % out_w).view(n, points, 1, 1) * sw + kx  # [N, P, 1, kw]
    image = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    patches = x[image, :, rows, cols]  # advanced indices first: [N, P, kh, kw, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n * points, -1), pick


@torch.no_grad()
def reconstruct_least_squares(
    pruned: nn.Module,
    original: nn.Module,
    calibration_inputs: torch.Tensor | Iterable[Any],
    layer_names: Iterable[str] | None = None,
    points_per_image: int = 10,
    seed: int = 0,
) -> list[str]:
    """Refit pruned layers' weights in place by least squares (AMC's reconstruction).

    For each conv (``groups == 1``) or linear whose input channels were pruned, ``X`` is the layer's
    input in ``original`` restricted to the kept input channels (im2col'd with the layer's kernel,
    stride, padding and dilation), ``Y`` the original layer's output at the kept output channels
    minus its bias, both at ``points_per_image`` random output positions per image (linears use the
    whole vector); the new weight solves ``min ||X W^T - Y||`` (``torch.linalg.lstsq``, float64).
    Only the sampled patches are gathered, never whole unfolded maps, so memory stays small.
    Features come from the original model, as in AMC's default (not ``--use_new_input``).

    Args:
        pruned: A model from :func:`prune_channels` whose source was ``original`` (changed in place).
        original: The unpruned model.
        calibration_inputs: A batch tensor, or an iterable of batches or ``(inputs, targets)``.
        layer_names: Layers to refit; default every conv/linear with pruned input channels.
        points_per_image: Spatial positions sampled per image for convs.
        seed: Seed of the position sampler (deterministic results).

    Returns:
        The names of the layers that were refitted.

    Raises:
        ValueError: ``pruned`` carries no kept-channel record, or a named layer cannot be refitted.
    """
    record = getattr(pruned, _KEPT_ATTR, None)
    if not record:
        raise ValueError("pruned model has no kept-channel record; prune it with prune_channels() first")
    pruned_modules = dict(pruned.named_modules())
    original_modules = dict(original.named_modules())

    def _eligible(name: str) -> bool:
        layer = pruned_modules.get(name)
        return (
            name in record
            and "in" in record[name]
            and name in original_modules
            and isinstance(layer, (nn.Conv2d, nn.Linear))
            and (not isinstance(layer, nn.Conv2d) or layer.groups == 1)
        )

    if layer_names is None:
        targets = [n for n in record if _eligible(n)]
    else:
        targets = list(layer_names)
        bad = [n for n in targets if not _eligible(n)]
        if bad:
            raise ValueError(
                f"cannot reconstruct {bad}: only conv (groups=1)/linear layers with pruned inputs"
            )
    if not targets:
        return []
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {n: ([], []) for n in targets}

    def _hook(name: str) -> Callable[..., None]:
        layer = pruned_modules[name]
        keep_in = torch.as_tensor(record[name]["in"])
        keep_out = torch.as_tensor(record[name].get("out", range(original_modules[name].weight.shape[0])))

        def _collect(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x, bias = args[0], module.bias
            # The refit weight has no intercept; the pruned layer keeps the original bias.
            y = out if bias is None else out - (bias.view(1, -1, 1, 1) if out.dim() == 4 else bias)
            if isinstance(layer, nn.Linear):
                rows[name][0].append(x[..., keep_in.to(x.device)].reshape(-1, len(keep_in)).double().cpu())
                rows[name][1].append(y[..., keep_out.to(y.device)].reshape(-1, len(keep_out)).double().cpu())
                return
            x = x[:, keep_in.to(x.device)]
            if isinstance(module.padding, str):  # "same"/"valid": the conv's own (possibly uneven) pads
                x, padding = F.pad(x, module._reversed_padding_repeated_twice), (0, 0)
            else:
                padding = module.padding
            patches = _sample_patches(x, y.shape[-2:], module, padding, points_per_image, generator)
            targets_ = y[:, keep_out.to(y.device)].flatten(2)  # [N, C_out', L]
            picked = torch.gather(targets_, 2, patches[1].unsqueeze(1).expand(-1, targets_.shape[1], -1))
            rows[name][0].append(patches[0].double().cpu())
            rows[name][1].append(picked.transpose(1, 2).reshape(-1, targets_.shape[1]).double().cpu())

        return _collect

    for name in targets:
        mode = getattr(original_modules[name], "padding_mode", "zeros")
        if mode != "zeros":  # F.unfold pads with zeros only
            raise ValueError(f"cannot reconstruct {name!r}: padding_mode {mode!r}")
    hooks = [original_modules[n].register_forward_hook(_hook(n)) for n in targets]
    training = [(m, m.training) for m in original.modules()]
    try:
        original.eval()
        for batch in _batches(calibration_inputs):
            original(batch)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in training:
            m.training = flag
    for name in targets:
        layer = pruned_modules[name]
        x = torch.cat(rows[name][0])
        y = torch.cat(rows[name][1])
        solution = torch.linalg.lstsq(x, y, driver="gelsd").solution  # [C'*k*k, C_out']
        weight = solution.t().reshape(layer.weight.shape).to(layer.weight.dtype)
        layer.weight.copy_(weight.to(layer.weight.device))
    return targets
