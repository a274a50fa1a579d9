"""A budget is a value: what the student must meet, resolved once against the measured teacher.

::

    Budget.latency_ms(15)          # 15 ms, measured on the device (median)
    Budget.latency_ratio(0.6)      # 60% of the teacher's latency measured on the device
    Budget.macs(4e7)               # counted exactly
    Budget.params(3e5)

A latency budget carries a safety ``margin`` (3% by default): the search aims at ``target`` =
``limit * (1 - margin)``, so that the noise of the final measurement does not break it, and a
measured student counts as fitting when it is under ``acceptance`` = ``limit * (1 - margin / 2)``.
A ratio is resolved once, against the teacher's latency measured at the start of the run
(:meth:`Budget.resolve`), and the resolved budget is what a resumed search reuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from hwcompress.errors import UserError

LATENCY = "latency_ms"
MACS = "macs"
PARAMS = "params"
METRICS = (LATENCY, MACS, PARAMS)
DEFAULT_MARGIN = 0.03
_UNITS = {LATENCY: "ms", MACS: "MACs", PARAMS: "parameters"}
_OPTIONS = {LATENCY: "--latency-ms", MACS: "--macs", PARAMS: "--params"}


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{what} must be a finite number (got {value!r})")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """What the student must meet. Build it with the class methods; see the module docstring.

    Attributes:
        metric: ``latency_ms``, ``macs`` or ``params``.
        limit: the budget in the metric's unit; None for a latency ratio not resolved yet.
        ratio: for :meth:`latency_ratio`, the fraction of the teacher's latency.
        margin: the fraction a latency search aims below ``limit`` (0 for counted metrics).
        reference: the teacher's value a ratio was resolved against.
    """

    metric: str
    limit: float | None
    ratio: float | None = None
    margin: float = 0.0
    reference: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"unknown budget metric {self.metric!r}; one of {', '.join(METRICS)}")
        if self.limit is not None:
            option = _OPTIONS[self.metric]
            limit = _finite(self.limit, f"{option}")
            if limit <= 0:
                raise UserError(f"{option} must be above 0 (got {self.limit!r})")
            if self.metric != LATENCY and limit < 1:
                raise UserError(f"{option} must be at least 1 (got {self.limit!r}): it counts {_UNITS[self.metric]}")
        if self.ratio is not None:
            ratio = _finite(self.ratio, "--latency-ratio")
            if not 0 < ratio < 1:
                raise UserError(f"--latency-ratio must be between 0 and 1, exclusive (got {self.ratio!r}): "
                                "a fraction of the teacher's measured latency")
        if self.limit is None and self.ratio is None:
            raise UserError("a budget needs a limit or a latency ratio")
        margin = _finite(self.margin, "--margin")
        if not 0 <= margin < 0.5:
            raise UserError(f"--margin must be at least 0 and below 0.5 (got {self.margin!r})")
        if margin and self.metric != LATENCY:
            raise UserError("--margin applies to latency budgets only")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def latency_ms(cls, ms: float, *, margin: float = DEFAULT_MARGIN) -> "Budget":
        """A latency budget in milliseconds (the median measured on the device)."""
        return cls(LATENCY, ms, margin=margin)

    @classmethod
    def latency_ratio(cls, ratio: float, *, margin: float = DEFAULT_MARGIN) -> "Budget":
        """A latency budget as a fraction of the teacher's latency measured on the device."""
        return cls(LATENCY, None, ratio=ratio, margin=margin)

    @classmethod
    def macs(cls, count: float) -> "Budget":
        """A budget of multiply-accumulates (counted exactly)."""
        return cls(MACS, count)

    @classmethod
    def params(cls, count: float) -> "Budget":
        """A budget of parameters (counted exactly)."""
        return cls(PARAMS, count)

    # -- resolution ----------------------------------------------------------------------------

    @property
    def resolved(self) -> bool:
        return self.limit is not None

    def resolve(self, teacher_value: float) -> "Budget":
        """The budget with its limit known: a ratio times ``teacher_value`` (the teacher's measured
        latency), rounded to 0.1 microsecond; an absolute budget unchanged, with the reference noted."""
        teacher_value = _finite(teacher_value, "the teacher's measured value")
        if self.limit is not None:
            return replace(self, reference=teacher_value)
        return replace(self, limit=round(self.ratio * teacher_value, 4), reference=teacher_value)

    def _need_limit(self) -> float:
        if self.limit is None:
            raise ValueError("resolve the budget against the teacher first (Budget.resolve)")
        return self.limit

    @property
    def target(self) -> float:
        """What the search aims at: a latency budget less its margin, a counted budget exactly."""
        return self._need_limit() * (1.0 - self.margin)

    @property
    def acceptance(self) -> float:
        """Under this, a measured student fits without repair: the budget less half the margin."""
        return self._need_limit() * (1.0 - self.margin / 2)

    # -- presentation --------------------------------------------------------------------------

    @property
    def is_latency(self) -> bool:
        return self.metric == LATENCY

    @property
    def unit(self) -> str:
        return _UNITS[self.metric]

    def format(self, value: float | None) -> str:
        """``1.234 ms`` or ``12,000,000 MACs``; ``-`` for None."""
        if value is None:
            return "-"
        if self.is_latency:
            return f"{value:.3f} ms"
        return f"{value:,.0f} {self.unit}"

    def met_by(self, value: float) -> bool:
        return value <= self._need_limit()

    def over_by_percent(self, value: float) -> float:
        return max(0.0, 100.0 * (value - self._need_limit()) / self._need_limit())

    def __str__(self) -> str:
        if self.limit is None:
            return f"{self.ratio:g} x the teacher's latency"
        text = self.format(self.limit)
        if self.ratio is not None and self.reference is not None:
            text += f" ({self.ratio:g} x teacher {self.format(self.reference)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The ``budget`` block of result.json: ``{metric: limit}`` plus how it was given."""
        return {"metric": self.metric, self.metric: self.limit, "unit": self.unit, "ratio": self.ratio,
                "margin": self.margin, "reference": self.reference,
                "target": self.target if self.limit is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Budget":
        metric = data.get("metric") or next(key for key in METRICS if key in data)
        return cls(metric, data[metric], ratio=data.get("ratio"), margin=data.get("margin", 0.0),
                   reference=data.get("reference"))
