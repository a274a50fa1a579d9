"""The core's own plugin: what ships inside ``hwcompress`` itself, registered like a third party's.

Registered by name (not through an entry point), so it works with every entry point disabled and
cannot be shadowed by another distribution. The agents are registered as import strings: listing
them (``hwcompress plugins``) imports no PyTorch.
"""

from __future__ import annotations

from hwcompress import hookimpl

#: The built-in search agents, by name (see docs/search.md).
BUILTIN_AGENTS = {
    "amc": "hwcompress.search.amc.agents:AMCAgent",
    "uniform": "hwcompress.search.amc.agents:UniformAgent",
    "random": "hwcompress.search.amc.agents:RandomAgent",
    "n2n": "hwcompress.search.n2n.agent:N2NAgent",
}


@hookimpl
def register_agents(register):
    for name, factory in BUILTIN_AGENTS.items():
        register(name, factory)
