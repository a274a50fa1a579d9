"""Reaching a remote device: run a command there, start a long-lived process, copy a file.

Two transports, both through the system's own clients so that what works by hand works here:

* ``ssh``: OpenSSH's ``ssh`` and ``scp``. ``~/.ssh/config`` (Host aliases, ProxyJump, ControlMaster),
  the agent and known_hosts apply; ``BatchMode=yes`` turns every prompt into a failure (a hidden
  password prompt would hang a search), ``ConnectTimeout`` bounds a dead host, and server keep-alives
  (every 10 s, 3 missed) notice a board that drops off the network mid-measurement within 30 s.
* ``adb``: ``adb -s SERIAL push`` and ``adb -s SERIAL shell``, for phones.

A transport turns the client's failures into one line that says what to do
(:meth:`Transport.failure`): :class:`HostUnreachable` (the host and port, or the serial), which a pool
survives by going on without that host, and :class:`AuthRefused`.

:class:`HostLock` is the workstation's side of "one measurement at a time per board": a lock file per
host in the user data folder (``host-locks/``), held by whichever process (or thread) measures there.
The runner on the device holds a second lock (:mod:`hwcompress.measure.runner`), for workstations that
do not share this folder.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from hwcompress.devices.descriptor import TransportSpec, user_data_dir
from hwcompress.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: the in-process lock still serialises this process's measurements
    fcntl = None

#: ssh's stderr when the network (not the login) failed: the host is down, or went down.
UNREACHABLE_PATTERNS = ("Connection refused", "Connection timed out", "No route to host", "Network is unreachable",
                        "Operation timed out", "Connection reset", "closed by remote host", "Broken pipe",
                        "kex_exchange_identification", "Connection closed by", "Could not resolve hostname",
                        "Timeout, server", "timed out", "Name or service not known")


class TransportError(UserError):
    """A remote device could not be used: one line (exit code 2)."""


class HostUnreachable(TransportError):
    """The host cannot be reached, or the connection to it was lost: a pool goes on without it."""


class AuthRefused(TransportError):
    """The host answered but refused the login (ssh) or the debugging session (adb)."""


@dataclass
class Completed:
    """What a remote command left: its exit status, its output and the last of its errors."""

    returncode: int
    stdout: bytes
    stderr: str


def last_line(text: str) -> str:
    """The last line that says something (ssh's "Warning: Permanently added" says nothing useful)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Warning: Permanently added")]
    return lines[-1] if lines else ""


class Transport:
    """Run commands on one host (see the module docstring). Subclasses build the client's argv."""

    kind = ""

    def __init__(self, spec: TransportSpec) -> None:
        self.spec = spec
        self.label = spec.label

    def argv(self, command: str) -> list[str]:
        raise NotImplementedError

    def put_argv(self, local: Path, remote: str) -> list[str]:
        raise NotImplementedError

    def where(self) -> str:
        """The host as messages name it (``host:port`` for ssh, ``adb device SERIAL``)."""
        return self.label

    def failure(self, returncode: int, stderr: str, doing: str) -> TransportError | None:
        """The transport-level failure behind ``returncode``/``stderr``, or None when the client
        worked and the remote command itself failed."""
        raise NotImplementedError

    def _client(self, argv: list[str], **kwargs) -> subprocess.Popen:
        try:
            return subprocess.Popen(argv, **kwargs)
        except FileNotFoundError:
            raise TransportError(self.missing_client()) from None

    def missing_client(self) -> str:
        raise NotImplementedError

    def run(self, command: str, *, timeout: float, input: bytes | None = None, doing: str = "") -> Completed:
        """Run a shell command on the host and wait for it.

        Raises:
            TransportError: the client is missing, the command ran past ``timeout``, or the transport
                failed (:meth:`failure`); a command that merely fails returns its status.
        """
        process = self._client(self.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise HostUnreachable(f"{doing or 'a command'} on {self.where()} timed out after {timeout:g} s") from None
        stderr = err.decode("utf-8", "replace")
        failure = self.failure(process.returncode, stderr, doing or "running a command")
        if failure is not None:
            raise failure
        return Completed(process.returncode, out, stderr)

    def spawn(self, command: str) -> subprocess.Popen:
        """Start a shell command on the host with its stdin, stdout and stderr as pipes."""
        return self._client(self.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

    def put(self, local: str | os.PathLike[str], remote: str, *, timeout: float) -> None:
        """Copy a local file to ``remote`` (an absolute path on the host)."""
        process = self._client(self.put_argv(Path(local), remote), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise HostUnreachable(f"copying {Path(local).name} to {self.where()} timed out after {timeout:g} s") from None
        stderr = err.decode("utf-8", "replace")
        failure = self.failure(process.returncode, stderr, f"copying {Path(local).name}")
        if failure is not None:
            raise failure
        if process.returncode != 0:
            raise TransportError(f"copying {Path(local).name} to {self.where()}:{remote} failed: "
                                 f"{last_line(stderr) or f'exit code {process.returncode}'}")

    def reachable(self) -> str:
        """``""`` when the host answers a trivial command, else why not (one line)."""
        try:
            self.run("true", timeout=self.spec.connect_timeout_s + 10, doing="a connection check")
        except TransportError as error:
            return str(error)
        return ""


class SshTransport(Transport):
    """The system's OpenSSH client (``ssh``, ``scp``)."""

    kind = "ssh"

    def __init__(self, spec: TransportSpec) -> None:
        super().__init__(spec)
        self._where: str | None = None

    def options(self) -> list[str]:
        spec = self.spec
        # The first value ssh obtains for an option wins: these come before ~/.ssh/config's.
        out = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(spec.connect_timeout_s))}",
               "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
        if spec.config_file:
            out += ["-F", os.path.expanduser(spec.config_file)]
        if spec.port:
            out += ["-o", f"Port={spec.port}"]
        if spec.user:
            out += ["-o", f"User={spec.user}"]
        if spec.identity_file:
            out += ["-o", f"IdentityFile={os.path.expanduser(spec.identity_file)}", "-o", "IdentitiesOnly=yes"]
        for option in spec.options:
            out += ["-o", option]
        return out

    def argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), "-T", "--", self.spec.host, command]

    def put_argv(self, local: Path, remote: str) -> list[str]:
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        legacy = ["-O"] if self._legacy_scp else []
        return ["scp", "-q", *legacy, *self.options(), "--", str(local), f"{host}:{remote}"]

    _legacy_scp = False

    def put(self, local: str | os.PathLike[str], remote: str, *, timeout: float) -> None:
        """``scp`` (SFTP underneath since OpenSSH 9); boards without an SFTP server (dropbear, a
        minimal sshd_config) close that channel at once, and get the legacy protocol (``scp -O``)."""
        try:
            super().put(local, remote, timeout=timeout)
        except HostUnreachable:
            raise
        except TransportError as error:
            if self._legacy_scp or not re.search(r"scp: Connection closed|subsystem request failed", str(error)):
                raise
            self._legacy_scp = True
            super().put(local, remote, timeout=timeout)

    def missing_client(self) -> str:
        return "the OpenSSH client (ssh) is not installed here; install it (Debian/Ubuntu: apt install openssh-client)"

    def where(self) -> str:
        """``user@hostname:port`` as ssh resolves it (``ssh -G`` applies ~/.ssh/config; no connection)."""
        if self._where is None:
            spec = self.spec
            resolved = {"hostname": spec.host, "port": str(spec.port or 22), "user": spec.user or ""}
            try:
                out = subprocess.run(["ssh", "-G", *self.options(), "--", spec.host], capture_output=True, text=True,
                                     timeout=10).stdout
                for line in out.splitlines():
                    key, _, value = line.partition(" ")
                    if key in resolved and value:
                        resolved[key] = value
            except (OSError, subprocess.SubprocessError):
                pass
            host = f"[{resolved['hostname']}]" if ":" in resolved["hostname"] else resolved["hostname"]
            user = f"{resolved['user']}@" if resolved["user"] else ""
            self._where = f"{user}{host}:{resolved['port']}"
        return self._where

    def failure(self, returncode: int, stderr: str, doing: str) -> TransportError | None:
        if returncode not in (0, 255) and doing.startswith("copying") and (
                "lost connection" in stderr or any(pattern in stderr for pattern in UNREACHABLE_PATTERNS)):
            # scp exits 1 whatever went wrong, its ssh failing to connect included: read what it said
            return HostUnreachable(f"cannot reach {self.where()} over scp while {doing}: {last_line(stderr)}")
        if returncode != 255:
            return None  # ssh worked; the remote command's own status
        line = last_line(stderr)
        if "Permission denied" in stderr:
            return AuthRefused(f"ssh to {self.where()} refused the login while {doing} ({line}); check user and "
                               "identity_file in [transport], that the key is in the device's ~/.ssh/authorized_keys, "
                               f"and that `ssh {self.spec.host}` works without a prompt")
        if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return AuthRefused(f"ssh to {self.where()}: host key verification failed (unknown or changed key); "
                               f"connect once by hand (`ssh {self.spec.host}`) to check and accept it")
        if any(pattern in stderr for pattern in UNREACHABLE_PATTERNS):
            return HostUnreachable(f"cannot reach {self.where()} over ssh while {doing}: {line}")
        return HostUnreachable(f"ssh to {self.where()} failed while {doing}: {line or 'exit code 255, no message'}")


class AdbTransport(Transport):
    """Android's debug bridge: ``adb -s SERIAL shell`` and ``push`` (commands run as the shell user)."""

    kind = "adb"

    def argv(self, command: str) -> list[str]:
        return [*shlex.split(self.spec.adb), "-s", self.spec.serial, "shell", command]

    def put_argv(self, local: Path, remote: str) -> list[str]:
        return [*shlex.split(self.spec.adb), "-s", self.spec.serial, "push", str(local), remote]

    def where(self) -> str:
        return f"adb device {self.spec.serial}"

    def missing_client(self) -> str:
        return (f"adb ({self.spec.adb}) is not installed here; install Android's platform-tools "
                "(Debian/Ubuntu: apt install adb) or set adb = \"/path/to/adb\" in [transport]")

    def failure(self, returncode: int, stderr: str, doing: str) -> TransportError | None:
        if returncode == 0:
            return None
        text = stderr.lower()
        line = last_line(stderr)
        serial = self.spec.serial
        if "unauthorized" in text:
            return AuthRefused(f"adb device {serial} is unauthorized: unlock the phone and accept the USB debugging "
                               "prompt (`adb devices` must say 'device')")
        if re.search(r"device .*not found|no devices|device offline|device still connecting|^error: closed|no emulators", text, re.M):
            return HostUnreachable(f"cannot reach adb device {serial} while {doing}: {line} "
                                   "(`adb devices` must list it as 'device'; check the cable or `adb connect`)")
        return None


def make_transport(spec: TransportSpec) -> Transport:
    """The transport for ``spec.kind``."""
    return SshTransport(spec) if spec.kind == "ssh" else AdbTransport(spec)


def host_lock_dir() -> Path:
    return user_data_dir() / "host-locks"


class HostLock:
    """One measurement at a time on one host, across threads and processes of this workstation.

    A thread lock for this process plus ``flock`` on ``<user data>/host-locks/<host>.lock`` for the
    others; both are taken without blocking (:meth:`try_acquire`) so that a pool can hand the
    measurement to whichever host is free.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", label)
        self.path = host_lock_dir() / f"{safe}.lock"
        self._thread = threading.Lock()
        self._handle = None
        #: The last failed :meth:`try_acquire` met another process's lock (not this process's).
        self.held_elsewhere = False

    def try_acquire(self) -> bool:
        self.held_elsewhere = False
        if not self._thread.acquire(blocking=False):
            return False
        if fcntl is None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as error:
            self._thread.release()
            raise TransportError(f"cannot create the host lock {self.path}: {error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            self._thread.release()
            self.held_elsewhere = True
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        self._thread.release()
