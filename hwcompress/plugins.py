"""Plugin loading and the registries built from plugin hooks.

The core's own implementations (the LUT profiler, the packaged device catalog, the search agents) are
registered by import, like pytest's default plugins, so they work with every entry point disabled.
Everything else arrives through the ``hwcompress`` entry-point group, the ONNX Runtime and TensorRT
profilers included. Loading is defensive: a plugin that fails to import or whose hook raises is
recorded (``hwcompress plugins`` shows it, and a warning is emitted) and skipped, never fatal.

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

from hwcompress import hookspecs

ENTRY_POINT_GROUP = "hwcompress"
BUILTIN_PLUGINS = ("hwcompress.builtin",)


@dataclass
class PluginInfo:
    """What ``hwcompress plugins`` reports about one plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool = False
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)


class PluginWarning(UserWarning):
    """A plugin was skipped because it is broken."""


_manager: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_registries: dict[str, Any] = {}


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _record_broken(info: PluginInfo, error: BaseException | str) -> None:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    info.error = text if info.error is None else f"{info.error}; {text}"
    warnings.warn(f"hwcompress plugin {info.name!r} skipped: {text}", PluginWarning, stacklevel=3)


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading plugins on first use."""
    global _manager
    if _manager is not None:
        return _manager
    from hwcompress import __version__

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
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
            key = f"{entry_point.name} ({dist_name})"
            _infos[key] = info
            _record_broken(info, f"entry-point name already used by distribution {seen[entry_point.name]!r}")
            continue
        seen[entry_point.name] = dist_name
        _infos[entry_point.name] = info
        try:
            module = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as error:  # a broken plugin must never break the tool
            _record_broken(info, error)
    _manager = pm
    return pm


def call_register_hook(hook_name: str, register: Callable[..., None]) -> None:
    """Call one ``register_*`` hook on every plugin, isolating each plugin's failures.

    Args:
        hook_name: e.g. ``"register_profilers"``.
        register: the callback handed to each implementation. While a plugin's implementation runs,
            :func:`current_plugin` names it, so a registry can attribute what it receives.
    """
    global _current
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        info = _infos.get(impl.plugin_name)
        _current = impl.plugin_name
        try:
            impl.function(**{name: register for name in impl.argnames[:1]})
        except Exception as error:
            if info is None:
                raise
            _record_broken(info, f"{hook_name} failed: {type(error).__name__}: {error}")
        finally:
            _current = None


_current: str | None = None


def current_plugin() -> str | None:
    """The plugin whose hook is running now (for attributing registrations), or None."""
    return _current


def note_provided(kind: str, name: str) -> None:
    """Record that the running plugin provided ``name`` of ``kind`` (shown by ``hwcompress plugins``)."""
    if _current is not None and _current in _infos:
        _infos[_current].provides.setdefault(kind, []).append(name)


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, built-in first, with what it provides and any error."""
    get_plugin_manager()
    # Building the registries fills in what each plugin provides and surfaces hook failures.
    get_profilers()
    from hwcompress import devices

    devices.catalog()
    get_agents()
    return sorted(_infos.values(), key=lambda info: (not info.builtin, info.name))


def get_profilers() -> dict[str, Any]:
    """Every registered profiler by name (built on first call)."""
    if "profilers" not in _registries:
        found: dict[str, Any] = {}

        def register(profiler: Any) -> None:
            name = getattr(profiler, "name", None)
            if not name:
                raise ValueError(f"profiler {profiler!r} has no name")
            if name in found:
                raise ValueError(f"a profiler named {name!r} is already registered")
            found[name] = profiler
            note_provided("profilers", name)

        call_register_hook("register_profilers", register)
        _registries["profilers"] = found
    return _registries["profilers"]


def get_agents() -> dict[str, Callable[..., Any]]:
    """Every registered search agent factory by name (built on first call)."""
    if "agents" not in _registries:
        found: dict[str, Callable[..., Any]] = {}

        def register(name: str, factory: Callable[..., Any]) -> None:
            if name in found:
                raise ValueError(f"an agent named {name!r} is already registered")
            found[name] = factory
            note_provided("agents", name)

        call_register_hook("register_agents", register)
        _registries["agents"] = found
    return _registries["agents"]


def cached_registry(key: str, build: Callable[[], Any]) -> Any:
    """Keep a registry built elsewhere (the device catalog) with the others, so :func:`reset` clears it."""
    if key not in _registries:
        _registries[key] = build()
    return _registries[key]


def reset() -> None:
    """Forget the plugin manager and every registry (tests use this for a fresh start)."""
    global _manager
    _manager = None
    _infos.clear()
    _registries.clear()
