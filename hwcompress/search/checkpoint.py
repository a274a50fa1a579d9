"""The output folder of a search: its lock, its checkpoint, and what ``--resume`` reads back.

* **Lock.** A search holds ``.lock`` (its process id and host) for as long as it runs; a second search
  into the same folder refuses at start, naming the holder. A lock whose process is gone (killed,
  crashed) is stale and taken over, with a note.
* **Checkpoint.** ``checkpoint.pt`` is written atomically after every consistent step of the agent: the
  config, the resolved budget, the teacher's reference measurement, the cost-model anchors, the LUT
  used, the agent's state, the history and the best student so far. ``--resume DIR`` rebuilds the run
  from it without measuring anything again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from hwcompress.errors import UserError
from hwcompress.files import write_atomic

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "hwcompress.checkpoint/2"
LOCK = ".lock"
RESULT = "result.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive use of an output folder for one search (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.note: str | None = None
        self._held = False

    def acquire(self) -> "OutputLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"--out {self.folder} is a file, not a folder; choose a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output folder {self.folder}: {error.strerror or error}") from None
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text(errors="replace").split() if self.path.exists() else []
                pid = int(holder[0]) if holder and holder[0].isdigit() else None
                host = holder[1] if len(holder) > 1 else socket.gethostname()
                if pid is not None and (host != socket.gethostname() or _alive(pid)):
                    raise UserError(f"{self.folder} is in use by another search (process {pid} on {host}); "
                                    f"wait for it or choose another --out (remove {self.path} if that search is gone)") from None
                self.path.unlink(missing_ok=True)
                self.note = f"took over a stale lock in {self.folder} (process {pid} is gone)"
                continue
            except OSError as error:
                raise UserError(f"cannot write in the output folder {self.folder}: {error.strerror or error}") from None
            with os.fdopen(handle, "w") as stream:
                stream.write(me)
            self._held = True
            return self
        raise UserError(f"cannot lock {self.folder}; remove {self.path} and try again")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically."""
    document = {"format": CHECKPOINT_FORMAT, **state}
    write_atomic(folder / CHECKPOINT, lambda tmp: torch.save(document, tmp))


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Read a search's checkpoint (one-line errors for a missing or foreign file)."""
    path = folder / CHECKPOINT
    if not path.exists():
        raise UserError(f"nothing to resume in {folder}: {CHECKPOINT} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a checkpoint this hwcompress can resume (format {found!r}, expected "
                        f"{CHECKPOINT_FORMAT!r}); start a new search")
    return state


#: Files a new search may find in its output folder: its own lock, and a teacher an earlier run trained
#: there (``--train-teacher`` reuses it when its recipe matches and refuses it otherwise, never replacing it).
FRESH_FOLDER_FILES = (LOCK, "teacher.pt")


def check_fresh(folder: Path, resumable: bool = True) -> None:
    """Refuse to start a new search (or re-apply a policy: ``resumable=False``, nothing to resume) in a folder
    that already holds a search, or that holds files hwcompress did not write: student.onnx, summary.md and
    the rest would replace them."""
    if not resumable and (folder / RESULT).exists():
        raise UserError(f"{folder} already holds a result; choose another --out")
    if (folder / RESULT).exists() or (folder / CHECKPOINT).exists():
        raise UserError(f"{folder} already holds a search; pass --resume {folder} to continue it, or choose another --out")
    found = sorted(path.name for path in folder.iterdir() if path.name not in FRESH_FOLDER_FILES)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UserError(f"{folder} is not empty ({shown}) and holds no hwcompress search; choose a new --out (a missing "
                        "or empty folder), so that the student, result.json and the rest replace none of your files")
