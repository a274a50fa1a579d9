"""The plugin contract: every hook a plugin may implement.

Plugins are found through the ``hwcompress`` entry-point group (one entry point per distribution, named
after the distribution) and registered with a pluggy ``PluginManager("hwcompress")``. Each ``register_*``
hook receives a ``register`` callback, so a plugin adds any number of objects and the registries are
built only when first asked for (never at import time). All hooks are called for every plugin; none is
``firstresult``. New arguments are only ever appended, and pluggy lets an implementation take a subset
of them, so old plugins keep working.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("hwcompress")


@hookspec
def register_profilers(register: Callable[[Any], None]) -> None:
    """Add latency profilers.

    Called once, the first time the profiler registry is needed. Call ``register(profiler)`` for each
    profiler, an object following :class:`hwcompress.profiler.Profiler` (a ``name`` attribute,
    ``available()``, ``facts()`` and ``measure()``). A second profiler with a name already registered is
    an error reported against the plugin that registered it.
    """


@hookspec
def register_devices(register: Callable[..., None]) -> None:
    """Add target devices.

    Called once, the first time the device catalog is needed. Call ``register(descriptor)`` with a
    :class:`hwcompress.devices.DeviceDescriptor`, or ``register(path)`` with the path of a device TOML
    file (the format of the files in the repository's ``devices/`` folder). Names and aliases must be
    unique across the catalog.
    """


@hookspec
def register_agents(register: Callable[..., None]) -> None:
    """Add search agents.

    Called once, the first time the agent registry is needed. Call ``register(name, factory)`` where
    ``factory(**settings)`` returns an agent object (see :mod:`hwcompress.search`).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``hwcompress`` command line.

    Called when the CLI starts. ``cli`` is the top-level ``click.Group``; decorate new commands with
    ``@cli.command()``. Keep imports inside the command body so ``hwcompress --help`` stays fast.
    """
