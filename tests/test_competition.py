"""Other processes' share of this machine while something is measured (hwcompress/measure/competition.py):
read from Linux's /proc, with a real busy process beside the measurement."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hwcompress.measure import competition
from hwcompress.measure.competition import BUSY_CORES, watch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")


@pytest.fixture
def busy_process():
    """A Python busy loop in another process, for as long as the test runs."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # started and spinning
    yield process
    process.kill()
    process.wait()


def test_a_busy_process_is_counted_and_this_ones_own_work_is_not(busy_process):
    with watch() as watched:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:  # this process busy too: it is not the others' share
            pass
    found = watched.result
    assert found.cores >= 1 and found.seconds >= 1.0
    if found.cores < 2:
        pytest.skip("one core: the busy process and this one take turns")
    assert 0.7 <= found.other_cores <= 1.3, found  # one busy loop: one core, whatever this process did meanwhile
    assert found.busy and "other processes kept 1." in found.note() and found.to_dict()["other_cpu_cores"] == round(found.other_cores, 3)


def test_nothing_is_claimed_without_proc_or_over_a_short_interval(monkeypatch, tmp_path):
    with watch() as watched:
        pass
    assert watched.result.other_cores is None and watched.result.note() is None  # under MIN_SECONDS
    monkeypatch.setattr(competition, "_PROC_STAT", tmp_path / "absent")
    with watch() as watched:
        time.sleep(competition.MIN_SECONDS + 0.05)
    assert watched.result.other_cores is None and not watched.result.busy
    assert watched.result.to_dict()["other_cpu_cores"] is None


def test_profile_says_when_other_processes_kept_the_machine_busy(busy_process):
    import os

    from hwcompress.measure.profile import profile_model

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the busy process would take this one's turns")
    report = profile_model("resnet18", input_shape=(1, 3, 64, 64), runs=60, warmup=3, per_layer=False).to_dict()
    found = report["competition"]
    assert found["seconds"] >= competition.MIN_SECONDS and found["other_cpu_cores"] >= BUSY_CORES, found
    assert any(note.startswith("other processes kept") for note in report["notes"])
