"""The device catalog ships inside the core wheel and lists without torch, from any folder.

Builds the wheel from this checkout, installs it with ``--no-deps`` into a fresh virtual environment
with only the light dependencies the CLI needs to list devices (click, rich, pluggy, platformdirs,
from the package index), and runs ``hwcompress devices --json -`` from an empty temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGED = {"cpu", "nvidia-gpu", "jetson-orin-nano", "raspberry-pi-5", "android-phone"}
LIGHT_DEPS = ["click>=8.1", "rich>=13", "pluggy>=1.5", "platformdirs>=3"]
OFFLINE_SIGNS = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution", "No matching distribution")


def run(*args: str | Path, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.packaging
def test_wheel_lists_packaged_devices_without_torch(tmp_path):
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("hwcompress-*.whl")

    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {f"hwcompress/_data/devices/{name}.toml" for name in PACKAGED} <= set(names)

    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel)
    assert installed.returncode == 0, installed.stderr
    deps = run(python, "-m", "pip", "install", "--quiet", *LIGHT_DEPS)
    if deps.returncode != 0 and any(sign in deps.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"package index unreachable: {deps.stderr.strip().splitlines()[-1]}")
    assert deps.returncode == 0, deps.stderr
    probe = run(python, "-c", "import importlib.util as u; print([m for m in ('torch', 'onnxruntime', 'numpy') if u.find_spec(m)])")
    assert probe.stdout.strip() == "[]", "the fresh environment must not have the heavy dependencies"

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path / "home"),
        "HWCOMPRESS_CONFIG_DIR": str(tmp_path / "config"),
        "HWCOMPRESS_DATA_DIR": str(tmp_path / "data"),
    }
    listed = run(venv / "bin" / "hwcompress", "devices", "--json", "-", cwd=empty, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    by_name = {row["name"]: row for row in rows}
    assert PACKAGED <= set(by_name)
    site = str(venv)
    for name in PACKAGED:
        # Read from the installed wheel, not from this checkout's devices/ folder.
        assert by_name[name]["source"].startswith(site) and "_data" in by_name[name]["source"], by_name[name]["source"]
    assert by_name["jetson-orin-nano"]["aliases"] and "jetson" in by_name["jetson-orin-nano"]["aliases"]
    assert by_name["jetson-orin-nano"]["status"] == "unavailable" and "hwcompress lut record" in by_name["jetson-orin-nano"]["reason"]

    helped = run(venv / "bin" / "hwcompress", "lut", "--help", cwd=empty, env=env)
    assert helped.returncode == 0 and "record" in helped.stdout, helped.stderr
