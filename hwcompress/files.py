"""Writing artifacts: one helper for every file hwcompress writes (reports, LUTs, checkpoints, models, plots).

The rules, those of careful command-line tools:

* A new path or an existing **regular file** is replaced atomically: the data goes to a temporary file
  with a unique name beside it, then one rename puts it in place. A reader sees the old file or the
  new one, never half of one, and two writers never share a temporary name.
* Anything else that already exists is **written through**, never replaced: ``/dev/stdout``,
  ``/dev/null``, a FIFO, a terminal, or a symbolic link (the link stays, its target receives the data).
  Renaming over ``/dev/null`` as root once replaced the machine's null device with a regular file.
* A folder, an unwritable place or a full disk is a :class:`~hwcompress.errors.UserError` naming the
  path, and no temporary file stays behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from hwcompress.errors import UserError

Writer = Callable[[Path], None]


def check_writable(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Refuse, before any work is done, a path that :func:`write_atomic` could not write.

    Returns:
        The path. Raises :class:`UserError` for a folder, or a parent that exists but is not a
        writable folder.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    parent = _parent(path)
    if parent.exists() and not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: {parent} is not a folder")
    if path.exists() and not path.is_file():
        return path  # written through (a device, a FIFO, a link to one)
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: no permission to write in {parent}")
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Writer) -> Path:
    """Write ``data`` to ``path`` following the module's rules.

    Args:
        path: the destination.
        data: the bytes or text to write, or ``writer(tmp_path)`` that writes the file itself (for
            ``torch.save``, ONNX export, matplotlib).

    Returns:
        ``path``.

    Raises:
        UserError: ``path`` is a folder, cannot be written, or the disk is full (one line naming it).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a folder; give a file name")
        if path.is_symlink() or (path.exists() and not stat.S_ISREG(path.stat().st_mode)):
            _write_through(path, data)
            return path
        parent = _parent(path)
        parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        try:
            # mkstemp makes the file private (0600); the result gets the mode a plain open() would give
            # it, or keeps the mode of the file it replaces.
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
            if callable(data):
                os.close(handle)
                data(tmp)
            else:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except UserError:
        raise
    except OSError as error:
        raise UserError(f"cannot write {path}: {_reason(error)}") from None
    return path


def write_json(document: Any, path: str | os.PathLike[str], rows: bool = False) -> Path:
    """Write ``document`` as strict JSON (see :func:`dumps`; ``rows``: :func:`dumps_rows`) with
    :func:`write_atomic`."""
    return write_atomic(path, (dumps_rows(document) if rows else dumps(document)) + "\n")


def dumps(document: Any) -> str:
    """Strict JSON: NaN and infinities become ``null`` (strict parsers reject bare ``NaN``), paths and
    arrays their plain forms, objects with ``to_dict()`` their dictionaries, anything else its ``str``."""
    return json.dumps(_finite(document), indent=2, default=_default, allow_nan=False)


#: An object or list whose one-line form is at most this long is written on one line by :func:`dumps_rows`.
ROW_CHARS = 400


def dumps_rows(document: Any) -> str:
    """:func:`dumps`, with every object or list that fits in :data:`ROW_CHARS` characters on one line: a
    LUT's entries and a calibration's layer rows one per line, instead of one value per line (a
    three-network table at 96 px: 0.5 of the size, and a diff shows which entries changed)."""
    return _rows(json.loads(json.dumps(_finite(document), default=_default, allow_nan=False)), 0)


def _rows(value: Any, level: int) -> str:
    line = json.dumps(value, separators=(", ", ": "))
    if not isinstance(value, (dict, list)) or len(line) <= ROW_CHARS or not value:
        return line
    inner = "  " * (level + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {_rows(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    return "[\n" + ",\n".join(inner + _rows(item, level + 1) for item in value) + "\n" + "  " * level + "]"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    if hasattr(value, "to_dict"):
        return _finite(value.to_dict())
    return str(value)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _write_through(path: Path, data: bytes | str | Writer) -> None:
    if callable(data):
        with tempfile.TemporaryDirectory(prefix="hwcompress-write-") as folder:
            tmp = Path(folder) / path.name
            data(tmp)
            data = tmp.read_bytes()
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open(path, "wb") as stream:
        stream.write(payload)


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    if error.errno == errno.EROFS:
        return "the file system is read-only"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return error.strerror or str(error)
