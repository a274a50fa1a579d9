"""The plugin contract: every hook a plugin may implement, what it receives and when it is called.

Plugins are found through the ``hwcompress`` entry-point group (one entry point per distribution,
named after the distribution: pluggy silently drops a second plugin of the same name) and registered
with a pluggy ``PluginManager("hwcompress")``. Implement a hook with :data:`hwcompress.hookimpl`::

    from hwcompress import hookimpl

    @hookimpl
    def register_profilers(register):
        register(MyBoardProfiler())

The rules every hook shares:

* Each ``register_*`` hook receives a ``register`` callback and is called **once per process**, the first
  time its registry is needed (never at import time), so a plugin adds any number of objects and
  listing plugins stays cheap.
* Hooks are called through pluggy **one plugin at a time**, built-in first, then in entry-point name
  order. None is ``firstresult``; return values are ignored.
* A plugin whose hook raises, or whose module fails to import (``SystemExit`` included), is reported by
  ``hwcompress plugins`` and as a warning, and skipped; the tool keeps working. A name already
  registered is such a failure, reported against the plugin that registered it second.
* New arguments are only ever appended, and pluggy hands each implementation only the arguments it
  names, so a plugin written against this version keeps working.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("hwcompress")


@hookspec
def register_profilers(register: Callable[[Any], None]) -> None:
    """Add latency profilers.

    Call ``register(profiler)`` for each profiler: an object following
    :class:`hwcompress.measure.contract.Profiler` (a ``name`` and ``description``, ``available()``,
    ``facts(settings)``, ``measure(artifact, settings)``, optionally ``measure_unit``). Device
    descriptors name it in ``profiler = "..."``. Keep ``available()`` cheap and the runtime's import
    inside the methods: ``hwcompress devices`` asks every profiler whether it can run here. See
    :mod:`hwcompress.measure.contract` for what ``measure`` receives and returns, and how to refuse a
    request (:class:`hwcompress.errors.UserError`).
    """


@hookspec
def register_devices(register: Callable[..., None]) -> None:
    """Add target devices.

    Call ``register(descriptor)`` with a :class:`hwcompress.devices.DeviceDescriptor`, or
    ``register(path)`` with the path of a device TOML file (the format of the repository's ``devices/``
    files, docs/devices.md). Names and aliases must be unique across the catalog; the user's own
    device folder may override a packaged or plugin device of the same name.
    """


@hookspec
def register_agents(register: Callable[[str, Any], None]) -> None:
    """Add search agents.

    Call ``register(name, factory)``: ``factory(**options)`` returns an agent following
    :class:`hwcompress.search.agent.Agent` (``search(context)``, ``state_dict()``,
    ``load_state_dict(state)``), with ``options`` from ``--agent-option KEY=VALUE`` (raise
    ``TypeError``/``ValueError`` or :class:`~hwcompress.errors.UserError` for one it does not take: the
    user is told before anything is measured). ``factory`` may be the string
    ``"package.module:attribute"``, imported only when the agent is used. ``hwcompress search --agent
    NAME`` and ``hwcompress.compress(..., agent=NAME)`` then use it like a built-in one.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``hwcompress`` command line.

    Called when the command line starts. ``cli`` is the top-level ``click.Group``; decorate new commands
    with ``@cli.command()``. Keep imports inside the command body so ``hwcompress --help`` stays fast.
    """
