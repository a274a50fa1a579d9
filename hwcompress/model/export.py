"""ONNX export, chosen deliberately and checked against PyTorch.

On torch 2.14 the default (dynamo) exporter writes opset 20 and ignores a request for 17; only the
TorchScript-based exporter (``dynamo=False``, deprecated but still shipped) honours opset 17, which is
what TensorRT 8.6+, ONNX Runtime 1.14+ and mobile runtimes all read. We use that path, keep the
exporter's node names (``/layer1/layer1.0/conv1/Conv``: module path inside), which is how per-node
times map back to PyTorch layers, and record opset and exporter in every report.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwcompress.errors import UserError
from hwcompress.files import write_atomic

OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript exporter)"
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass
class ExportInfo:
    """What was exported and how well it agrees with PyTorch."""

    path: str
    opset: int
    exporter: str
    max_abs_diff: float | None = None  # vs PyTorch on a random input, None when ONNX Runtime is absent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(module: Any, input_shape: tuple[int, ...], path: str | os.PathLike[str], *, verify: bool = True) -> ExportInfo:
    """Export ``module`` to ONNX at ``path`` (written to a temporary name, then renamed).

    Args:
        module: a ``torch.nn.Module`` (exported in eval mode).
        input_shape: the static input shape.
        path: destination ``.onnx`` file.
        verify: run the file with ONNX Runtime (if installed) and compare with PyTorch's output.

    Raises:
        UserError: the model uses an operator the exporter cannot write (named in the message).
    """
    import torch

    path = Path(path)
    module.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
    except Exception as error:
        raise UserError(f"the model cannot be exported to ONNX: {_describe_export_error(error)}") from None
    write_atomic(path, buffer.getvalue())
    info = ExportInfo(path=str(path), opset=OPSET, exporter=EXPORTER)
    if verify:
        info.max_abs_diff = _compare_with_torch(module, example, path)
    return info


def _describe_export_error(error: Exception) -> str:
    text = str(error)
    match = re.search(r"operator '([\w:.]+)'", text) or re.search(r"(aten::\w+|prim::\w+)", text)
    if match:
        return f"operator {match.group(1)} is not supported at opset {OPSET}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{type(error).__name__}: {first[:200]}"


def _compare_with_torch(module: Any, example: Any, path: Path) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(example)
    if isinstance(expected, (tuple, list)):
        expected = expected[0]
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    return float(np.max(np.abs(got - expected.numpy()))) if got.size else 0.0


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (engine caches and LUT provenance key on it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def node_module_path(node_name: str) -> str | None:
    """The PyTorch module path inside an exporter node name.

    The exporter writes one scope per module level, naming Sequential children by their qualified
    name and attributes by their own name: ``/layer2/layer2.0/downsample/downsample.0/Conv`` is
    ``layer2.0.downsample.0``; ``/features/features.0/features.0.0/Conv`` is ``features.0.0``.
    """
    parts = [p for p in node_name.split("/") if p][:-1]  # the last part is the op
    if not parts:
        return None
    full, previous = "", None
    for part in parts:
        if previous is not None and part.startswith(previous + "."):
            full = full[: len(full) - len(previous)] + part
        else:
            full = f"{full}.{part}" if full else part
        previous = part
    return full
