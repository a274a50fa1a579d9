"""An example third-party hwcompress plugin: one device and one profiler.

The profiler times the exported ONNX file with ONNX Runtime on every core of this machine with
intra-op spinning on: a real measurement, configured differently from the built-in ``cpu`` device.
Copy this package to start a plugin for your own hardware: replace ``measure`` with the code that
runs the model on your board and returns per-iteration times.
"""

from __future__ import annotations

import os
import time

from hwcompress import hookimpl
from hwcompress.devices import DeviceDescriptor
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings


class AllCoresProfiler:
    """ONNX Runtime on all cores with spinning: throughput-style latency."""

    name = "example-all-cores"
    description = "ONNX Runtime, all cores, spinning on (example plugin)"

    def available(self) -> tuple[bool, str]:
        # Cheap: look for the package without importing it.
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed; pip install onnxruntime"
        return True, ""

    def facts(self, settings: ProfileSettings) -> dict:
        import onnxruntime

        return {"runtime": "onnxruntime", "runtime_version": onnxruntime.__version__, "threads": os.cpu_count()}

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(artifact.onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        feed = {name: np.zeros(artifact.input_shape, dtype=np.float32)}
        for _ in range(settings.warmup):
            session.run(None, feed)
        samples = []
        for _ in range(settings.runs):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1e3)
        return Measurement(latency=LatencyStats.from_samples(samples), facts=self.facts(settings))


@hookimpl
def register_profilers(register):
    register(AllCoresProfiler())


@hookimpl
def register_devices(register):
    register(
        DeviceDescriptor(
            name="example-board",
            aliases=["example"],
            description="This machine, all cores (example plugin)",
            profiler="example-all-cores",
            detect={"always": True},
            settings={"runs": 20, "warmup": 3},
        )
    )
