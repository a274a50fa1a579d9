"""Measuring latency: the profiler contract, one decision between measuring and predicting
(:func:`hwcompress.measure.resolve.resolve_timing`), profile, compare and their reports.

Plugin authors need only the contract; it is re-exported here::

    from hwcompress.measure import LatencyStats, Measurement, ModelArtifact, ProfileSettings, Profiler
"""

from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, Profiler, ProfileSettings

__all__ = ["LatencyStats", "Measurement", "ModelArtifact", "ProfileSettings", "Profiler"]
