"""A search killed with SIGKILL at any moment resumes to the policy of an uninterrupted run, and two
searches never share an output folder.

The searches run in real subprocesses (`hwcompress search`) under a latency budget on the
`steady-board` device, whose profiler is a test double for measurement noise (tests/plugins/README.md):
the same model always measures the same, so "the same policy" is a property the run can have. One run
is killed seven times, each at a different phase (measuring the teacher, recording the LUT, profiling
the students the cost model is fitted on, measuring the size-matched reference, the episodes,
fine-tuning, the final measurement), and
resumed after each kill; its policy, student and fitted cost model must equal those of a run that was
never interrupted. The default suite kills it during the episodes (the longest phase, resumed mid-way;
the suite must stay under 10 minutes on 2 cores); `--runslow` kills it in all seven, the LUT recording
included.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

PLUGINS = REPO / "tests" / "plugins"
TINY = "hwcompress.model.embedded:resnet20"
SEARCH = ["--device", "steady-board", "-m", TINY, "--data", "digits", "--latency-ratio", "0.7", "--episodes", "6",
          "--warmup-episodes", "2", "--agent-option", "hidden=32", "--agent-option", "batch_size=8", "--val-limit", "64",
          "--bn-calibration", "32", "--finetune-epochs", "1", "--seed", "3", "--no-plots"]
# The line each kill waits for (stderr, one line per phase when not a terminal), and then how long.
KILLS = [("measuring the teacher", 0.1), ("recording the latency LUT", 1.0), ("cost model: profiling", 1.0),
         ("measuring a size-matched reference", 0.05), ("ep    2", 0.0), ("fine-tuning the student", 0.5),
         ("measuring the student", 0.6)]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
           "HWCOMPRESS_DATA_DIR": str(home / "data"), "HWCOMPRESS_CONFIG_DIR": str(home / "config"),
           "COLUMNS": "200"}
    env.pop("HWCOMPRESS_DEBUG", None)
    return env


def _command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("hwcompress")), "search", *args]


def _run_until(args: list[str], env: dict[str, str], marker: str, delay: float, timeout: float = 240.0) -> int:
    """Start a search, SIGKILL it ``delay`` seconds after ``marker`` shows on stderr; its return code."""
    process = subprocess.Popen(_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    seen = ""
    try:
        for line in process.stderr:
            seen += line
            if marker in line:
                time.sleep(delay)
                process.kill()
                break
            if time.monotonic() > deadline:
                break
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode in (-9, 0), seen[-2000:]
    return process.returncode


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "policy.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("kills_at, extra, pause", [
    # the default suite: the longest phase, resumed mid-way; without fine-tuning, which it does not kill,
    # and without the steady board's pauses, which only serve kills inside the other phases
    # (and without the fit in context, which the slow run kills and tests/test_quantize.py resumes)
    pytest.param(KILLS[4:5], ["--finetune-epochs", "0", "--context-students", "0"], "0", id="episodes"),
    pytest.param(KILLS, [], "0.25", id="every-phase", marks=pytest.mark.slow),  # all seven (about 3 min on 2 cores)
])
def test_a_search_killed_in_every_phase_resumes_to_the_same_policy(tmp_path, kills_at, extra, pause, monkeypatch):
    monkeypatch.setenv("HWCOMPRESS_STEADY_PAUSE", pause)  # the subprocesses' steady board (_env copies os.environ)
    straight = tmp_path / "straight"
    done = subprocess.run(_command(*SEARCH, *extra, "-o", str(straight), "--quiet"), env=_env(tmp_path / "a"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    # Killed while recording the LUT: its own LUT cache, so it records (and resumes) its own; else it
    # loads the LUT the uninterrupted run recorded (the same one: the steady board measures the same).
    records = any(marker == KILLS[1][0] for marker, _ in kills_at)
    env = _env(tmp_path / ("b" if records else "a"))
    kills = 0
    args = [*SEARCH, *extra, "-o", str(killed)]
    for marker, delay in kills_at:
        kills += _run_until(args, env, marker, delay) == -9
        assert (killed / "checkpoint.pt").exists(), f"no checkpoint after a kill at {marker!r}"
        args = ["--resume", str(killed)]
    # Every phase but one must be caught running (a short one may finish first); a single kill must land.
    assert kills >= max(1, len(kills_at) - 1), f"only {kills} of the {len(kills_at)} kills caught the search running"
    resumed = subprocess.run(_command("--resume", str(killed), "--quiet"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _digest(killed) == _digest(straight)
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert b["student"]["params"] == a["student"]["params"] and b["budget"] == a["budget"]
    assert b["episodes"] == a["episodes"] == 6 and b["cost_model_anchors"] == a["cost_model_anchors"]
    assert b["matched_reference"] == a["matched_reference"] and a["matched_reference"]["measured_ms"] > 0
    # The times cover every part of the run, and the result says it was resumed.
    assert b["total_seconds"] >= b["search_seconds"] and any(n.startswith("resumed after") for n in b["notes"])
    # A finished search has nothing to resume: refused, nothing rewritten.
    before = (killed / "result.json").stat().st_mtime_ns
    again = subprocess.run(_command("--resume", str(killed), "--quiet"), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "holds a finished search" in again.stderr and "--episodes" in again.stderr, again.stderr
    assert (killed / "result.json").stat().st_mtime_ns == before
    if "--context-students" not in extra:  # the same fit, resumed or not
        fit = {k: v for k, v in a["cost_model_context"].items() if k != "seconds"}
        assert fit == {k: v for k, v in b["cost_model_context"].items() if k != "seconds"} and fit["students"] == 6
    else:
        assert a["cost_model_context"] is None and b["cost_model_context"] is None


def test_two_searches_never_share_an_output_folder(tmp_path):
    out = tmp_path / "shared"
    env = _env(tmp_path)
    first = subprocess.Popen(_command(*SEARCH, "-o", str(out)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # the first one holds the folder once it measures the teacher
            if "measuring the teacher" in line:
                break
        second = subprocess.run(_command(*SEARCH, "-o", str(out)), env=env, capture_output=True, text=True, timeout=120)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "in use by another search (process" in lines[0] and str(first.pid) in lines[0]
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_search_is_taken_over(tmp_path):
    from hwcompress.search.checkpoint import OutputLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    (tmp_path / ".lock").write_text(f"{dead.strip()} {os.uname().nodename}\n")
    with OutputLock(tmp_path) as lock:
        assert lock.note and "stale lock" in lock.note and f"process {dead.strip()} is gone" in lock.note
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_resume_refuses_changed_settings_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPRESS_STEADY_PAUSE", "0")  # nothing here is killed: no time needed in the phases
    out = tmp_path / "out"
    base = [*SEARCH[:6], "--macs", "2e7", "--episodes", "2", "--finetune-epochs", "0", "--val-limit", "32", "--no-plots",
            "--reward-finetune-steps", "1"]
    done = subprocess.run(_command(*base, "-o", str(out), "--quiet"), env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "result.json").read_text())["scoring"]["finetune_steps"] == 1
    assert "distilled from the teacher for 1 step before" in (out / "summary.md").read_text()
    refused = subprocess.run(_command("--resume", str(out), "--agent", "uniform", "--seed", "7"), env=_env(tmp_path),
                             capture_output=True, text=True, timeout=60)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "agent: saved 'amc', given 'uniform'" in lines[0] and "--resume-override" in lines[0]
    # A budget is named as given, and overriding it is refused: the episodes were scored against it (an
    # override was once accepted and ignored, while result.json reported the new budget).
    for extra, wanted in ((["--macs", "1e7"], "budget: saved 20,000,000 MACs, given 10,000,000 MACs"),
                          (["--macs", "1e7", "--resume-override", "budget"], "the budget cannot change on resume")):
        refused = subprocess.run(_command("--resume", str(out), *extra), env=_env(tmp_path), capture_output=True, text=True,
                                 timeout=60)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and wanted in lines[0], refused.stderr
    assert "20,000,000 MACs" in lines[0] and "--policy" in lines[0]
    # A student over its budget beyond doubt (here by count) exits 3, so that a script sees the miss; the
    # result is written all the same.
    missed = subprocess.run(_command(*SEARCH[:6], "--macs", "1e6", "--policy", str(out / "policy.json"), "--finetune-epochs", "0",
                                     "--no-plots", "-o", str(tmp_path / "missed"), "--quiet"),
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert missed.returncode == 3 and "budget NOT met" in missed.stdout, (missed.stdout, missed.stderr)
    assert json.loads((tmp_path / "missed" / "result.json").read_text())["budget_met"] is False
