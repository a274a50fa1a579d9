"""How much other processes got in the way of a measurement (hwcompress/measure/competition.py): read
from Linux's /proc, with a real busy process on the measuring core or beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hwcompress.measure import competition
from hwcompress.measure.competition import WAITED, watch

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                                reason="pins processes to cores: Linux with two cores or more")
BUSY = "while True: pass"


@pytest.fixture
def pinned(monkeypatch):
    """This process on its first core for the test (its whole set restored after)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("this process may use one core only")
    if competition._waiting_ns() is None:
        pytest.skip("this kernel keeps no per-thread schedstat (/proc/self/task/*/schedstat)")
    os.sched_setaffinity(0, {cores[0]})
    yield cores
    os.sched_setaffinity(0, set(cores))


def _busy(core: int) -> subprocess.Popen:
    """A Python busy loop in another process, pinned to ``core``."""
    process = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\n{BUSY}"])
    time.sleep(0.3)  # started and spinning
    return process


def _spun_beside(core: int) -> competition.Competition:
    """What this process, busy for a second, read with a busy loop pinned to ``core``."""
    other = _busy(core)
    try:
        with watch() as watched:
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                pass
    finally:
        other.kill()
        other.wait()
    return watched.result


def test_a_busy_process_on_the_measuring_core_is_waited_for_and_one_beside_it_is_not(pinned):
    shared = _spun_beside(pinned[0])
    assert 0.3 <= shared.waited_share <= 0.7, shared  # the core taken in turns: about half the time waiting
    assert shared.busy and "waited" in shared.note() and shared.to_dict()["waited_share"] == round(shared.waited_share, 4)
    assert 0.3 <= shared.other_cores <= 0.7  # the busy loop had the other half of that core
    apart = _spun_beside(pinned[1])
    assert apart.waited_share < WAITED and not apart.busy and apart.note() is None, apart  # nothing waited for
    assert 0.7 <= apart.other_cores <= 1.3  # a whole core kept busy, counted, not noted


def test_nothing_is_claimed_without_proc(monkeypatch, tmp_path):
    with watch() as watched:
        pass
    assert watched.result.other_cores is None  # under MIN_SECONDS: the tick counts are too coarse
    monkeypatch.setattr(competition, "_PROC_STAT", tmp_path / "absent")
    monkeypatch.setattr(competition, "_TASKS", tmp_path / "absent")
    with watch() as watched:
        time.sleep(competition.MIN_SECONDS + 0.05)
    assert watched.result.other_cores is None and watched.result.waited_share is None and not watched.result.busy
    assert watched.result.to_dict()["other_cpu_cores"] is None and watched.result.note() is None


def test_profile_says_when_it_waited_for_the_cpu(pinned):
    from hwcompress.measure.profile import profile_model

    same = _busy(pinned[0])
    try:
        report = profile_model("resnet18", input_shape=(1, 3, 64, 64), runs=40, warmup=3, per_layer=False).to_dict()
    finally:
        same.kill()
        same.wait()
    found = report["competition"]
    assert found["waited_share"] >= WAITED and found["seconds"] > 0, found
    assert any("waited" in note and "for a CPU held by others" in note for note in report["notes"])


def test_a_reference_half_that_waited_for_the_cpu_is_left_out(pinned, monkeypatch):
    """The teacher's reference is measured in two halves: the first shares the measuring core with a busy
    loop, the second does not. The first waited for the CPU, the second did not, so the second alone is the
    reference, whatever their medians say (a small model's runs fit between the scheduler's turns)."""
    from types import SimpleNamespace

    from hwcompress.devices import resolve_device
    from hwcompress.measure.compare import PairedMeasurement
    from hwcompress.measure.contract import ProfileSettings
    from hwcompress.measure.resolve import measuring_profiler
    from hwcompress.model.embedded import resnet_cifar

    monkeypatch.setenv("HWCOMPRESS_SPELL_PAUSE_S", "0")
    rounds = 3

    class SharedForAWhile:
        """The real profiler; a busy loop shares its core for the first ``rounds`` measurements."""

        def __init__(self, inner):
            self.inner, self.name, self.calls, self.busy = inner, inner.name, 0, None

        def measure(self, artifact, settings):
            self.calls += 1
            if self.calls == 1:
                self.busy = _busy(pinned[0])
            try:
                return self.inner.measure(artifact, settings)
            finally:
                if self.calls == rounds:
                    self.busy.kill()
                    self.busy.wait()

    profiler = SharedForAWhile(measuring_profiler(resolve_device("cpu"))[0])
    settings = ProfileSettings(runs=200, warmup=5, threads=1)
    paired = PairedMeasurement(resnet_cifar(20).eval(), (1, 3, 32, 32), SimpleNamespace(profiler=profiler), settings,
                               reference_rounds=rounds)
    measured = paired.teacher_measured
    first, second = measured["halves_waited_share"]
    assert first >= WAITED > second, measured["halves_waited_share"]
    # The measurement's own record: both halves as one, each weighted by its time, the pause between them left out.
    assert second < measured["competition"]["waited_share"] < first and measured["competition"]["cores"] >= 2
    assert measured["rounds"] == rounds and len(measured["waited"]["left_out_round_medians_ms"]) == rounds
    assert not set(measured["round_medians_ms"]) & set(measured["waited"]["left_out_round_medians_ms"])
    assert profiler.calls == 2 * rounds  # one quiet half: no third
