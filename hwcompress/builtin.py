"""The core's own plugin: implementations that ship inside ``hwcompress`` itself.

Registered by import (not through an entry point), so they work with every entry point disabled and
cannot be shadowed by a third-party distribution.
"""

from __future__ import annotations

from hwcompress import hookimpl


@hookimpl
def register_profilers(register):
    from hwcompress.lut import LutProfiler

    register(LutProfiler())


@hookimpl
def register_agents(register):
    from hwcompress import search

    for name, factory in search.BUILTIN_AGENTS.items():
        register(name, factory)
