"""A device descriptor: what the core knows about one target device, read from TOML.

A descriptor is data: a name and aliases, the profiler that measures on the device itself (and the
fallbacks to try when it is missing), how to tell whether this machine *is* that device, default
measurement settings, the channel multiple the search rounds to, and where a recorded latency lookup
table (LUT) lives for use away from the device. See the files in the repository's ``devices/`` folder.
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from hwcompress.errors import UserError

SETTING_KEYS = {"runs", "warmup", "threads", "precision", "per_layer", "options"}


@dataclass
class DeviceDescriptor:
    """One target device. See ``devices/*.toml`` for the file format."""

    name: str
    profiler: str
    description: str = ""
    aliases: list[str] = field(default_factory=list)
    detect: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    channel_multiple: int = 8
    lut: str | None = None
    record_hint: str = ""
    source: str = ""
    # Profilers to measure with, in order, when ``profiler`` is unavailable here (nvidia-gpu: ["cuda"]).
    fallback_profilers: list[str] = field(default_factory=list)

    @property
    def profiler_names(self) -> list[str]:
        """The profiler, then its fallbacks: the order a measurement tries them in."""
        return [self.profiler, *[name for name in self.fallback_profilers if name != self.profiler]]

    @property
    def folder(self) -> Path | None:
        return Path(self.source).parent if self.source and Path(self.source).exists() else None

    def is_local(self) -> tuple[bool, str]:
        """Whether this machine is the device (so its profiler can measure here), and why not."""
        rule = self.detect
        if rule.get("always"):
            return True, ""
        if rule.get("never"):
            return False, f"{self.name} is never measured from here"
        if "file" in rule:
            path = Path(rule["file"])
            if not path.exists():
                return False, f"not running on a {self.name} ({path} not found)"
            needle = rule.get("contains")
            if needle:
                try:
                    text = path.read_bytes().decode("utf-8", "replace")
                except OSError:
                    text = ""
                if needle not in text:
                    return False, f"not running on a {self.name} ({path} does not mention {needle!r})"
            return True, ""
        if rule.get("nvidia_gpu"):
            return True, ""  # the profiler's own available() decides (driver, GPU visible)
        return True, ""

    def lut_path(self) -> Path | None:
        """The configured LUT file, resolved against the descriptor's folder and the user's data folder."""
        if not self.lut:
            return None
        candidate = Path(os.path.expanduser(self.lut))
        if candidate.is_absolute():
            return candidate
        for base in filter(None, [self.folder, user_data_dir() / "luts"]):
            if (base / candidate).exists():
                return base / candidate
        return (user_data_dir() / "luts" / candidate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            "profiler": self.profiler,
            "fallback_profilers": list(self.fallback_profilers),
            "channel_multiple": self.channel_multiple,
            "settings": dict(self.settings),
            "machine": platform.machine(),
        }


def user_config_dir() -> Path:
    """The user's hwcompress config folder (``$HWCOMPRESS_CONFIG_DIR``, else the platform's)."""
    return Path(os.environ.get("HWCOMPRESS_CONFIG_DIR") or platformdirs.user_config_dir("hwcompress"))


def user_data_dir() -> Path:
    """The user's hwcompress data folder (``$HWCOMPRESS_DATA_DIR``, else the platform's): cached LUTs."""
    return Path(os.environ.get("HWCOMPRESS_DATA_DIR") or platformdirs.user_data_dir("hwcompress"))


def load_descriptor(path: str | os.PathLike[str]) -> DeviceDescriptor:
    """Read one device TOML file.

    Raises:
        UserError: unreadable file, bad TOML, or missing/invalid fields (one line naming the file).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"device file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read device file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"device file {path} is not valid TOML: {error}") from None
    return descriptor_from_dict(data, source=str(path))


def descriptor_from_dict(data: dict[str, Any], source: str = "") -> DeviceDescriptor:
    """Validate a parsed descriptor."""
    where = f"device file {source}" if source else "device descriptor"
    for key in ("name", "profiler"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"{where} needs a string field {key!r}")
    settings = data.get("settings", {})
    unknown = set(settings) - SETTING_KEYS
    if unknown:
        raise UserError(f"{where}: unknown settings {sorted(unknown)} (known: {sorted(SETTING_KEYS)})")
    multiple = data.get("channel_multiple", 8)
    if not isinstance(multiple, int) or multiple < 1:
        raise UserError(f"{where}: channel_multiple must be a positive integer")
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: aliases must be a list of strings")
    fallbacks = data.get("fallback_profilers", [])
    if not isinstance(fallbacks, list) or not all(isinstance(p, str) and p for p in fallbacks):
        raise UserError(f"{where}: fallback_profilers must be a list of profiler names")
    return DeviceDescriptor(
        name=data["name"],
        profiler=data["profiler"],
        description=data.get("description", ""),
        aliases=aliases,
        detect=dict(data.get("detect", {})),
        settings=dict(settings),
        channel_multiple=multiple,
        lut=data.get("lut"),
        record_hint=data.get("record_hint", ""),
        source=source,
        fallback_profilers=list(fallbacks),
    )


