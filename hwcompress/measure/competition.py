"""How much other processes on this machine got in the way while something was measured here.

A latency measured while other processes compete for the CPU it runs on is slower and more spread than on
a quiet machine, and nothing in the timings themselves says so. Linux says it directly: each thread's
``/proc/self/task/*/schedstat`` counts the time it spent runnable but waiting for a CPU that someone else
held. Over a measurement, that waiting against the wall time is the share of it this process lost
(``waited_share``), which is what slows a measurement. On a 2-vCPU EPYC VM (``bench/busy_machine.py``) a
busy loop sharing the measuring core made resnet18 at 64 px 2.6x slower and the process waited half the
time; the same loop or a memory-bandwidth hog on the other core left the latency within 1% and the
waiting near zero. So the note keys on waiting; the cores other processes kept busy (``/proc/stat``'s
busy time, a VM's steal included, less this process's own) are recorded beside it as context
(``other_cpu_cores``). Neither sees what other tenants of a VM's host take of its caches and memory
bandwidth; elsewhere than Linux nothing is read and nothing is claimed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

#: A measurement whose threads waited for a CPU this share of its wall time or more gets a note.
WAITED = 0.05
#: ``other_cpu_cores`` over intervals shorter than this (seconds) is not read: at 100 ticks a second the
#: counts are too coarse. (The waiting is counted in nanoseconds, at any length.)
MIN_SECONDS = 0.2

_PROC_STAT = Path("/proc/stat")
_SELF_STAT = Path("/proc/self/stat")
_TASKS = Path("/proc/self/task")


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


def _waiting_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable, waiting for a CPU (None: not readable here)."""
    try:
        tasks = list(_TASKS.iterdir())
    except OSError:
        return None
    total, read = 0, False
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
            read = True
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile, or no schedstat
            continue
    return total if read else None


@dataclass(frozen=True)
class Competition:
    """What other processes took of this machine's CPUs over an interval.

    Attributes:
        waited_share: the time this process's threads spent waiting for a CPU others held, over the wall
            time (None: not known here).
        other_cores: cores other processes kept busy on average (None: not known here, or the interval was
            shorter than :data:`MIN_SECONDS`).
        cores: the machine's logical cores.
        seconds: the interval's length.
    """

    waited_share: float | None
    other_cores: float | None
    cores: int
    seconds: float

    @property
    def busy(self) -> bool:
        """Whether the measurement waited :data:`WAITED` of its time or more for a CPU."""
        return self.waited_share is not None and self.waited_share >= WAITED

    def note(self, what: str = "this was measured") -> str | None:
        """One sentence when :attr:`busy`, else None."""
        if not self.busy:
            return None
        others = f", other processes keeping {self.other_cores:.1f} of its {self.cores} cores busy" if self.other_cores is not None else ""
        return (f"while {what}, this process waited {self.waited_share:.0%} of the time for a CPU held by others{others}: "
                "the latency is likely higher and more spread than on a quiet machine (close them, or measure again "
                "when they are done)")

    def to_dict(self) -> dict[str, Any]:
        return {"waited_share": None if self.waited_share is None else round(self.waited_share, 4),
                "other_cpu_cores": None if self.other_cores is None else round(self.other_cores, 3),
                "cores": self.cores, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Competition":
        """The record :meth:`to_dict` wrote (a measurement's ``competition``)."""
        return cls(data.get("waited_share"), data.get("other_cpu_cores"), int(data.get("cores") or 1),
                   float(data.get("seconds") or 0.0))

    @classmethod
    def combined(cls, parts: Sequence["Competition"]) -> "Competition":
        """Several intervals as one (the halves of a measurement, without the pause between them): their
        seconds added, each share weighted by the seconds of the parts that know it."""

        def weighted(values: list[tuple[float | None, float]]) -> float | None:
            known = [(value, seconds) for value, seconds in values if value is not None]
            total = sum(seconds for _, seconds in known)
            return sum(value * seconds for value, seconds in known) / total if total > 0 else None

        return cls(weighted([(p.waited_share, p.seconds) for p in parts]), weighted([(p.other_cores, p.seconds) for p in parts]),
                   parts[0].cores, sum(p.seconds for p in parts))


class watch:
    """``with watch() as w: ...`` then ``w.result``: a :class:`Competition` over the block; None when ``here``
    is false (a device reached over ssh or adb, or one predicted from a LUT: this machine's counts say
    nothing of it)."""

    def __init__(self, here: bool = True) -> None:
        self.here = here
        self.result: Competition | None = None

    def __enter__(self) -> "watch":
        if not self.here:
            return self
        self._start = _ticks()
        self._waited = _waiting_ns()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.here:
            return
        seconds = time.perf_counter() - self._t0
        waited_end, end = _waiting_ns(), _ticks()
        cores = (end or self._start or (0, 0, 0, os.cpu_count() or 1))[3]
        other = waited = None
        if self._start is not None and end is not None and seconds >= MIN_SECONDS:
            total, busy, mine = (e - s for e, s in zip(end[:3], self._start[:3]))
            if total > 0:
                other = max(busy - mine, 0) / (total / cores)
        if self._waited is not None and waited_end is not None and seconds > 0:
            waited = max(waited_end - self._waited, 0) / 1e9 / seconds
        self.result = Competition(waited, other, cores, seconds)
