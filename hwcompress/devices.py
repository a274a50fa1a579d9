"""The device catalog: TOML descriptors of target devices, from the package, the user and plugins.

A descriptor is data: a name and aliases, the profiler that measures on the device itself, how to tell
whether this machine *is* that device, default measurement settings, the channel multiple the search
rounds to, and where a recorded latency lookup table (LUT) lives for use away from the device.

Sources, later ones may not reuse an earlier name:
1. the packaged catalog (``devices/`` in the repository, ``hwcompress/_data/devices`` in the wheel);
2. plugins, through the ``register_devices`` hook;
3. ``$HWCOMPRESS_DEVICE_PATH`` (folders, ``os.pathsep``-separated) and the user's config folder
   (``hwcompress config-dir``/devices), whose files may also override a packaged device of the same name;
4. ``--device-file FILE`` on the command line.
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

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
    import platformdirs

    return Path(os.environ.get("HWCOMPRESS_CONFIG_DIR") or platformdirs.user_config_dir("hwcompress"))


def user_data_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("HWCOMPRESS_DATA_DIR") or platformdirs.user_data_dir("hwcompress"))


def packaged_devices_dir() -> Path:
    """Where the packaged descriptors are: inside the wheel, else the repository's ``devices/``."""
    packaged = resources.files("hwcompress") / "_data" / "devices"
    if packaged.is_dir():
        return Path(str(packaged))
    # Editable installs and source checkouts read the repository folder (hatchling's force-include
    # copies land in site-packages, which an editable import never looks at).
    return Path(__file__).resolve().parents[1] / "devices"


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


class Catalog:
    """Devices by name, with alias lookup."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceDescriptor] = {}
        self._aliases: dict[str, str] = {}

    def add(self, descriptor: DeviceDescriptor, *, replace: bool = False) -> None:
        names = [descriptor.name, *descriptor.aliases]
        if replace and descriptor.name in self.devices:
            self.remove(descriptor.name)
        for name in names:
            owner = self._aliases.get(name)
            if owner is not None:
                raise UserError(
                    f"device name {name!r} from {descriptor.source or descriptor.name} is already used by {owner!r}"
                )
        self.devices[descriptor.name] = descriptor
        for name in names:
            self._aliases[name] = descriptor.name

    def remove(self, name: str) -> None:
        old = self.devices.pop(name)
        for alias in [old.name, *old.aliases]:
            self._aliases.pop(alias, None)

    def get(self, name: str) -> DeviceDescriptor:
        key = self._aliases.get(name) or self._aliases.get(name.lower())
        if key is None:
            known = ", ".join(sorted(self.devices))
            raise UserError(f"unknown device {name!r}; known devices: {known} (add one with --device-file FILE)")
        return self.devices[key]

    def __iter__(self):
        return iter(self.devices.values())


def _user_folders() -> list[Path]:
    folders = [Path(p) for p in os.environ.get("HWCOMPRESS_DEVICE_PATH", "").split(os.pathsep) if p]
    folders.append(user_config_dir() / "devices")
    return folders


def _build_catalog() -> Catalog:
    from hwcompress import plugins

    catalog = Catalog()
    for path in sorted(packaged_devices_dir().glob("*.toml")):
        catalog.add(load_descriptor(path))

    def register(item: DeviceDescriptor | str | os.PathLike[str]) -> None:
        descriptor = item if isinstance(item, DeviceDescriptor) else load_descriptor(item)
        catalog.add(descriptor)
        plugins.note_provided("devices", descriptor.name)

    plugins.call_register_hook("register_devices", register)
    for folder in _user_folders():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                catalog.add(load_descriptor(path), replace=True)
    return catalog


def catalog() -> Catalog:
    """The device catalog (built once per process, on first use)."""
    from hwcompress import plugins

    return plugins.cached_registry("devices", _build_catalog)


def resolve_device(name: str | None = None, device_file: str | None = None) -> DeviceDescriptor:
    """Find a device by name or alias, or read it from ``device_file``. Defaults to ``cpu``."""
    if device_file:
        descriptor = load_descriptor(device_file)
        if name and name not in (descriptor.name, *descriptor.aliases):
            raise UserError(f"--device {name!r} does not match {device_file} (which describes {descriptor.name!r})")
        return descriptor
    return catalog().get(name or "cpu")
