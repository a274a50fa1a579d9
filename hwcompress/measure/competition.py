"""How busy the rest of this machine was while something was measured here.

A latency measured while other processes run is slower and more spread than on a quiet machine (caches,
memory bandwidth and the turbo budget are shared even when a core is free), and nothing in the timings
themselves says so. Linux counts every CPU's time in ``/proc/stat`` and this process's own in
``/proc/self/stat``: what the machine spent busy over an interval less what this process spent is what
the others took, reported as the number of cores they kept busy on average. Reports and LUT recordings
carry it, and a note says when it is enough to matter. Other tenants of a virtual machine's host do not
show here (their share of the host's caches is invisible to the guest); elsewhere than Linux nothing is
read and nothing is claimed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Other processes keeping at least this many cores busy on average while something was measured get a note.
BUSY_CORES = 0.5
#: Intervals shorter than this (seconds) are not judged: at 100 ticks a second the counts are too coarse.
MIN_SECONDS = 0.2

_PROC_STAT = Path("/proc/stat")
_SELF_STAT = Path("/proc/self/stat")


def _ticks() -> tuple[int, int, int, int] | None:
    """(all CPU ticks, busy CPU ticks, this process's ticks, CPUs counted), or None where /proc is not Linux's."""
    try:
        lines = _PROC_STAT.read_text().splitlines()
        fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        own = _SELF_STAT.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        mine = int(own[11]) + int(own[12])  # utime, stime: every thread of this process
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields)
    return total, total - fields[3] - fields[4], mine, max(cpus, 1)


@dataclass(frozen=True)
class Competition:
    """What other processes took of this machine's CPUs over an interval.

    Attributes:
        other_cores: cores they kept busy on average (None: not known here, or the interval was too short).
        cores: the machine's logical cores.
        seconds: the interval's length.
    """

    other_cores: float | None
    cores: int
    seconds: float

    @property
    def busy(self) -> bool:
        return self.other_cores is not None and self.other_cores >= BUSY_CORES

    def note(self, what: str = "this was measured") -> str | None:
        """One sentence when other processes kept :data:`BUSY_CORES` or more busy, else None."""
        if not self.busy:
            return None
        return (f"other processes kept {self.other_cores:.1f} of this machine's {self.cores} cores busy on average while "
                f"{what}: the latency is likely higher and more spread than on a quiet machine (close them, or measure "
                "again when they are done)")

    def to_dict(self) -> dict[str, Any]:
        return {"other_cpu_cores": None if self.other_cores is None else round(self.other_cores, 3),
                "cores": self.cores, "seconds": round(self.seconds, 3)}


class watch:
    """``with watch() as w: ...`` then ``w.result``: a :class:`Competition` over the block."""

    def __enter__(self) -> "watch":
        self.result: Competition | None = None
        self._start = _ticks()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        seconds = time.perf_counter() - self._t0
        end = _ticks()
        cores = (end or self._start or (0, 0, 0, os.cpu_count() or 1))[3]
        other = None
        if self._start is not None and end is not None and seconds >= MIN_SECONDS:
            total, busy, mine = (e - s for e, s in zip(end[:3], self._start[:3]))
            if total > 0:
                other = max(busy - mine, 0) / (total / cores)
        self.result = Competition(other, cores, seconds)
