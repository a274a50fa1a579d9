"""hwcompress: compress a trained PyTorch network until it meets a latency budget measured on a device.

::

    import hwcompress

    result = hwcompress.compress(model, (train_set, val_set), budget=hwcompress.Budget.latency_ratio(0.6))
    report = hwcompress.profile("resnet18", device="cpu")
    table = hwcompress.compare(["resnet18", "mobilenet_v2"], device="cpu")

The package root stays light on purpose: importing it loads neither torch nor any profiler runtime (a
test proves it), so the command line starts fast and plugins can be listed on machines without the
heavy extras. :func:`compress`, :func:`resume`, :func:`profile` and :func:`compare` load the library
on first use (:mod:`hwcompress.api`); :class:`Budget` and :class:`UserError` are light.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.2.0"

#: Decorator for plugin hook implementations (see :mod:`hwcompress.plugins.hookspecs`).
hookimpl = pluggy.HookimplMarker("hwcompress")

from hwcompress.budget import Budget  # noqa: E402  (light: no torch; after __version__, which it does not need)
from hwcompress.errors import PluginError, UserError  # noqa: E402

_API = ("compress", "resume", "profile", "compare")

__all__ = ["Budget", "PluginError", "UserError", "__version__", "compare", "compress", "hookimpl", "profile", "resume"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from hwcompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'hwcompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
