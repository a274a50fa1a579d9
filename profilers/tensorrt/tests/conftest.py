"""Gates and fixtures for the GPU profiler plugin's tests.

Markers (declared in the repository's pyproject.toml):
    gpu        needs an NVIDIA GPU: skipped when torch.cuda.is_available() is False.
    tensorrt   needs the tensorrt package: skipped when it cannot be found.

Only the tests in this folder are gated here (the core's tests/conftest.py gates its own), so running
both folders in one session marks nothing twice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _gpu_skip_reason() -> str:
    import torch

    if torch.cuda.is_available():
        return ""
    return "needs an NVIDIA GPU (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config, items):
    gpu_reason = None
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        # Markers, not item.keywords: keywords hold every parent's name, and this folder is "tensorrt".
        wants_trt = item.get_closest_marker("tensorrt") is not None
        if item.get_closest_marker("gpu") is not None or wants_trt:
            if gpu_reason is None:
                gpu_reason = _gpu_skip_reason()
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=gpu_reason))
                continue
        if wants_trt and importlib.util.find_spec("tensorrt") is None:
            item.add_marker(pytest.mark.skip(reason="needs tensorrt: pip install 'hwcompress-profiler-tensorrt[tensorrt]'"))


@pytest.fixture(autouse=True)
def private_folders(tmp_path_factory, monkeypatch):
    """Fresh plugin registries, and caches and user folders that are this test session's own."""
    from hwcompress import plugins

    home = tmp_path_factory.mktemp("trt-home")
    monkeypatch.setenv("HWCOMPRESS_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("HWCOMPRESS_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("HWCOMPRESS_CACHE_DIR", str(home / "cache"))
    monkeypatch.delenv("HWCOMPRESS_PLUGINS", raising=False)
    monkeypatch.delenv("HWCOMPRESS_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield home
    plugins.reset()
