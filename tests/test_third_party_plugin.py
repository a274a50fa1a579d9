"""A real third-party plugin distribution, built and installed by pip, is found like the built-ins.

The package is the one in docs/example-plugin (the example docs/plugins.md shows), so the
documentation's example is exercised too.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """pip-install docs/example-plugin into a private folder that goes on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(REPO / "docs" / "example-plugin")],
        check=True, capture_output=True, text=True,
    )
    assert list(site.glob("hwcompress_example_board-*.dist-info"))
    return site


def _env(site, **extra):
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **extra}


def test_devices_lists_plugin_device(cli, plugin_site):
    result = cli("devices", "--json", "-", env=_env(plugin_site))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["example-board"]["profiler"] == "example-all-cores"
    assert rows["example-board"]["status"] == "measured"
    plugins = json.loads(cli("plugins", "--json", "-", env=_env(plugin_site)).stdout)
    example = next(p for p in plugins if p["name"] == "hwcompress-example-board")
    assert example["distribution"] == "hwcompress-example-board" and example["version"] == "0.2.0"
    assert example["provides"] == {"profilers": ["example-all-cores"], "devices": ["example-board"], "agents": ["example-greedy"]}


def test_profile_uses_plugin_profiler(cli, plugin_site):
    result = cli("profile", "--device", "example", "-m", "resnet18", "--input-shape", "1,3,32,32",
                 "--runs", "4", "--json", "-", env=_env(plugin_site))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["device"]["name"] == "example-board" and doc["profiler"] == "example-all-cores"
    assert doc["latency_ms"]["runs"] == 4 and doc["device"]["facts"]["threads"] == os.cpu_count()


def test_search_runs_with_a_plugin_agent(cli, plugin_site, tmp_path):
    """A third-party agent, registered through its entry point, drives a whole search from the CLI."""
    out = tmp_path / "greedy"
    result = cli("search", "--agent", "example-greedy", "--agent-option", "candidates=2", "--macs", "2.5e7",
                 "-m", "hwcompress.model.embedded:resnet20", "--data", "digits", "--episodes", "3", "--runs", "3",
                 "--val-limit", "64", "--bn-calibration", "32", "--finetune-epochs", "0", "--no-plots", "-o", str(out), "--quiet",
                 "--json", "-", env=_env(plugin_site))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["agent"] == "example-greedy" and doc["episodes"] == 3 and doc["best_episode"] == 2
    assert doc["budget_met"] and doc["student"]["macs"] <= 2.5e7 < doc["teacher"]["macs"]
    refused = cli("search", "--agent", "example-greedy", "--agent-option", "candidates=0", "--macs", "2.5e7",
                  "-m", "hwcompress.model.embedded:resnet20", "--data", "digits", "-o", str(tmp_path / "no"),
                  env=_env(plugin_site))
    assert refused.returncode == 2 and "candidates must be a whole number" in refused.stderr


def test_plugin_can_be_disabled(cli, plugin_site):
    result = cli("devices", "--json", "-", env=_env(plugin_site, HWCOMPRESS_DISABLE_PLUGINS="hwcompress-example-board"))
    assert "example-board" not in {row["name"] for row in json.loads(result.stdout)}


def test_broken_plugin_is_reported_and_skipped(cli, tmp_path):
    package = tmp_path / "hwcompress_broken"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('boom at import')\n")
    dist = tmp_path / "hwcompress_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hwcompress-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hwcompress]\nhwcompress-broken = hwcompress_broken\n")
    result = cli("plugins", "--json", "-", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    broken = next(p for p in json.loads(result.stdout) if p["name"] == "hwcompress-broken")
    assert "RuntimeError: boom at import" in broken["error"]
    assert "skipped" in result.stderr
    # The rest of the tool still works.
    devices = cli("devices", "--json", "-", env={"PYTHONPATH": str(tmp_path)})
    assert devices.returncode == 0 and "cpu" in devices.stdout


def test_the_plugin_page_shows_the_example_as_it_is():
    page = (REPO / "docs" / "plugins.md").read_text()
    for path in ("pyproject.toml", "src/hwcompress_example_board/__init__.py"):
        text = (REPO / "docs" / "example-plugin" / path).read_text().rstrip("\n")
        assert text in page, f"docs/plugins.md no longer shows docs/example-plugin/{path}"
