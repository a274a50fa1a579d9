"""One generic registry: named objects contributed by plugins through a ``register_*`` hook.

Built lazily, the first time something asks (never at import time); a duplicate name is an error
reported against the plugin that registered it, which is then skipped like any broken plugin. Each
entry remembers the plugin that provided it, so a failure later on can name that plugin.

Factories may be registered as ``"package.module:attribute"`` strings, resolved on first use, so that
listing what is installed imports no heavy module (timm's registry does the same with entry points).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from hwcompress.plugins import manager

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    """One registered object and the plugin it came from."""

    name: str
    value: T | str
    plugin: str | None

    def resolve(self) -> T:
        """The object, importing it first when it was registered as ``"module:attribute"``."""
        if isinstance(self.value, str):
            module, _, attribute = self.value.partition(":")
            self.value = getattr(importlib.import_module(module), attribute)
        return self.value  # type: ignore[return-value]

    def origin(self) -> str:
        """``plugin 'x' (distribution y 1.0)``, or ``hwcompress (built-in)``."""
        info = manager.plugin_info(self.plugin)
        return info.label() if info is not None else "hwcompress"


class Registry(Generic[T]):
    """Objects of one kind by name, collected from every plugin's ``hook``.

    Args:
        kind: what ``hwcompress plugins`` calls them (``profilers``, ``agents``).
        hook: the hook that fills it (``register_profilers``).
        named: how to call ``register``: ``True`` for ``register(name, obj)``, ``False`` for
            ``register(obj)`` where ``obj.name`` is the name.
    """

    def __init__(self, kind: str, hook: str, *, named: bool) -> None:
        self.kind, self.hook, self.named = kind, hook, named
        self._entries: dict[str, Entry[T]] | None = None
        manager.on_reset(self.clear)

    def clear(self) -> None:
        self._entries = None

    def _build(self) -> dict[str, Entry[T]]:
        if self._entries is None:
            found: dict[str, Entry[T]] = {}

            def register(*args: Any) -> None:
                if self.named:
                    if len(args) != 2 or not isinstance(args[0], str) or not args[0]:
                        raise ValueError(f"register a {self.kind[:-1]} as register(name, factory)")
                    name, value = args
                else:
                    if len(args) != 1:
                        raise ValueError(f"register a {self.kind[:-1]} as register(obj)")
                    value = args[0]
                    name = getattr(value, "name", None)
                    if not isinstance(name, str) or not name:
                        raise ValueError(f"{self.kind[:-1]} {value!r} has no name")
                if name in found:
                    raise ValueError(f"a {self.kind[:-1]} named {name!r} is already registered by {found[name].origin()}")
                found[name] = Entry(name, value, manager.current_plugin())
                manager.note_provided(self.kind, name)

            self._entries = found  # visible (empty) while building, so a re-entrant call cannot recurse
            manager.call_hook(self.hook, register=register)
        return self._entries

    def entry(self, name: str) -> Entry[T] | None:
        """The entry registered under ``name``, or None."""
        return self._build().get(name)

    def get(self, name: str) -> T | None:
        """The object registered under ``name`` (resolved), or None."""
        entry = self.entry(name)
        return entry.resolve() if entry is not None else None

    def names(self) -> list[str]:
        return sorted(self._build())

    def __contains__(self, name: object) -> bool:
        return name in self._build()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: Latency profilers (:class:`hwcompress.measure.contract.Profiler`), by ``profiler.name``.
profilers: Registry[Any] = Registry("profilers", "register_profilers", named=False)
#: Search agent factories (:class:`hwcompress.search.agent.Agent`), by name.
agents: Registry[Callable[..., Any]] = Registry("agents", "register_agents", named=True)
