"""hwcompress: compress a trained PyTorch network until it meets a measured latency budget on a device.

The package root stays light on purpose: importing it loads neither torch nor any profiler runtime, so
the command line starts fast and plugins can be listed on machines without the heavy extras.
Everything public lives in the submodules; the few names below are the plugin author's entry points.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations (see :mod:`hwcompress.hookspecs`).
hookimpl = pluggy.HookimplMarker("hwcompress")

__all__ = ["__version__", "hookimpl"]
