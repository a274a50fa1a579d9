"""A test double for measurement noise (see tests/plugins/README.md): latency from MACs, deterministic."""

from __future__ import annotations

import os
import time

from hwcompress import hookimpl
from hwcompress.devices import DeviceDescriptor
from hwcompress.measure import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.model.analysis import analyze

#: Seconds each call pauses, so that a killed search can be caught inside each phase; a test that kills
#: only between episodes needs no pause and sets HWCOMPRESS_STEADY_PAUSE=0.
WHOLE_PAUSE = float(os.environ.get("HWCOMPRESS_STEADY_PAUSE", 0.25))
UNIT_PAUSE = min(0.02, WHOLE_PAUSE)


def _latency(artifact: ModelArtifact) -> float:
    return 0.05 + 2e-8 * analyze(artifact.module, tuple(artifact.input_shape)).macs


class SteadyProfiler:
    name = "steady"
    description = "deterministic latency from MACs (a test double for measurement noise)"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def facts(self, _settings: ProfileSettings) -> dict:
        return {"runtime": "steady", "runtime_version": "1.0"}

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        time.sleep(WHOLE_PAUSE)
        ms = _latency(artifact)
        node_ms = None
        if settings.per_layer:  # each layer's share, keyed /module.path/Op as the contract allows; 0.05 ms is the rest
            node_ms = {f"/{layer.name}/{layer.op}": 2e-8 * layer.macs
                       for layer in analyze(artifact.module, tuple(artifact.input_shape)).layers if layer.macs}
        return Measurement(LatencyStats.from_samples([ms] * settings.runs), node_ms=node_ms, facts=self.facts(settings))

    def measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        time.sleep(UNIT_PAUSE)
        return Measurement(LatencyStats.from_samples([_latency(artifact)] * settings.runs), facts=self.facts(settings))


@hookimpl
def register_profilers(register):
    register(SteadyProfiler())


@hookimpl
def register_devices(register):
    register(DeviceDescriptor(name="steady-board", profiler="steady", detect={"always": True},
                              settings={"runs": 3, "warmup": 0}))
