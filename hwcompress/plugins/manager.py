"""Loading plugins and calling their hooks, one plugin at a time, through pluggy.

The core's own implementations (:mod:`hwcompress.plugins.builtin`) are registered by name, like pytest's
default plugins, so they work with every entry point disabled and cannot be shadowed. Everything else
arrives through the ``hwcompress`` entry-point group, the ONNX Runtime and TensorRT profilers included.
Loading is defensive: a plugin that fails to import (``SystemExit`` included) or whose hook raises is
recorded (``hwcompress plugins`` shows it, and a warning is emitted) and skipped, never fatal.

Hooks are called through pluggy for one plugin at a time (:meth:`pluggy.PluginManager.subset_hook_caller`),
so a failure is attributed to the plugin that raised it, and hookspec arguments can be appended later:
pluggy hands each implementation only the arguments it names.

Environment:
    HWCOMPRESS_PLUGINS: comma-separated entry-point names to load; every other one is skipped.
    HWCOMPRESS_DISABLE_PLUGINS: comma-separated entry-point names never to load.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from hwcompress import __version__
from hwcompress.plugins import hookspecs

ENTRY_POINT_GROUP = "hwcompress"
BUILTIN_PLUGINS = ("hwcompress.plugins.builtin",)


@dataclass
class PluginInfo:
    """What ``hwcompress plugins`` reports about one plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool = False
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    def label(self) -> str:
        """How messages name the plugin: ``plugin 'x' (distribution y 1.0)``."""
        if self.builtin:
            return "hwcompress (built-in)"
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


class PluginWarning(UserWarning):
    """A plugin was skipped because it is broken."""


_manager: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_current: str | None = None
_resets: list[Callable[[], None]] = []


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def record_broken(info: PluginInfo, error: BaseException | str) -> None:
    """Mark ``info`` broken with ``error`` and warn once."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    info.error = text if info.error is None else f"{info.error}; {text}"
    warnings.warn(f"hwcompress plugin {info.name!r} skipped: {text}", PluginWarning, stacklevel=3)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    global _manager
    if _manager is not None:
        return _manager
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        _infos[module_name] = PluginInfo(module_name, "hwcompress", __version__, builtin=True)

    only = _env_names("HWCOMPRESS_PLUGINS")
    disabled = _env_names("HWCOMPRESS_DISABLE_PLUGINS") or set()
    seen: dict[str, str] = {}
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        if (only is not None and entry_point.name not in only) or entry_point.name in disabled:
            continue
        dist = getattr(entry_point, "dist", None)
        dist_name = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        info = PluginInfo(entry_point.name, dist_name, version)
        if entry_point.name in seen:
            # pluggy would silently drop one of two plugins sharing a name; say so instead.
            _infos[f"{entry_point.name} ({dist_name})"] = info
            record_broken(info, f"entry-point name already used by distribution {seen[entry_point.name]!r}")
            continue
        seen[entry_point.name] = dist_name
        _infos[entry_point.name] = info
        try:
            pm.register(entry_point.load(), name=entry_point.name)
        except (Exception, SystemExit) as error:  # a broken plugin must never break the tool
            record_broken(info, error)
    _manager = pm
    return pm


def call_hook(hook_name: str, **kwargs: Any) -> None:
    """Call ``hook_name`` on every plugin, one plugin at a time, isolating each plugin's failures.

    The plugins are called in registration order (built-in first). While one runs,
    :func:`current_plugin` names it, so a registry can attribute what it receives. A plugin whose
    implementation raises is marked broken and skipped; the others still run.
    """
    global _current
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    everyone = [impl.plugin for impl in hook.get_hookimpls()]
    for impl in reversed(hook.get_hookimpls()):  # pluggy lists the last registered first
        others = [plugin for plugin in everyone if plugin is not impl.plugin]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
        info = _infos.get(impl.plugin_name)
        _current = impl.plugin_name
        try:
            caller(**kwargs)
        except (Exception, SystemExit) as error:
            if info is None or info.builtin:
                raise
            record_broken(info, f"{hook_name} failed: {type(error).__name__}: {error}")
        finally:
            _current = None


def current_plugin() -> str | None:
    """The plugin whose hook is running now (for attributing registrations), or None."""
    return _current


def plugin_info(name: str | None) -> PluginInfo | None:
    """The record of plugin ``name`` (as :func:`current_plugin` returns it)."""
    return _infos.get(name) if name else None


def note_provided(kind: str, name: str) -> None:
    """Record that the running plugin provided ``name`` of ``kind`` (shown by ``hwcompress plugins``)."""
    if _current is not None and _current in _infos:
        _infos[_current].provides.setdefault(kind, []).append(name)


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen so far, built-in first, with what it provides and any error.

    What a plugin provides is known once the registries that ask for it are built; the ``plugins``
    command builds them all first.
    """
    get_plugin_manager()
    return sorted(_infos.values(), key=lambda info: (not info.builtin, info.name))


def on_reset(callback: Callable[[], None]) -> None:
    """Have :func:`reset` call ``callback`` too (registries register their own clearing)."""
    _resets.append(callback)


def reset() -> None:
    """Forget the plugin manager and every registry (tests use this for a fresh start)."""
    global _manager
    _manager = None
    _infos.clear()
    for callback in _resets:
        callback()
