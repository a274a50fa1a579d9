"""Measurements a test gives instead of taking: the CI machine is shared, and a tenant can slow one
ONNX Runtime session 1.2-3x for seconds, so a test about what a search does with its measurements must
not depend on two real timings of a tiny model coming out in order (a red CI run: a uniform student at
0.8x of the teacher measured no faster than it and was left out of the anchors)."""

from __future__ import annotations


def measured_as(monkeypatch, fractions: dict[str, float]) -> dict:
    """Paired measurements of the students named in ``fractions`` report that fraction of the teacher's
    reference latency (1.2: fewer channels stopped paying; a list: one per measurement of that name, in
    order, the last repeated); the others are measured for real. The names
    are those the search gives its measurements: ``smallest``, ``uniform``, ``teacher-int8``,
    ``smallest-fp32``, ``candidate``, ``grown``, ``student``. Returns the medians given, by name, in
    order, and the teacher's reference under ``"teacher"``."""
    from hwcompress.measure.compare import PairedMeasurement

    given: dict = {}
    real_measure = PairedMeasurement.__call__

    def spy(self, module, name, *args, **kwargs):
        measured = real_measure(self, module, name, *args, **kwargs)
        if name in fractions:
            fraction = fractions[name]
            if isinstance(fraction, (list, tuple)):  # one per measurement of that name, the last repeated
                fraction = fraction[min(len(given.get(name, [])), len(fraction) - 1)]
            measured = {**measured, "median": fraction * self.teacher_ms}
        given.setdefault(name, []).append(measured["median"])
        given["teacher"] = [self.teacher_ms]
        return measured

    monkeypatch.setattr(PairedMeasurement, "__call__", spy)
    return given
