"""A device descriptor: what the core knows about one target device, read from TOML.

A descriptor is data: a name and aliases, the profiler that measures on the device itself (and the
fallbacks to try when it is missing), how to tell whether this machine *is* that device, default
measurement settings, the channel multiple the search rounds to, and where a recorded latency lookup
table (LUT) lives for use away from the device. See the files in the repository's ``devices/`` folder.

A descriptor may also say how the device is *reached* (``[transport]``: ``ssh`` or ``adb``, one host or
a pool of them); measurements then run there (:mod:`hwcompress.measure.remote`), whatever this machine
is. docs/devices.md documents every field.
"""

from __future__ import annotations

import os
import platform
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from hwcompress.errors import UserError

SETTING_KEYS = {"runs", "warmup", "threads", "precision", "per_layer", "options"}
TRANSPORT_KINDS = ("ssh", "adb")
SSH_KEYS = {"kind", "host", "port", "user", "identity_file", "config_file", "options", "python", "interpreter", "workdir",
            "timeout_s", "connect_timeout_s", "runner", "hosts", "name"}
ADB_KEYS = {"kind", "serial", "adb", "python", "interpreter", "workdir", "timeout_s", "connect_timeout_s", "runner", "hosts",
            "name"}
RUNNER_MODES = ("auto", "standalone", "plugin")
#: Where the runner and the models it times are cached on the device (ssh: relative to the login's home).
SSH_WORKDIR = ".cache/hwcompress-runner"
#: adb shells run as Android's ``shell`` user, which may write here and nowhere in an app's folder.
ADB_WORKDIR = "/data/local/tmp/hwcompress-runner"


@dataclass(frozen=True)
class TransportSpec:
    """How one host of a remote device is reached: ``ssh`` (the system OpenSSH client, so
    ``~/.ssh/config``, agents and ProxyJump apply) or ``adb`` (``push`` and ``shell``).

    Attributes:
        kind: ``ssh`` or ``adb``.
        host, port, user, identity_file, config_file: ssh's destination and the client options
            ``-o Port=``, ``-o User=``, ``-o IdentityFile=`` (with ``IdentitiesOnly=yes``) and ``-F``,
            which ssh and scp both read (None: whatever ``~/.ssh/config`` says).
        options: extra ``-o Key=Value`` options for ssh and scp.
        serial: the phone's adb serial (``adb devices``); ``adb``: the adb executable.
        python: the interpreter on the device (a command line: ``python3``, a venv's python, Termux's).
        workdir: the device's cache folder for the runner and the models.
        timeout_s: the longest one measurement may take before it is abandoned.
        connect_timeout_s: how long to wait for the connection (ssh's ``ConnectTimeout``).
        runner: ``auto`` (the device's hwcompress profiler plugin where it imports there, else the
            standalone runner), ``standalone`` or ``plugin``.
    """

    kind: str
    host: str = ""
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    config_file: str | None = None
    options: tuple[str, ...] = ()
    serial: str = ""
    adb: str = "adb"
    python: str = "python3"
    workdir: str = SSH_WORKDIR
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    runner: str = "auto"
    name: str = ""

    @property
    def label(self) -> str:
        """How messages and facts name this host: ``user@host:port``, ``adb:SERIAL`` or the given name."""
        if self.name:
            return self.name
        if self.kind == "adb":
            return f"adb:{self.serial}"
        host = f"[{self.host}]" if ":" in self.host and self.port else self.host
        return f"{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"


@dataclass
class DeviceDescriptor:
    """One target device. See ``devices/*.toml`` for the file format."""

    name: str
    profiler: str
    description: str = ""
    aliases: list[str] = field(default_factory=list)
    detect: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    channel_multiple: int = 8
    lut: str | None = None
    record_hint: str = ""
    source: str = ""
    #: How the command line named it, where not by ``--device NAME`` (``--device-file PATH``): what a
    #: suggested command repeats (:attr:`option`).
    named_by: str = ""
    # Profilers to measure with, in order, when ``profiler`` is unavailable here (nvidia-gpu: ["cuda"]).
    fallback_profilers: list[str] = field(default_factory=list)
    # The hosts measurements run on (``[transport]``, ``hosts``); empty: this machine.
    transports: list[TransportSpec] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        """Whether measurements run on another machine reached over ``transports``."""
        return bool(self.transports)

    @property
    def profiler_names(self) -> list[str]:
        """The profiler, then its fallbacks: the order a measurement tries them in."""
        return [self.profiler, *[name for name in self.fallback_profilers if name != self.profiler]]

    @property
    def folder(self) -> Path | None:
        return Path(self.source).parent if self.source and Path(self.source).exists() else None

    def is_local(self) -> tuple[bool, str]:
        """Whether this machine is the device (so its profiler can measure here), and why not."""
        if self.transports:
            kinds = sorted({t.kind for t in self.transports})
            return False, f"{self.name} is reached over {'/'.join(kinds)} ({', '.join(t.label for t in self.transports)})"
        rule = self.detect
        if rule.get("always"):
            return True, ""
        if rule.get("never"):
            return False, f"{self.name} is never measured from here"
        if "file" in rule:
            path = Path(rule["file"])
            if not path.exists():
                return False, f"not running on a {self.name} ({path} not found)"
            needle = rule.get("contains")
            if needle:
                try:
                    text = path.read_bytes().decode("utf-8", "replace")
                except OSError:
                    text = ""
                if needle not in text:
                    return False, f"not running on a {self.name} ({path} does not mention {needle!r})"
            return True, ""
        if rule.get("nvidia_gpu"):
            return True, ""  # the profiler's own available() decides (driver, GPU visible)
        return True, ""

    def lut_path(self) -> Path | None:
        """The configured LUT file, resolved against the descriptor's folder and the user's data folder."""
        if not self.lut:
            return None
        candidate = Path(os.path.expanduser(self.lut))
        if candidate.is_absolute():
            return candidate
        for base in filter(None, [self.folder, user_data_dir() / "luts"]):
            if (base / candidate).exists():
                return base / candidate
        return (user_data_dir() / "luts" / candidate)

    @property
    def option(self) -> str:
        """The option a suggested command names this device with: ``--device NAME``, or ``--device-file
        PATH`` for a device described only by a file (``--device NAME`` would not find it)."""
        return self.named_by or f"--device {self.name}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            "profiler": self.profiler,
            "fallback_profilers": list(self.fallback_profilers),
            "channel_multiple": self.channel_multiple,
            "settings": dict(self.settings),
        }
        if self.transports:  # the device's machine is in the measurement's facts, not this one's
            out["transport"] = {"kind": self.transports[0].kind, "hosts": [t.label for t in self.transports]}
        else:
            out["machine"] = platform.machine()
        return out


def user_config_dir() -> Path:
    """The user's hwcompress config folder (``$HWCOMPRESS_CONFIG_DIR``, else the platform's)."""
    return Path(os.environ.get("HWCOMPRESS_CONFIG_DIR") or platformdirs.user_config_dir("hwcompress"))


def user_data_dir() -> Path:
    """The user's hwcompress data folder (``$HWCOMPRESS_DATA_DIR``, else the platform's): cached LUTs."""
    return Path(os.environ.get("HWCOMPRESS_DATA_DIR") or platformdirs.user_data_dir("hwcompress"))


def load_descriptor(path: str | os.PathLike[str]) -> DeviceDescriptor:
    """Read one device TOML file.

    Raises:
        UserError: unreadable file, bad TOML, or missing/invalid fields (one line naming the file).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"device file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read device file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"device file {path} is not valid TOML: {error}") from None
    return descriptor_from_dict(data, source=str(path))


def descriptor_from_dict(data: dict[str, Any], source: str = "") -> DeviceDescriptor:
    """Validate a parsed descriptor."""
    where = f"device file {source}" if source else "device descriptor"
    for key in ("name", "profiler"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"{where} needs a string field {key!r}")
    settings = data.get("settings", {})
    unknown = set(settings) - SETTING_KEYS
    if unknown:
        raise UserError(f"{where}: unknown settings {sorted(unknown)} (known: {sorted(SETTING_KEYS)})")
    multiple = data.get("channel_multiple", 8)
    if not isinstance(multiple, int) or multiple < 1:
        raise UserError(f"{where}: channel_multiple must be a positive integer")
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: aliases must be a list of strings")
    fallbacks = data.get("fallback_profilers", [])
    if not isinstance(fallbacks, list) or not all(isinstance(p, str) and p for p in fallbacks):
        raise UserError(f"{where}: fallback_profilers must be a list of profiler names")
    return DeviceDescriptor(
        name=data["name"],
        profiler=data["profiler"],
        description=data.get("description", ""),
        aliases=aliases,
        detect=dict(data.get("detect", {})),
        settings=dict(settings),
        channel_multiple=multiple,
        lut=data.get("lut"),
        record_hint=data.get("record_hint", ""),
        source=source,
        fallback_profilers=list(fallbacks),
        transports=parse_transports(data, where),
    )


def parse_transports(data: dict[str, Any], where: str) -> list[TransportSpec]:
    """The hosts of ``[transport]`` and ``hosts = [...]`` (in the table or beside it).

    Each pool entry is a table of fields that override the ``[transport]`` table's, or a string:
    ``user@host:port`` for ssh, the serial for adb.

    Raises:
        UserError: one line naming the file and the field.
    """
    table = data.get("transport")
    hosts = data.get("hosts")
    if table is None and hosts is None:
        return []
    if table is None:
        table = {"kind": "ssh"}
    if not isinstance(table, dict):
        raise UserError(f"{where}: transport must be a table ([transport] with kind = \"ssh\" or \"adb\")")
    table = dict(table)
    if "hosts" in table:
        if hosts is not None:
            raise UserError(f"{where}: give hosts once, in [transport] or beside it, not both")
        hosts = table.pop("hosts")
    kind = table.get("kind", "ssh" if hosts is not None else None)
    if kind not in TRANSPORT_KINDS:
        raise UserError(f"{where}: [transport] kind must be \"ssh\" or \"adb\" (got {kind!r})")
    if hosts is None:
        return [_transport_spec({**table, "kind": kind}, where, "[transport]")]
    if not isinstance(hosts, list) or not hosts:
        raise UserError(f"{where}: hosts must be a non-empty list of \"user@host:port\" strings or tables")
    specs = []
    for index, item in enumerate(hosts):
        what = f"hosts[{index}]"
        if isinstance(item, str):
            item = parse_host(item, where, what) if kind == "ssh" else {"serial": item}
        if not isinstance(item, dict):
            raise UserError(f"{where}: {what} must be a \"user@host:port\" string or a table (got {item!r})")
        if item.get("kind", kind) != kind:
            raise UserError(f"{where}: {what} is kind {item['kind']!r} but the pool is {kind!r}; one kind per device")
        specs.append(_transport_spec({**table, **item, "kind": kind}, where, what))
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"{where}: hosts lists {', '.join(repeated)} more than once")
    return specs


def parse_host(text: str, where: str, what: str) -> dict[str, Any]:
    """``user@host:port`` (user and port optional; ``[v6::addr]:port`` for IPv6) as transport fields."""
    rest = text.strip()
    fields_: dict[str, Any] = {}
    if "@" in rest:
        fields_["user"], rest = rest.rsplit("@", 1)
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
        if tail and not tail.startswith(":"):
            host = ""
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, None
    if not host or (port is not None and not port.isdigit()) or ("user" in fields_ and not fields_["user"]):
        raise UserError(f"{where}: {what} {text!r} is not \"user@host:port\" (user and port optional)")
    fields_["host"] = host
    if port is not None:
        fields_["port"] = int(port)
    return fields_


def _transport_spec(table: dict[str, Any], where: str, what: str) -> TransportSpec:
    kind = table["kind"]
    known = SSH_KEYS if kind == "ssh" else ADB_KEYS
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{where}: {what} has unknown field {unknown[0]!r} for kind {kind!r} (known: {', '.join(sorted(known))})")
    for key in ("host", "user", "identity_file", "config_file", "serial", "adb", "python", "interpreter", "workdir", "name"):
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            raise UserError(f"{where}: {what} field {key!r} must be a non-empty string")
    if "python" in table and "interpreter" in table and table["python"] != table["interpreter"]:
        raise UserError(f"{where}: {what} gives both python and interpreter; they are the same field")
    for key in ("python", "interpreter", "adb"):  # command lines: split like a shell would, so quotes must pair
        if key in table:
            try:
                shlex.split(table[key])
            except ValueError as error:
                raise UserError(f"{where}: {what} field {key!r} is not a valid command line ({error}): {table[key]!r}") from None
    values: dict[str, Any] = {"kind": kind}
    if kind == "ssh":
        if not table.get("host"):
            raise UserError(f"{where}: {what} needs host (an ssh destination or a Host from ~/.ssh/config)")
        port = table.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise UserError(f"{where}: {what} port must be an integer from 1 to 65535 (got {port!r})")
        values.update(host=table["host"], port=port, user=table.get("user"), identity_file=table.get("identity_file"),
                      config_file=table.get("config_file"), options=_ssh_options(table.get("options", {}), where, what))
    else:
        if not table.get("serial"):
            raise UserError(f"{where}: {what} needs serial (the phone's serial number from `adb devices`)")
        values.update(serial=table["serial"], adb=table.get("adb", "adb"), workdir=ADB_WORKDIR)
    for key in ("timeout_s", "connect_timeout_s"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UserError(f"{where}: {what} {key} must be a positive number of seconds (got {value!r})")
            values[key] = float(value)
    runner = table.get("runner", "auto")
    if runner not in RUNNER_MODES:
        raise UserError(f"{where}: {what} runner must be one of {', '.join(RUNNER_MODES)} (got {runner!r})")
    values["runner"] = runner
    for key in ("workdir", "name"):
        if key in table:
            values[key] = table[key]
    python = table.get("python", table.get("interpreter"))
    if python:
        values["python"] = python
    return TransportSpec(**values)


def _ssh_options(options: Any, where: str, what: str) -> tuple[str, ...]:
    """``{Key = "value"}`` or ``["Key=value", ...]`` as ssh ``-o`` arguments."""
    if isinstance(options, dict):
        items = []
        for key, value in options.items():
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise UserError(f"{where}: {what} options.{key} must be a string or an integer (ssh -o {key}=VALUE)")
            items.append(f"{key}={value}")
        return tuple(items)
    if isinstance(options, list) and all(isinstance(o, str) and "=" in o and not o.startswith("-") for o in options):
        return tuple(options)
    raise UserError(f"{where}: {what} options must be a table ({{ StrictHostKeyChecking = \"yes\" }}) "
                    "or a list of \"Key=value\" strings")


