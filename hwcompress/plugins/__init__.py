"""Plugins: the hook specifications, the pluggy manager that loads plugins, and their registries.

Plugin authors need :data:`hwcompress.hookimpl` and the hooks in :mod:`hwcompress.plugins.hookspecs`
(documented in docs/plugins.md). The core reads the registries: :data:`profilers` and :data:`agents`
here, the device catalog in :mod:`hwcompress.devices`.
"""

from hwcompress.plugins.manager import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginWarning,
    call_hook,
    get_plugin_manager,
    plugin_infos,
    reset,
)
from hwcompress.plugins.registry import Registry, agents, profilers

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginWarning",
    "Registry",
    "agents",
    "call_hook",
    "get_plugin_manager",
    "plugin_infos",
    "profilers",
    "reset",
]
