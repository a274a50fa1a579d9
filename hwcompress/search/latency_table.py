"""The latency side of the search's cost model: a device LUT, loaded or recorded on demand.

- ``--lut FILE`` (or the device descriptor's ``lut``) loads a table recorded on the device and checks
  that it describes this device and these settings;
- on a local device without one, the teacher's layers are recorded here over the channel grid the
  search will visit and cached (:func:`hwcompress.lut.ensure_lut`), so later searches only load.

Prediction goes through :meth:`hwcompress.lut.LatencyTable.predict`, which sums per-layer entries
(interpolated between recorded channel counts) and applies the calibration recorded with the table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from hwcompress.analysis import LayerSpec


class SearchTable:
    """A :class:`~hwcompress.lut.LatencyTable` seen as ``rows -> ms`` for :class:`~hwcompress.search.cost.CostModel`."""

    def __init__(self, table: Any, origin: str) -> None:
        self.table = table
        self.origin = origin

    def latency_of(self, rows: Sequence[LayerSpec]) -> float:
        return float(self.table.predict(list(rows)).total_ms)

    def describe(self) -> str:
        return f"{self.origin} ({len(self.table)} entries)"


def table_for_search(
    teacher: Any,
    input_shape: tuple[int, ...],
    layers: Sequence[LayerSpec],
    groups: Sequence[Any],
    descriptor: Any,
    profiler: Any | None,
    settings: Any,
    *,
    lut_path: str | None = None,
    multiple: int = 8,
    lbound: float = 0.2,
    log: Callable[[str], None] = print,
) -> SearchTable:
    """The table the search predicts latency from; see the module docstring for where it comes from."""
    from hwcompress import lut
    from hwcompress.errors import UserError

    path = Path(lut_path) if lut_path else None
    if path is None and profiler is None:
        configured = descriptor.lut_path()
        if configured is None or not configured.exists():
            raise UserError(f"no LUT for {descriptor.name}; pass --lut FILE recorded on the device")
        path = configured
    if path is not None:
        table = lut.LatencyTable.load(path)
        local_facts = profiler.facts(settings) if profiler is not None else None
        for note in table.check_request(descriptor, settings, int(input_shape[0]), local_facts):
            log(f"note: {note}")
        return SearchTable(table, f"LUT {path}")
    # Per-entry timings need fewer runs than a headline number: thousands of entries, medians of 30.
    recording = dataclasses.replace(settings, runs=min(int(settings.runs), 30), per_layer=False)
    cached = lut.default_lut_path(descriptor, recording, int(input_shape[0]))
    if cached.exists():
        log(f"latency LUT for {descriptor.name}: {cached} (recording only what this model adds)")
    else:
        log(f"recording the latency LUT of the teacher's layers on {descriptor.name} (first use; cached at {cached})")
    table = lut.ensure_lut(teacher, tuple(input_shape), descriptor, recording, profiler=profiler, min_ratio=lbound)
    return SearchTable(table, f"LUT measured here on {descriptor.name}, cached at {table.where()}")
