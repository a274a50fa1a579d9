"""A plugin's failure is a sentence that names it: refusals exit 2, crashes exit 1, facts JSON cannot
hold become text with a note, and a plugin that calls sys.exit() at import is skipped like any other."""

from __future__ import annotations

import json
import textwrap

import pytest

from hwcompress.errors import PluginError, UserError
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.measure.resolve import GuardedProfiler


class Broken:
    name = "broken"
    description = "raises"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def available(self):
        return True, ""

    def facts(self, settings):
        return {"odd": object(), "nested": {"set": {1, 2}}, "fine": 1}

    def measure(self, artifact, settings):
        raise self.error


ARTIFACT = ModelArtifact(None, (1, 3, 8, 8), None, "m")


def test_a_crash_names_the_plugin_and_the_profiler():
    guarded = GuardedProfiler(Broken(RuntimeError("kernel exploded")), "plugin 'acme' (distribution acme-npu 1.2)")
    with pytest.raises(PluginError, match=r"profiler 'broken' from plugin 'acme' \(distribution acme-npu 1.2\) crashed in "
                                          r"measure\(\): RuntimeError: kernel exploded"):
        guarded.measure(ARTIFACT, ProfileSettings())


def test_a_refusal_stays_a_refusal_and_gains_the_names():
    guarded = GuardedProfiler(Broken(UserError("int8 needs a calibrator")), "plugin 'acme' (distribution acme-npu 1.2)")
    with pytest.raises(UserError, match=r"profiler 'broken' \(plugin 'acme' .*\): int8 needs a calibrator"):
        guarded.measure(ARTIFACT, ProfileSettings())


def test_facts_json_cannot_hold_become_text_with_a_note():
    facts = GuardedProfiler(Broken(RuntimeError()), "x").facts(ProfileSettings())
    json.dumps(facts, allow_nan=False)  # never fatal for --json or result.json
    assert facts["fine"] == 1 and isinstance(facts["odd"], str) and isinstance(facts["nested"]["set"], str)
    assert "odd" in facts["facts_note"] and "nested.set" in facts["facts_note"]


def test_a_measurement_that_is_not_one_is_a_crash():
    class Sloppy(Broken):
        def measure(self, artifact, settings):
            return {"median": 1.0}

    with pytest.raises(PluginError, match="returned dict from measure"):
        GuardedProfiler(Sloppy(RuntimeError()), "x").measure(ARTIFACT, ProfileSettings())

    class Negative(Broken):
        def measure(self, artifact, settings):
            return Measurement(LatencyStats.from_samples([float("nan")]))

    with pytest.raises(PluginError, match="median latency of nan"):
        GuardedProfiler(Negative(RuntimeError()), "x").measure(ARTIFACT, ProfileSettings())


def _plugin(tmp_path, name: str, body: str) -> dict:
    package = tmp_path / name.replace("-", "_")
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[hwcompress]\n{name} = {name.replace('-', '_')}\n")
    return {"PYTHONPATH": str(tmp_path)}


CRASHING = """
    from hwcompress import hookimpl
    from hwcompress.devices import DeviceDescriptor

    class Crash:
        name = "crashy"
        description = "raises"
        def available(self):
            return True, ""
        def facts(self, settings):
            return {"when": object()}
        def measure(self, artifact, settings):
            raise ZeroDivisionError("division by zero in the board driver")

    @hookimpl
    def register_profilers(register):
        register(Crash())

    @hookimpl
    def register_devices(register):
        register(DeviceDescriptor(name="crash-board", profiler="crashy", detect={"always": True}))
"""


def test_the_cli_reports_a_crashing_plugin_in_one_line(cli, tmp_path):
    env = _plugin(tmp_path, "hwcompress-crashy", CRASHING)
    result = cli("profile", "--device", "crash-board", "-m", "hwcompress.model.embedded:resnet20", "--input-shape",
                 "1,3,32,32", env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "profiler 'crashy' from plugin 'hwcompress-crashy' (distribution hwcompress-crashy 1.0)" in lines[0]
    assert "ZeroDivisionError: division by zero in the board driver" in lines[0] and "Traceback" not in result.stderr


def test_a_plugin_that_exits_at_import_is_skipped(cli, tmp_path):
    env = _plugin(tmp_path, "hwcompress-quitter", "import sys\nsys.exit('I refuse to load')\n")
    version = cli("--version", env=env)
    assert version.returncode == 0 and "hwcompress" in version.stdout
    listed = cli("plugins", "--json", "-", env=env)
    assert listed.returncode == 0, listed.stderr
    quitter = next(p for p in json.loads(listed.stdout) if p["name"] == "hwcompress-quitter")
    assert "SystemExit" in quitter["error"]
