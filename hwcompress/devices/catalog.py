"""The device catalog: descriptors from the package, plugins and the user, by name and alias.

Sources, later ones may not reuse an earlier name:
1. the packaged catalog (``devices/`` in the repository, ``hwcompress/_data/devices`` in the wheel);
2. plugins, through the ``register_devices`` hook;
3. ``$HWCOMPRESS_DEVICE_PATH`` (folders, ``os.pathsep``-separated) and the user's device folder
   (``$HWCOMPRESS_CONFIG_DIR/devices``, else the platform's user config folder; ``hwcompress devices``
   prints it), whose files may also override a packaged device of the same name;
4. ``--device-file FILE`` on the command line.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hwcompress.devices.descriptor import DeviceDescriptor, load_descriptor, user_config_dir
from hwcompress.errors import UserError
from hwcompress.plugins import manager


def packaged_devices_dir() -> Path:
    """Where the packaged descriptors are: inside the wheel, else the repository's ``devices/``."""
    packaged = resources.files("hwcompress") / "_data" / "devices"
    if packaged.is_dir():
        return Path(str(packaged))
    # Editable installs and source checkouts read the repository folder (hatchling's force-include
    # copies land in site-packages, which an editable import never looks at).
    return Path(__file__).resolve().parents[2] / "devices"


def user_devices_dir() -> Path:
    """The user's device folder: TOML files there join (or override) the catalog."""
    return user_config_dir() / "devices"


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
    folders.append(user_devices_dir())
    return folders


def _build_catalog() -> Catalog:
    catalog = Catalog()
    for path in sorted(packaged_devices_dir().glob("*.toml")):
        catalog.add(load_descriptor(path))

    def register(item: DeviceDescriptor | str | os.PathLike[str]) -> None:
        descriptor = item if isinstance(item, DeviceDescriptor) else load_descriptor(item)
        catalog.add(descriptor)
        manager.note_provided("devices", descriptor.name)

    manager.call_hook("register_devices", register=register)
    for folder in _user_folders():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                catalog.add(load_descriptor(path), replace=True)
    return catalog


_catalog: Catalog | None = None


def _forget() -> None:
    global _catalog
    _catalog = None


manager.on_reset(_forget)


def catalog() -> Catalog:
    """The device catalog (built once per process, on first use)."""
    global _catalog
    if _catalog is None:
        _catalog = _build_catalog()
    return _catalog


def resolve_device(name: str | None = None, device_file: str | None = None) -> DeviceDescriptor:
    """Find a device by name or alias, or read it from ``device_file``. Defaults to ``cpu``."""
    if device_file:
        descriptor = load_descriptor(device_file)
        if name and name not in (descriptor.name, *descriptor.aliases):
            raise UserError(f"--device {name!r} does not match {device_file} (which describes {descriptor.name!r})")
        descriptor.named_by = f"--device-file {device_file}"
        return descriptor
    return catalog().get(name or "cpu")
