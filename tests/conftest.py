"""Shared fixtures and the one place where hardware- and time-gated tests are skipped.

Markers (declared in pyproject.toml):
    slow       long-running (minutes): skipped unless --runslow is given.
    gpu        needs an NVIDIA GPU: skipped when torch.cuda.is_available() is False.
    tensorrt   needs the tensorrt package: skipped when it is not importable.
    packaging  builds the wheel and installs it into a fresh venv (needs the package index): skipped
               unless --runpackaging is given.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--runpackaging", action="store_true", default=False, help="run tests marked packaging")


def pytest_collection_modifyitems(config, items):
    gpu_reason = None
    for item in items:
        if item.get_closest_marker("slow") and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if item.get_closest_marker("packaging") and not config.getoption("--runpackaging"):
            item.add_marker(pytest.mark.skip(reason="packaging (builds a wheel, needs the package index): run with --runpackaging"))
        if item.get_closest_marker("gpu"):
            if gpu_reason is None:
                import torch

                gpu_reason = "" if torch.cuda.is_available() else "needs an NVIDIA GPU (torch.cuda.is_available() is False)"
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=gpu_reason))
        if item.get_closest_marker("tensorrt") and importlib.util.find_spec("tensorrt") is None:
            item.add_marker(pytest.mark.skip(reason="needs tensorrt: pip install 'hwcompress-profiler-tensorrt[tensorrt]'"))


@pytest.fixture(autouse=True)
def fresh_plugins(tmp_path_factory, monkeypatch):
    """Every test starts from a fresh plugin manager and private user folders."""
    from hwcompress import plugins

    home = tmp_path_factory.mktemp("hwhome")
    monkeypatch.setenv("HWCOMPRESS_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("HWCOMPRESS_DATA_DIR", str(home / "data"))
    if "HWCOMPRESS_CACHE_DIR" not in os.environ:
        # The trained default teacher is expensive: share one cache across the session.
        monkeypatch.setenv("HWCOMPRESS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shared-cache"))
    # A measurement in a slow spell of the machine is retaken after a pause: retaken at once here (the logic
    # is the same; tests/test_compare.py checks the pause itself).
    monkeypatch.setenv("HWCOMPRESS_SPELL_PAUSE_S", "0")
    monkeypatch.delenv("HWCOMPRESS_PLUGINS", raising=False)
    monkeypatch.delenv("HWCOMPRESS_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run small ops, which one thread runs far faster than two fighting over shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real ``hwcompress`` console script in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HWCOMPRESS_DEBUG", None)
    script = Path(sys.executable).with_name("hwcompress")
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
