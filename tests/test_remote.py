"""Remote devices: measurements over a REAL OpenSSH server, pools, faults, and adb through a fake.

The ``sshd`` fixtures start ``/usr/sbin/sshd -D`` on 127.0.0.1 at a free unprivileged port, with a host
key and a client key generated here (``AuthorizedKeysFile`` points at the generated one), and write a
client config and known_hosts so that ``ssh`` runs without a prompt. The device's interpreter is this
virtual environment's Python, started by sshd: a different process, reached through ssh. The tests
prove the crossing from the runner's facts: ``ssh_connection`` (set by sshd in the session) names the
server's port, and the runner's pid is not this process's.

They are skipped, with the reason, only when sshd is not installed or does not start (``.ci/run``
installs openssh-server). The adb transport runs through ``fake-adb``, a FAKE adb written below that
runs ``shell`` commands here and copies ``push`` files: it proves the adb plumbing, not a phone.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from hwcompress.devices import load_descriptor
from hwcompress.devices.transport import HostLock, TransportError
from hwcompress.errors import UserError
from hwcompress.lut.nonlayer import valid_non_layer_rates
from hwcompress.lut.record import record_lut
from hwcompress.lut.table import LatencyTable
from hwcompress.measure.contract import ModelArtifact
from hwcompress.measure.remote import RemoteProfiler, forget_remote_profilers, runner_source
from hwcompress.measure.resolve import make_settings, measuring_profiler, resolve_timing
from hwcompress.model.embedded import resnet_cifar
from hwcompress.model.export import export_onnx

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TINY_RESNET = "hwcompress.model.embedded:resnet20"


# -- a real OpenSSH server ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection children, the shells and runners under them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class SshLab:
    """Keys, a client config and known_hosts shared by every sshd this module starts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.user = getpass.getuser()
        for name in ("host_key", "client_key", "stranger_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        self.key = folder / "client_key"
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text("")
        self.client_config = folder / "ssh_config"
        self.aliases: list[tuple[str, int]] = []
        self.write_client_config()

    def write_client_config(self) -> None:
        blocks = [f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n" for alias, port in self.aliases]
        blocks.append(f"Host *\n  User {self.user}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n"
                      "  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
        self.client_config.write_text("\n".join(blocks))

    def alias(self, name: str, port: int) -> str:
        self.aliases.append((name, port))
        self.write_client_config()
        return name


class Sshd:
    """One sshd on 127.0.0.1:port; ``stop`` is a power cut (the listener and every session killed)."""

    def __init__(self, lab: SshLab, port: int | None = None) -> None:
        self.lab = lab
        self.port = port or free_port()
        self.folder = lab.folder / f"sshd-{self.port}"
        self.folder.mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None
        host_key = (lab.folder / "host_key.pub").read_text().split()
        with open(lab.known_hosts, "a") as handle:
            handle.write(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")

    def start(self) -> "Sshd":
        config = self.folder / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.lab.folder / 'host_key'}
            AuthorizedKeysFile {self.lab.folder / 'authorized_keys'}
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            StrictModes no
            UsePAM no
            PermitRootLogin prohibit-password
            PidFile {self.folder / 'sshd.pid'}
            Subsystem sftp internal-sftp
            MaxStartups 100
            MaxSessions 100
            LogLevel VERBOSE
            """))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        with open(self.folder / "sshd.log", "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            probe = subprocess.run(["ssh", "-F", str(self.lab.client_config), "-i", str(self.lab.key), "-p", str(self.port),
                                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "127.0.0.1", "true"],
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sshd on port {self.port} did not start: "
                           f"{(self.folder / 'sshd.log').read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        for pid in reversed(descendants(self.process.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()
        self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(SSHD).exists() or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server or client not installed (apt-get install openssh-server openssh-client; .ci/run does)")
    return SshLab(tmp_path_factory.mktemp("sshlab"))


@pytest.fixture(scope="module")
def box(lab):
    """The module's sshd."""
    try:
        server = Sshd(lab).start()
    except RuntimeError as error:
        pytest.skip(f"sshd cannot run here: {error}")
    yield server
    forget_remote_profilers()
    server.stop()


@pytest.fixture
def spare(lab):
    """Extra sshd instances for a test, each stopped at its end."""
    started: list[Sshd] = []

    def start(port: int | None = None) -> Sshd:
        server = Sshd(lab, port).start()
        started.append(server)
        return server

    yield start
    forget_remote_profilers()
    for server in started:
        server.stop()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_device(folder: Path, name: str, transport: dict, *, settings: dict | None = None, hosts: list | None = None) -> Path:
    lines = [f"name = {toml_value(name)}", 'profiler = "onnxruntime"', "channel_multiple = 8", "", "[settings]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (settings or {"runs": 10, "warmup": 2}).items()]
    lines += ["", "[transport]"] + [f"{k} = {toml_value(v)}" for k, v in transport.items()]
    if hosts is not None:
        lines.append(f"hosts = {toml_value(hosts)}")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_transport(lab: SshLab, server: Sshd | None, workdir: Path, **extra) -> dict:
    fields = {"kind": "ssh", "host": "127.0.0.1", "config_file": str(lab.client_config), "identity_file": str(lab.key),
              "python": sys.executable, "workdir": str(workdir)}
    if server is not None:
        fields["port"] = server.port
    fields.update(extra)
    return fields


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A two-convolution model as an ONNX file (no export per CLI call)."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
    export_onnx(model, (1, 3, 16, 16), path, verify=False)
    return path


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- descriptors --------------------------------------------------------------------------------

def test_transport_fields_and_pools_parse(tmp_path):
    path = write_device(tmp_path, "pi5-lab", {"kind": "ssh", "host": "pi5.local", "user": "pi", "port": 2222,
                                              "identity_file": "~/.ssh/lab", "options": {"ProxyJump": "gw"},
                                              "python": "/home/pi/venv/bin/python", "timeout_s": 90})
    spec, = load_descriptor(path).transports
    assert (spec.host, spec.port, spec.user, spec.label, spec.timeout_s) == ("pi5.local", 2222, "pi", "pi@pi5.local:2222", 90.0)
    assert spec.options == ("ProxyJump=gw",) and spec.workdir == ".cache/hwcompress-runner" and spec.runner == "auto"
    pool = load_descriptor(write_device(tmp_path, "pool", {"kind": "ssh", "user": "pi", "python": "python3"},
                                        hosts=["a.local", "root@b.local:2200", "[fe80::1]:22", {"host": "c", "python": "/opt/py"}]))
    assert [t.label for t in pool.transports] == ["pi@a.local", "root@b.local:2200", "pi@[fe80::1]:22", "pi@c"]
    assert pool.transports[3].python == "/opt/py" and pool.transports[0].python == "python3"
    assert pool.remote and not pool.is_local()[0] and pool.to_dict()["transport"]["hosts"][1] == "root@b.local:2200"
    phone = load_descriptor(write_device(tmp_path, "phone", {"kind": "adb", "serial": "R58M", "interpreter": "/data/py"}))
    assert phone.transports[0].label == "adb:R58M" and phone.transports[0].python == "/data/py"
    assert phone.transports[0].workdir == "/data/local/tmp/hwcompress-runner"
    # A suggested command names a device the way it can be found again: by its file where only a file
    # describes it (`--device mybox` was suggested for a --device-file device and found nothing).
    from hwcompress.devices import resolve_device

    assert resolve_device(device_file=str(path)).option == f"--device-file {path}"
    assert resolve_device("cpu").option == "--device cpu"


@pytest.mark.parametrize("transport, hosts, message", [
    ({"kind": "ssh"}, None, "needs host"),
    ({"kind": "telnet", "host": "x"}, None, "kind must be"),
    ({"kind": "ssh", "host": "x", "port": 70000}, None, "port must be an integer"),
    ({"kind": "ssh", "host": "x", "hots": "y"}, None, "unknown field 'hots'"),
    ({"kind": "ssh", "host": "x", "timeout_s": -1}, None, "timeout_s must be a positive"),
    ({"kind": "ssh", "host": "x", "runner": "fast"}, None, "runner must be one of"),
    ({"kind": "ssh", "host": "x", "options": ["-v"]}, None, "options must be"),
    ({"kind": "adb"}, None, "needs serial"),
    ({"kind": "ssh"}, ["a", "a"], "more than once"),
    ({"kind": "ssh"}, ["pi@"], "is not \"user@host:port\""),
    ({"kind": "ssh"}, [], "non-empty list"),
])
def test_bad_transports_are_one_line_errors(tmp_path, transport, hosts, message):
    path = write_device(tmp_path, "bad", transport, hosts=hosts)
    with pytest.raises(UserError, match=message) as error:
        load_descriptor(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_the_runner_needs_only_the_standard_library(tmp_path):
    """Started without site-packages (no numpy, onnxruntime, torch or hwcompress), the runner still
    greets and says what the device lacks."""
    script, _ = runner_source()
    out = subprocess.run([sys.executable, "-S", str(script), "--serve", "--workdir", str(tmp_path), "--mode", "standalone"],
                         input=b"", capture_output=True, timeout=60)
    hello = json.loads(out.stdout.splitlines()[0])
    assert hello["hello"] == 1 and "numpy and onnxruntime not importable" in hello["missing"], out.stderr
    assert b"Traceback" not in out.stderr


def test_standalone_runner_times_as_the_onnxruntime_plugin_does(tiny_onnx):
    """The runner mirrors the plugin for devices without hwcompress: the same per-node keys, the same
    kernel-sum unit timing (int8 edges included), timings of the same size."""
    from hwcompress_profiler_onnxruntime import OnnxRuntimeProfiler

    from hwcompress.measure import runner

    settings = make_settings(load_descriptor(write_device(tiny_onnx.parent, "here", {"kind": "ssh", "host": "x"})),
                             runs=30, warmup=3, per_layer=True)
    artifact = ModelArtifact(tiny_onnx, (1, 3, 16, 16), name="tiny")
    plugin, mirror = OnnxRuntimeProfiler(), runner.Standalone()
    theirs = plugin.measure(artifact, settings)
    ours = mirror.measure(str(tiny_onnx), [1, 3, 16, 16], settings.to_dict())
    assert set(ours["node_ms"]) == set(theirs.node_ms) and ours["notes"] == theirs.notes
    assert 0.33 < statistics.median(ours["samples_ms"]) / theirs.latency.median < 3
    unit_plugin = plugin.measure_unit(artifact, settings)
    unit_mirror = mirror.measure_unit(str(tiny_onnx), [1, 3, 16, 16], settings.to_dict())
    unit_ours = statistics.median(unit_mirror["samples_ms"])
    assert 0.33 < unit_ours / unit_plugin.latency.median < 3
    # ... and the same nodes, which the recorder counts (each carries the node profiler's own cost).
    assert unit_plugin.node_ms and set(unit_mirror["node_ms"]) == set(unit_plugin.node_ms)
    assert runner.QUANTIZED_BOUNDARY_OPS >= runner.BOUNDARY_OPS
    import hwcompress_profiler_onnxruntime as ort_plugin

    assert runner.BOUNDARY_OPS == ort_plugin.BOUNDARY_OPS
    assert runner.QUANTIZED_BOUNDARY_OPS == getattr(ort_plugin, "QUANTIZED_BOUNDARY_OPS", runner.QUANTIZED_BOUNDARY_OPS)
    assert runner.PROFILED_RUNS == ort_plugin.PROFILED_RUNS and set(mirror.precisions) == set(plugin.precisions)
    ours_facts, their_facts = runner.Standalone().facts(settings.to_dict()), plugin.facts(settings)
    assert set(ours_facts) - {"measured_with"} == set(their_facts)
    assert {k: ours_facts[k] for k in their_facts if k.startswith("channel_")} == {
        k: v for k, v in their_facts.items() if k.startswith("channel_")}


# -- measuring over ssh -----------------------------------------------------------------------------

def test_profile_over_ssh_crosses_the_transport(cli, lab, box, tmp_path):
    workdir = tmp_path / "remote"
    device = write_device(tmp_path, "lab-board", ssh_transport(lab, box, workdir))
    result = cli("profile", "--device-file", str(device), "-m", TINY_RESNET, "--input-shape", "1,3,32,32", "--json", "-")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    facts = doc["device"]["facts"]
    assert doc["latency_ms"]["source"] == "measured" and doc["latency_ms"]["runs"] == 10
    assert facts["host"] == f"127.0.0.1:{box.port}" and facts["transport"] == "ssh"
    assert facts["ssh_connection"].split()[-1] == str(box.port)  # set by sshd: the runner ran in its session
    assert facts["runner_pid"] != os.getpid() and facts["python_executable"] == sys.executable
    assert "hwcompress" in facts["measured_with"]  # hwcompress and the plugin import there: their profiler measured
    assert any(row["latency_ms"] for row in doc["layers"] if row["name"] == "layer1.0.conv1")  # per-node times came back
    _, sha = runner_source()
    runner = workdir / f"runner-{sha}.py"
    assert runner.exists() and len(list((workdir / "models").glob("*.onnx"))) == 1
    before = runner.stat().st_mtime_ns
    again = cli("profile", "--device-file", str(device), "-m", TINY_RESNET, "--input-shape", "1,3,32,32", "--no-per-layer",
                "--json", "-")
    assert again.returncode == 0, again.stderr
    assert runner.stat().st_mtime_ns == before  # cached by content hash: not copied twice
    assert json.loads(again.stdout)["device"]["facts"]["runner_pid"] != facts["runner_pid"]


def test_standalone_runner_without_hwcompress_on_the_device(lab, box, tmp_path, tiny_onnx):
    device = load_descriptor(write_device(tmp_path, "bare-board", ssh_transport(lab, box, tmp_path / "r", runner="standalone")))
    timing = resolve_timing(device)
    assert timing.measured and isinstance(timing.profiler, RemoteProfiler)
    settings = make_settings(device, runs=20, warmup=2, per_layer=True)
    artifact = ModelArtifact(tiny_onnx, (1, 3, 16, 16), name="tiny")
    measured = timing.profiler.measure(artifact, settings)
    assert measured.facts["measured_with"] == "hwcompress runner (standalone)" and measured.latency.runs == 20
    assert measured.node_ms and all(value >= 0 for value in measured.node_ms.values())
    unit = timing.profiler.measure_unit(artifact, settings)
    assert 0 < unit.latency.median and unit.node_ms  # its kernels, for the recorder to count
    assert timing.profiler.calls[-1]["sent_bytes"] == 0  # the model crossed once
    _assert_conversion_rates(timing.profiler.layout_conversions(settings))
    # The work between layers has no probe here (it is hwcompress's): the LUT keeps it in its ratio.
    assert timing.profiler.non_layer_costs(settings) is None


def _assert_conversion_rates(conversions) -> None:
    """A layout-conversion record as the device times it: this CPU's block and alignment (the device is
    this machine), three points per direction, each a positive time, and a line through them."""
    from hwcompress_profiler_onnxruntime import nchwc_layout

    block, alignment = nchwc_layout()
    if block == 1 or alignment == 1:
        assert conversions is None  # no blocked layout here: nothing to convert
        return
    assert (conversions["block"], conversions["alignment"]) == (block, alignment)
    for direction in ("to_plain", "to_blocked"):
        points = conversions[direction]["points"]
        assert len(points) == 3 and all(ms > 0 for _, ms in points), conversions
        assert [x for x, _ in points] == sorted(x for x, _ in points) and conversions[direction]["ms_per_element"] >= 0


def test_layout_conversions_are_timed_on_the_device_by_its_plugin(lab, box, tmp_path):
    """``lut record --off-path`` on a remote device gets the conversion rates from the device itself:
    the plugin there times them (the runner's own probe, above, where hwcompress is not installed)."""
    device = load_descriptor(write_device(tmp_path, "lab-board", ssh_transport(lab, box, tmp_path / "r")))
    timing = resolve_timing(device)
    settings = make_settings(device)
    conversions = timing.profiler.layout_conversions(settings)  # through the guard, as lut record asks
    _assert_conversion_rates(conversions)
    assert valid_non_layer_rates(timing.profiler.non_layer_costs(settings))  # so is the work between layers
    assert "hwcompress" in timing.profiler.facts(settings)["measured_with"]  # the plugin answered


@pytest.mark.slow
def test_compare_over_ssh(cli, lab, box, tmp_path):
    device = write_device(tmp_path, "lab-board", ssh_transport(lab, box, tmp_path / "remote"))
    result = cli("compare", "resnet18", "mobilenet_v2", "--device-file", str(device), "--input-shape", "1,3,32,32",
                 "--runs", "5", "--rounds", "2", "--json", "-")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["source"] == "measured" and doc["device"]["facts"]["host"] == f"127.0.0.1:{box.port}"
    assert [m["name"] for m in doc["models"]] == ["resnet18", "mobilenet_v2"] and doc["models"][1]["ratio"] > 0


@pytest.mark.slow
def test_lut_record_over_ssh(cli, lab, box, tmp_path):
    device = write_device(tmp_path, "lab-board", ssh_transport(lab, box, tmp_path / "remote"))
    out = tmp_path / "board.lut.json"
    result = cli("lut", "record", "--device-file", str(device), "-m", TINY_RESNET, "--input-shape", "1,3,32,32",
                 "--points", "1", "--quantum", "8", "--runs", "3", "--warmup", "1", "--calibration-widths", "", "--off-path",
                 "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    table = LatencyTable.load(out)
    provenance = table.provenance
    _assert_conversion_rates(provenance.get("layout_conversions"))  # timed on the board, through the CLI's guard
    assert valid_non_layer_rates(provenance.get("non_layer_costs"))
    assert provenance["host"] == f"127.0.0.1:{box.port}" and provenance["facts"]["transport"] == "ssh"
    assert provenance["timing"] == "kernels" and provenance["device"] == "lab-board" and len(table) >= 5
    assert table.models and table.models[0]["measured_ms"] > 0  # the calibration's whole model was timed there too


def test_search_measures_on_the_ssh_device(cli, lab, box, tmp_path):
    device = write_device(tmp_path, "lab-board", ssh_transport(lab, box, tmp_path / "remote"), settings={"runs": 3, "warmup": 2})
    out = tmp_path / "search"
    result = cli("search", "--device-file", str(device), "-m", TINY_RESNET, "--data", "digits", "--episodes", "2",
                 "--runs", "3", "--val-limit", "64", "--finetune-epochs", "0", "--latency-ratio", "0.8", "--verdict-rounds", "5", "--no-plots", "-o",
                 str(out), "-q", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((out / "result.json").read_text())
    host = f"127.0.0.1:{box.port}"
    assert doc["verdict"]["source"] == "measured" and doc["verdict"]["host"] == host
    assert doc["device"]["facts"]["host"] == host and doc["device"]["facts"]["ssh_connection"].endswith(str(box.port))
    assert doc["teacher"]["latency"]["source"] == "measured" and doc["student"]["latency_ms"] > 0
    # The cost model was fitted on students profiled layer by layer on the board, over ssh (the default).
    assert doc["cost_model_context"]["students"] == 6 and doc["cost_model_context"]["layers"] > 0
    assert any("fitted in context" in note for note in doc["notes"])


# -- faults: one line, exit code 2 ------------------------------------------------------------------

def test_unreachable_host_names_host_and_port(cli, lab, tmp_path, tiny_onnx):
    port = free_port()  # nothing listens there
    device = write_device(tmp_path, "gone", ssh_transport(lab, None, tmp_path / "r", port=port, connect_timeout_s=5))
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx)))
    assert f"127.0.0.1:{port}" in line and "cannot reach" in line and "Connection refused" in line


def test_a_copy_to_an_unreachable_host_is_unreachable_not_a_plain_failure(lab, tmp_path):
    """scp exits 1 whatever went wrong; a connection it could not make must still read as the host
    being unreachable (a pool marks it down and goes on), not as a failed copy."""
    from hwcompress.devices.transport import HostUnreachable

    port = free_port()  # nothing listens there
    device = write_device(tmp_path, "gone-copy", ssh_transport(lab, None, tmp_path / "r", port=port, connect_timeout_s=5))
    transport = RemoteProfiler(load_descriptor(device)).hosts[0].transport
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 64)
    with pytest.raises(HostUnreachable, match=rf"127\.0\.0\.1:{port}.* while copying payload\.bin"):
        transport.put(payload, "/tmp/hwcompress-payload.bin", timeout=30)
    # an unreachable host is no reason to switch scp's protocol (the legacy retry then exited 1, "lost
    # connection", and read as a plain failed copy)
    assert not transport._legacy_scp


def test_refused_key_is_an_authentication_error(cli, lab, box, tmp_path, tiny_onnx):
    device = write_device(tmp_path, "locked", ssh_transport(lab, box, tmp_path / "r", identity_file=str(lab.folder / "stranger_key")))
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx)))
    assert "refused the login" in line and f"127.0.0.1:{box.port}" in line and "identity_file" in line


def test_missing_interpreter_says_what_to_install(cli, lab, box, tmp_path, tiny_onnx):
    device = write_device(tmp_path, "no-python", ssh_transport(lab, box, tmp_path / "r", python="/nonexistent/bin/python3"))
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx)))
    assert "'/nonexistent/bin/python3' is missing" in line and "apt install python3" in line


def test_missing_onnxruntime_says_what_to_install(cli, lab, box, tmp_path, tiny_onnx):
    bare = tmp_path / "bare-venv"  # a Python with nothing installed: no numpy, onnxruntime or hwcompress
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(bare)], check=True)
    device = write_device(tmp_path, "no-ort", ssh_transport(lab, box, tmp_path / "r", python=str(bare / "bin" / "python")))
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx)))
    assert "onnxruntime not importable" in line and "pip install onnxruntime numpy" in line


def test_runner_crash_mid_measurement(cli, lab, box, tmp_path, tiny_onnx):
    crash = tmp_path / "crash"
    crash.mkdir()
    # Loaded by the device's Python at start-up: the 6th clock reading (the 3rd timed run) kills it.
    (crash / "sitecustomize.py").write_text(textwrap.dedent("""\
        import os, signal, time
        _clock, _calls = time.perf_counter_ns, [0]
        def _dying_clock():
            _calls[0] += 1
            if _calls[0] > 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return _clock()
        time.perf_counter_ns = _dying_clock
        """))
    wrapper = tmp_path / "python-that-crashes"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={crash} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    device = write_device(tmp_path, "crashy", ssh_transport(lab, box, tmp_path / "r", python=str(wrapper), runner="standalone"))
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx), "--no-per-layer"))
    assert "stopped while measuring" in line and "the host still answers" in line and f"127.0.0.1:{box.port}" in line


def test_timeout_is_configurable(cli, lab, box, tmp_path, tiny_onnx):
    # 8 s: the facts request before the measurement (importing onnx, probing the channel block) must fit
    # on a loaded 2-core VM; 50 million runs of the tiny model cannot
    device = write_device(tmp_path, "slow", ssh_transport(lab, box, tmp_path / "r", timeout_s=8, runner="standalone"))
    started = time.monotonic()
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx), "--runs", "50000000",
                              "--warmup", "0", "--no-per-layer"))
    assert "timed out after 8 s" in line and "timeout_s" in line
    assert "measuring " in line  # the measurement ran into the limit, not the facts request before it
    assert time.monotonic() - started < 120


# -- pools ------------------------------------------------------------------------------------------

def pool_device(lab, tmp_path, servers, name="pool", **extra) -> Path:
    """A pool of the given servers, each its own board (its own cache folder, so its own board lock)."""
    hosts = [{"host": "127.0.0.1", "port": s.port, "workdir": str(tmp_path / f"board-{s.port}")} for s in servers]
    fields = ssh_transport(lab, None, tmp_path / "remote", **extra)
    fields.pop("host")
    return write_device(tmp_path, name, fields, hosts=hosts, settings={"runs": 3, "warmup": 1})


def test_measurements_never_overlap_on_one_board(lab, box, tmp_path, tiny_onnx):
    """Two names for one board (two ~/.ssh/config aliases, so two local locks), measured from two
    threads at once: the runner's own lock on the board serialises them; two threads on one name are
    serialised by the local lock."""
    a, b = lab.alias("board-a", box.port), lab.alias("board-b", box.port)
    profilers = []
    for name, alias in (("via-a", a), ("via-b", b), ("via-a-too", a)):
        fields = ssh_transport(lab, None, tmp_path / "one-board", host=alias, runner="standalone")
        profilers.append(RemoteProfiler(load_descriptor(write_device(tmp_path, name, fields))))
    settings = make_settings(profilers[0].descriptor, runs=3000, warmup=5, per_layer=False)  # ~0.1 s each
    artifact = ModelArtifact(tiny_onnx, (1, 3, 16, 16), name="tiny")
    errors = []

    def work(profiler):
        try:
            for _ in range(3):
                profiler.measure(artifact, settings)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(profiler,)) for profiler in profilers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    windows = sorted(call["window"] for profiler in profilers for call in profiler.calls)
    assert len(windows) == 9
    assert all(first[1] <= second[0] for first, second in zip(windows, windows[1:])), windows
    for profiler in profilers:
        profiler.close()


def test_host_lock_excludes_other_processes(tmp_path):
    lock = HostLock("pi@board:22")
    assert lock.try_acquire()
    code = "from hwcompress.devices.transport import HostLock; print(HostLock('pi@board:22').try_acquire())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert other.stdout.strip() == "False", other.stderr
    lock.release()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert other.stdout.strip() == "True"


def test_pool_spreads_a_recording_and_survives_a_host_dropping_out(lab, spare, tmp_path):
    first, second = spare(), spare()
    # The standalone runner starts in a moment (the plugin path imports PyTorch on the device), so the
    # second host joins early instead of after most of the grid.
    descriptor = load_descriptor(pool_device(lab, tmp_path, [first, second], runner="standalone"))
    profiler, _ = measuring_profiler(descriptor)
    settings = make_settings(descriptor)
    cut = []

    def progress(done, total, label):
        if done >= 4 and not cut:
            # Both runners start together at the pool's first use; on a loaded machine the second may
            # still be starting: hold the recording (this callback runs between submissions) until it is up.
            deadline = time.monotonic() + 60
            while not all(h.session is not None and h.session.process is not None for h in profiler.hosts):
                assert time.monotonic() < deadline, "the second host's runner never started"
                time.sleep(0.05)
            cut.append(done)
            second.stop()  # a power cut on the second board, mid-recording

    out = tmp_path / "pool.lut.json"
    model = resnet_cifar(depth=20).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notice is kept in profiler.dropped; a warning from a thread is best effort
        table = record_lut(model, (1, 3, 32, 32), descriptor, profiler, settings, out, points=2, quantum=8, widths=(),
                           calibrate=False, progress=progress)
    assert len(profiler.dropped) == 1 and f"127.0.0.1:{second.port} dropped out of pool's pool" in profiler.dropped[0]
    assert cut and cut[0] < len(table) == len(LatencyTable.load(out)) >= 20
    assert all(host.uses >= 1 for host in profiler.hosts)  # handed work to both
    assert {call["host"] for call in profiler.calls} >= {f"127.0.0.1:{first.port}"}
    assert profiler.hosts[1].down and "cannot reach" in profiler.hosts[1].down and profiler.workers == 1


@pytest.mark.slow
def test_pool_going_down_keeps_what_it_recorded_and_the_rerun_resumes(cli, lab, spare, tmp_path):
    first, second = spare(), spare()
    path = pool_device(lab, tmp_path, [first, second])
    descriptor = load_descriptor(path)
    profiler, _ = measuring_profiler(descriptor)
    settings = make_settings(descriptor)
    out = tmp_path / "pool.lut.json"

    def progress(done, total, label):
        if done >= 6 and first.process is not None:
            first.stop()
            second.stop()

    model = resnet_cifar(depth=20).eval()
    with pytest.raises(TransportError, match="every host of pool is down") as error, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dropped out" for the first to go, unless both went at once
        record_lut(model, (1, 3, 32, 32), descriptor, profiler, settings, out, points=2, quantum=8, widths=(),
                   calibrate=False, progress=progress)
    assert "\n" not in str(error.value)
    kept = LatencyTable.load(out)
    assert len(kept) >= 6
    medians = {key: entry.median for key, entry in kept.entries.items()}
    forget_remote_profilers()
    spare(first.port), spare(second.port)  # the boards are back
    result = cli("lut", "record", "--device-file", str(path), "-m", TINY_RESNET, "--input-shape", "1,3,32,32",
                 "--points", "2", "--quantum", "8", "--no-calibration", "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    done = LatencyTable.load(out)
    assert len(done) > len(kept)
    assert all(done.entries[key].median == median for key, median in medians.items())  # resumed, not re-measured


def test_a_pool_with_every_host_down_is_one_line(cli, lab, tmp_path, tiny_onnx):
    ports = [free_port(), free_port()]
    fields = ssh_transport(lab, None, tmp_path / "r", connect_timeout_s=5)
    fields.pop("host")
    device = write_device(tmp_path, "dark-rack", fields, hosts=[f"127.0.0.1:{p}" for p in ports])
    line = one_line_error(cli("profile", "--device-file", str(device), "-m", str(tiny_onnx)))
    assert "every host of dark-rack is down" in line and all(f"127.0.0.1:{p}" in line for p in ports)


def test_devices_lists_each_hosts_reachability(cli, lab, box, tmp_path):
    folder = tmp_path / "devices"
    folder.mkdir()
    dead = free_port()
    fields = ssh_transport(lab, None, tmp_path / "r", connect_timeout_s=5)
    fields.pop("host")
    write_device(folder, "rack", fields, hosts=[f"127.0.0.1:{box.port}", f"127.0.0.1:{dead}"])
    result = cli("devices", "--json", "-", env={"HWCOMPRESS_DEVICE_PATH": str(folder)})
    assert result.returncode == 0, result.stderr
    row = next(r for r in json.loads(result.stdout) if r["name"] == "rack")
    assert row["status"] == "measured" and row["transport"]["kind"] == "ssh"
    up, down = row["hosts"]
    assert up["up"] and "onnxruntime" in up["detail"]
    assert not down["up"] and f"127.0.0.1:{dead}" in down["detail"]
    table = cli("devices", env={"HWCOMPRESS_DEVICE_PATH": str(folder)})
    assert table.returncode == 0 and f"127.0.0.1:{dead}" in table.stdout


# -- adb, through a FAKE adb ------------------------------------------------------------------------

FAKE_ADB = '''#!{python}
"""fake-adb: a FAKE stand-in for Android's adb, for tests only. It knows one serial; `shell CMD` runs
CMD with sh on this machine (stdin and stdout passed through, exit status returned, as adb's shell
protocol does) and `push LOCAL REMOTE` copies the file. It proves hwcompress's adb plumbing, not a phone."""
import shutil, subprocess, sys
args = sys.argv[1:]
serial = args[1] if args[:1] == ["-s"] else None
args = args[2:] if serial else args
if serial != "FAKE0001":
    sys.stderr.write("adb: device '%s' not found\\n" % serial)
    sys.exit(1)
if args[0] == "shell":
    sys.exit(subprocess.call(["sh", "-c", args[1]]))
if args[0] == "push":
    shutil.copyfile(args[1], args[2])
    print("%s: 1 file pushed" % args[1])
    sys.exit(0)
sys.stderr.write("fake-adb: unsupported %r\\n" % args)
sys.exit(1)
'''


def test_adb_transport_through_a_fake_adb(cli, tmp_path, tiny_onnx):
    fake = tmp_path / "fake-adb"
    fake.write_text(FAKE_ADB.format(python=sys.executable))
    fake.chmod(0o755)
    fields = {"kind": "adb", "serial": "FAKE0001", "adb": str(fake), "interpreter": sys.executable,
              "workdir": str(tmp_path / "phone"), "runner": "standalone"}
    device = write_device(tmp_path, "fake-phone", fields)
    result = cli("profile", "--device-file", str(device), "-m", str(tiny_onnx), "--json", "-")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)["device"]["facts"]
    assert facts["host"] == "adb:FAKE0001" and facts["transport"] == "adb"
    assert len(list((tmp_path / "phone" / "models").glob("*.onnx"))) == 1  # pushed, then adopted by the runner
    unplugged = write_device(tmp_path, "unplugged", {**fields, "serial": "GONE42"})
    line = one_line_error(cli("profile", "--device-file", str(unplugged), "-m", str(tiny_onnx)))
    assert "adb device GONE42" in line and "adb devices" in line


def test_a_host_held_by_another_process_is_waited_for_then_refused(tmp_path, monkeypatch):
    """The local host lock is waited for, with a warning after 5 s, and given up after BOARD_WAIT_S with
    an error that names the lock (a process that hung holding it must not hang this one forever)."""
    from hwcompress.measure import remote

    device = write_device(tmp_path, "held", {"kind": "ssh", "host": "pi@held-board", "port": 22})
    profiler = RemoteProfiler(load_descriptor(device))
    other = HostLock(profiler.hosts[0].label)  # its own open file: to flock, another process
    assert other.try_acquire()
    monkeypatch.setattr(remote, "BOARD_WAIT_S", 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError, match=r"waited \d+ s for a free host of held: another hwcompress process"):
            profiler._acquire()
    finally:
        other.release()
    assert 0.3 <= time.monotonic() - started < 5
    host = profiler._acquire()  # free again: taken at once
    assert host is profiler.hosts[0]
    host.lock.release()
