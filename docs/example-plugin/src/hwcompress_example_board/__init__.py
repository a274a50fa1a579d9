"""An example third-party hwcompress plugin: a device, a profiler and a search agent.

The profiler times the exported ONNX file with ONNX Runtime on every core of this machine: a real
measurement, configured differently from the built-in ``cpu`` device. The agent shrinks the teacher
greedily towards the budget, NetAdapt's way. Copy this package to start a plugin for your own
hardware: replace ``measure`` with the code that runs the model on your board and returns
per-iteration times, or ``search`` with your own strategy.
"""

from __future__ import annotations

import os
import time

from hwcompress import hookimpl
from hwcompress.devices import DeviceDescriptor
from hwcompress.measure import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.search.agent import Candidate, SearchContext


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

    def facts(self, _settings: ProfileSettings) -> dict:
        import onnxruntime  # the runtime is imported when used, never at module top

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


class GreedyAgent:
    """NetAdapt-like: each episode lowers the target a step towards the budget and gives up the channels
    that cost the least validation accuracy per unit of cost saved; the last episode meets the budget."""

    name = "example-greedy"

    def __init__(self, candidates: int = 4) -> None:
        if not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be a whole number of at least 1 (got {candidates!r})")
        self.candidates = candidates
        self.keep: dict[str, int] | None = None

    def search(self, context: SearchContext) -> None:
        model = context.cost_model
        keep = dict(self.keep or model.full_policy())
        full = model.cost(model.full_policy())
        for episode in range(len(context.history), context.episodes):
            step_target = full - (full - context.target) * (episode + 1) / context.episodes
            keep = model.trimmed_policy(keep, step_target, score=context.score, candidates=self.candidates)
            self.keep = keep
            cost, accuracy = model.cost(keep), context.score(keep)
            reward = context.reward(accuracy, cost)
            best = Candidate(dict(keep), episode=episode, accuracy=accuracy, cost=cost, reward=reward)
            context.report({"episode": episode, "reward": reward, "accuracy": accuracy, "cost": cost},
                           best if cost <= context.target else None)
            context.checkpoint()

    def state_dict(self) -> dict:
        return {"keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        self.keep = state["keep"]


@hookimpl
def register_agents(register):
    register("example-greedy", GreedyAgent)


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
