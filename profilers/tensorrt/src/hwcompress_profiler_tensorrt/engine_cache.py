"""On-disk cache of serialized TensorRT engines, keyed by everything that changes the engine.

Building an engine takes seconds to minutes (TensorRT times candidate kernels on the GPU); measuring
one takes well under a second. ``hwcompress lut record`` profiles hundreds of small single-layer ONNX
files, and a search re-profiles the same student, so engines are cached. An engine is only valid for
the exact TensorRT version and GPU it was built on, and it bakes in precision, workspace and input
shape: all of them are in the key, together with the ONNX file's hash.

Layout: ``<cache>/<key>.engine`` plus ``<key>.json`` (what went into the key, build time), and one
TensorRT timing cache per TensorRT version and GPU, which makes building *other* engines with the same
layer shapes faster (the LUT recorder's grid of channel counts benefits most).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress.files import write_atomic

#: Bump when the build recipe changes in a way the key does not capture (e.g. new builder flags).
CACHE_FORMAT = 1
CACHE_DIR_ENV = "HWCOMPRESS_CACHE_DIR"
SUBFOLDER = "trt-engines"


def engine_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The engine cache folder.

    Args:
        override: a folder to use as is (the ``engine_cache_dir`` option).

    Returns:
        ``override``, else ``$HWCOMPRESS_CACHE_DIR/trt-engines``, else
        ``platformdirs.user_cache_dir("hwcompress")/trt-engines``.
    """
    if override:
        return Path(override).expanduser()
    base = os.environ.get(CACHE_DIR_ENV)
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("hwcompress")
    return Path(base).expanduser() / SUBFOLDER


def engine_cache_key(
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    workspace_bytes: int | None,
    input_shape: Sequence[int],
    extra: dict[str, Any] | None = None,
) -> str:
    """The cache key: SHA-256 of a canonical JSON of every input that shapes the engine.

    Args:
        onnx_sha256: hash of the ONNX file's bytes.
        tensorrt_version: ``tensorrt.__version__``.
        gpu_name: CUDA device name (``torch.cuda.get_device_name``).
        compute_capability: ``"8.9"`` style; two boards with one marketing name can differ here.
        precision: ``fp32`` | ``fp16`` | ``int8``.
        workspace_bytes: the workspace limit, None for TensorRT's default.
        input_shape: the shape the optimisation profile is built for.
        extra: further build inputs (optimisation level, calibration identity, precision route).

    Returns:
        64 hex digits.
    """
    document = {
        "format": CACHE_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "workspace_bytes": workspace_bytes,
        "input_shape": [int(d) for d in input_shape],
        "extra": {k: v for k, v in sorted((extra or {}).items()) if v is not None},
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EngineCache:
    """Serialized engines in one folder.

    Args:
        folder: the cache folder (created on the first store).
        enabled: when False, :meth:`load` always misses and :meth:`store` writes nothing.
    """

    def __init__(self, folder: str | os.PathLike[str], enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled

    def engine_path(self, key: str) -> Path:
        return self.folder / f"{key}.engine"

    def load(self, key: str) -> bytes | None:
        """The cached engine bytes, or None (missing, disabled or unreadable)."""
        if not self.enabled:
            return None
        try:
            return self.engine_path(key).read_bytes()
        except OSError:
            return None

    def store(self, key: str, engine: bytes, metadata: dict[str, Any]) -> Path | None:
        """Write an engine and its metadata; a cache that cannot be written is not an error."""
        if not self.enabled:
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.engine_path(key), engine)
            write_atomic(self.folder / f"{key}.json", (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
        except (OSError, UserError):
            return None
        return self.engine_path(key)

    def discard(self, key: str) -> None:
        """Forget an entry that failed to deserialize (corrupt, or from an incompatible build)."""
        for path in (self.engine_path(key), self.folder / f"{key}.json"):
            try:
                path.unlink()
            except OSError:
                pass

    def timing_cache_path(self, tensorrt_version: str, gpu_name: str, compute_capability: str) -> Path:
        """Where the TensorRT timing cache for this TensorRT version and GPU lives."""
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu_name}-sm{compute_capability}-trt{tensorrt_version}").strip("-")
        return self.folder / f"timing-{slug}.cache"

    def load_timing_cache(self, path: Path) -> bytes:
        if not self.enabled:
            return b""
        try:
            return path.read_bytes()
        except OSError:
            return b""

    def store_timing_cache(self, path: Path, data: bytes) -> None:
        if not self.enabled or not data:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except (OSError, UserError):
            pass
