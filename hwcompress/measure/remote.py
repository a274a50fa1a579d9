"""Measuring on a device reached over ssh or adb: the profiler contract, served by a runner there.

:func:`hwcompress.measure.resolve.resolve_timing` hands out a :class:`RemoteProfiler` for a device whose
descriptor has a ``[transport]``, so profile, compare, ``lut record`` and the search measure on the
device itself. Per host, the first measurement:

1. makes the device's cache folder and copies :mod:`hwcompress.measure.runner` there once, named by
   its content hash (a new hwcompress version brings a new file; an old one is never run);
2. starts the runner with the device's interpreter and keeps it for the whole command (one ssh
   connection, the runtime imported once);
3. ships each ONNX file once, by content hash (the teacher of a search crosses once, not per round).

Each measurement then costs one request and its reply: 1.8 ms median (2.1 ms p90) over ssh to
127.0.0.1 on this project's 2-vCPU Xeon for a model already there, where a fresh ssh connection alone
took 0.34 s; starting the runner costs 1.5-1.8 s once, shipping a 45 MB resnet18 0.24 s once. The
latency measured there agrees with a local measurement of the same files within noise: median ratio
remote/local 1.005 through the plugin, 0.992 standalone, over 16 interleaved rounds of three models
(``bench/transport_overhead.py``).

A pool (``hosts = [...]``) hands each measurement to a free host, never two at once to one host
(:class:`~hwcompress.devices.transport.HostLock`), preferring the host a thread used last so that an
interleaved comparison stays on one board. ``workers`` tells the LUT recorder how many measurements
may run at once. A host that stops answering is dropped with a warning and the work goes on with the
others; with none left, one line says why each went. Every other fault (authentication, a missing
interpreter or runtime, the runner crashing, a timeout) is one line too, naming the host.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import secrets
import shlex
import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hwcompress.devices import DeviceDescriptor
from hwcompress.devices.descriptor import TransportSpec
from hwcompress.devices.transport import HostLock, HostUnreachable, Transport, TransportError, make_transport
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.plugins import manager

RUNNER = Path(__file__).with_name("runner.py")
#: How long a runner may take to start and import its runtime (onnxruntime: seconds on a Pi; the
#: plugin path imports PyTorch too), on top of the connection timeout.
STARTUP_S = 120.0
#: How long a measurement waits for a board that another workstation measures on (its runner's lock),
#: and for a host another process of this workstation holds (its local lock): a LUT recording there
#: takes minutes to an hour.
BOARD_WAIT_S = 3600.0
#: A pool host that went away is tried again after this long, when no other host is up (a process that
#: lives on, a notebook, must not give up on a board for good after one dropped connection).
RETRY_DOWN_S = 60.0
#: Probe results are reused this long (``hwcompress devices`` asks twice per device).
PROBE_CACHE_S = 30.0


class RunnerCrashed(TransportError):
    """The runner stopped while the host still answers: the runtime crashed on that request."""


def runner_source() -> tuple[Path, str]:
    """The runner script and the first 16 hex digits of its SHA-256 (its name on the device)."""
    return RUNNER, hashlib.sha256(RUNNER.read_bytes()).hexdigest()[:16]


_hashes: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, inode, size, mtime): a 45 MB resnet18 takes 60 ms to hash."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _python_command(spec: TransportSpec) -> str:
    """The remote interpreter's command line, quoted for the remote shell; a leading ``~/`` stays unquoted
    so that the remote shell expands it to the remote user's home."""
    return " ".join("~/" + shlex.quote(part[2:]) if part.startswith("~/") else shlex.quote(part)
                    for part in shlex.split(spec.python))


def install_hint(spec: TransportSpec, missing: str, profiler: str) -> str:
    """What to install on the device, as a command to type there."""
    python = spec.python
    if "hwcompress" in missing:
        return f"install them there: {python} -m pip install hwcompress hwcompress-profiler-{profiler}"
    termux = " (Termux: pkg install python-onnxruntime)" if spec.kind == "adb" else ""
    return f"install them there: {python} -m pip install onnxruntime numpy{termux}"


class RunnerSession:
    """One runner process on one host, spoken to through the transport's pipes (JSON lines)."""

    def __init__(self, transport: Transport, profiler: str) -> None:
        self.transport = transport
        self.spec = transport.spec
        self.profiler = profiler
        self.process = None
        self.hello: dict[str, Any] = {}
        self.workdir = ""
        self._lines: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)

    # -- starting ---------------------------------------------------------------------------------
    def start(self) -> None:
        spec, transport = self.spec, self.transport
        script, sha = runner_source()
        folder = spec.workdir[2:] if spec.workdir.startswith("~/") else spec.workdir  # ssh starts in $HOME
        name = f"runner-{sha}.py"
        answer = transport.run(f"mkdir -p {shlex.quote(folder)} && cd {shlex.quote(folder)} && pwd && "
                               f"if [ -f {name} ]; then echo have; else echo need; fi",
                               timeout=spec.connect_timeout_s + 30, doing="preparing the runner folder")
        lines = answer.stdout.decode("utf-8", "replace").split()
        if answer.returncode != 0 or len(lines) < 2:
            raise TransportError(f"cannot use the folder {spec.workdir} on {transport.where()}: "
                                 f"{answer.stderr.strip().splitlines()[-1] if answer.stderr.strip() else 'no answer'}")
        self.workdir, state = lines[-2], lines[-1]
        remote = f"{self.workdir}/{name}"
        if state == "need":
            part = f"{remote}.part-{secrets.token_hex(6)}"  # two workstations (or two names of one board) may race
            transport.put(script, part, timeout=spec.connect_timeout_s + 60)
            moved = transport.run(f"mv -f {shlex.quote(part)} {shlex.quote(remote)}", timeout=spec.connect_timeout_s + 30,
                                  doing="installing the runner")
            if moved.returncode != 0:
                raise TransportError(f"cannot install the runner at {remote} on {transport.where()}: {moved.stderr.strip()}")
        command = (f"exec {_python_command(spec)} -u {shlex.quote(remote)} --serve --workdir {shlex.quote(self.workdir)} "
                   f"--profiler {shlex.quote(self.profiler)} --mode {spec.runner}")
        self.process = transport.spawn(command)
        threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.process,), daemon=True).start()
        hello = self._receive(spec.connect_timeout_s + STARTUP_S, "starting the runner")
        if hello.get("hello") is None:
            self.close()
            raise TransportError(f"the runner on {self.label} answered {str(hello)[:120]!r} instead of its greeting")
        self.hello = hello
        if hello.get("missing"):
            self.close()
            raise TransportError(f"{self.label} cannot measure: {hello['missing']}; "
                                 f"{install_hint(spec, hello['missing'], self.profiler)}")

    @property
    def label(self) -> str:
        return self.spec.label

    def _read_stdout(self, process) -> None:
        with process.stdout:
            for line in process.stdout:
                self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self, process) -> None:
        with process.stderr:
            for line in process.stderr:
                self._stderr.append(line.decode("utf-8", "replace").rstrip())

    # -- talking ----------------------------------------------------------------------------------
    def request(self, message: dict[str, Any], doing: str, timeout: float, payload: Path | None = None) -> dict[str, Any]:
        """Send one request (and a file's bytes after it) and return the reply.

        Raises:
            TransportError: the host went away, the runner stopped, the reply took longer than
                ``timeout``, or the runner refused the request (its one line).
        """
        try:
            try:
                self.process.stdin.write((json.dumps(message) + "\n").encode())
                if payload is not None:
                    with open(payload, "rb") as handle:
                        for block in iter(lambda: handle.read(1 << 20), b""):
                            self.process.stdin.write(block)
                self.process.stdin.flush()
            except OSError:
                pass  # the reader sees the end of the stream and says why
            reply = self._receive(timeout, doing)
            while "waiting" in reply or "started" in reply:  # the board is busy: waiting for it is not measuring
                reply = self._receive(BOARD_WAIT_S + 30 if "waiting" in reply else timeout,
                                      f"waiting for the board ({reply['waiting']})" if "waiting" in reply else doing)
        except BaseException:
            # Ctrl-C mid-request (or mid-upload): the reply still on its way, or the rest of a model's bytes,
            # must never answer the next request.
            self.close(kill=True)
            raise
        if not reply.get("ok"):
            if payload is not None:  # a failed upload may leave bytes in the stream: start a clean session
                self.close(kill=True)
            raise TransportError(f"{self.label} could not finish {doing}: {reply.get('error', 'no reason given')}")
        return reply

    def _receive(self, timeout: float, doing: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close(kill=True)
            raise TransportError(f"{doing} on {self.label} timed out after {timeout:g} s "
                                 "(timeout_s in the device's [transport] sets the limit)") from None
        if line is None:
            raise self._stopped(doing)
        try:
            return json.loads(line)
        except ValueError:
            self.close(kill=True)
            raise TransportError(f"the runner on {self.label} wrote {line[:80]!r} while {doing}; "
                                 "something on the device prints to the session (a login script?)") from None

    def _stopped(self, doing: str) -> TransportError:
        """Why the runner's output ended: the host is gone, the login or interpreter failed, or it crashed."""
        try:
            code = self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            code = self.process.wait()
        time.sleep(0.05)  # the stderr reader's last lines
        stderr = "\n".join(self._stderr)
        try:
            self.process.stdin.close()
        except OSError:
            pass
        self.process = None
        failure = self.transport.failure(code, stderr, doing)
        tail = next((line for line in reversed(self._stderr) if line.strip()), "")
        if code in (126, 127) or (code not in (0, 255) and not self.hello and ("not found" in stderr or "No such file" in stderr)):
            return TransportError(f"the interpreter {self.spec.python!r} is missing on {self.label} ({tail}); install "
                                  "Python 3 there (Raspberry Pi OS/Debian: sudo apt install python3; Termux: pkg install "
                                  "python) or set python = \"/path/to/python3\" in [transport]")
        if not self.hello and "SyntaxError" in stderr:
            return TransportError(f"{self.spec.python!r} on {self.label} is not Python 3.8 or newer ({tail}); "
                                  "set python = \"/path/to/python3\" in [transport]")
        if failure is not None and not isinstance(failure, HostUnreachable):
            return failure  # refused, not gone
        reachable = self.transport.reachable()
        if reachable:  # the connection, not the runner, went away
            return failure if failure is not None and "no message" not in str(failure) else HostUnreachable(reachable)
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if code == 255 and self.spec.kind == "ssh":
            how = "killed by a signal or a lost session: ssh exit code 255"
        elif code == 124:
            how = "it gave up at its own time limit"
        return RunnerCrashed(f"the runner on {self.label} stopped while {doing} ({how}){': ' + tail if tail else ''}; "
                             "the host still answers, so the runtime crashed or was killed there; nothing measured "
                             "so far is lost")

    def close(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if not kill:
                process.stdin.write(b'{"op": "bye"}\n')
                process.stdin.flush()
        except OSError:
            pass  # already gone
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=0.1 if kill else 3)
        except Exception:
            pass
        if process.poll() is None:
            process.kill()
            process.wait()


class RemoteHost:
    """One host of a remote device: its transport, its lock, its runner session, whether it is up."""

    def __init__(self, spec: TransportSpec, profiler: str) -> None:
        self.spec = spec
        self.label = spec.label
        self.transport = make_transport(spec)
        self.lock = HostLock(spec.label)
        self.profiler = profiler
        self.session: RunnerSession | None = None
        self.down: str | None = None
        self.down_at = 0.0  # time.monotonic() when it went down
        self.models: set[str] = set()
        self.uses = 0

    def ensure_session(self) -> RunnerSession:
        if self.session is None or self.session.process is None:
            session = RunnerSession(self.transport, self.profiler)
            session.start()
            self.session, self.models = session, set()
        return self.session

    def call(self, message: dict[str, Any], doing: str, timeout: float, payload: Path | None = None) -> dict[str, Any]:
        session = self.ensure_session()
        try:
            return session.request(message, doing, timeout, payload)
        except TransportError:
            if session.process is None:
                self.session = None  # a new runner next time
            raise

    def ship(self, path: Path) -> tuple[str, int]:
        """Make sure the host has ``path`` (by content hash); returns the hash and the bytes sent."""
        sha = file_sha256(path)
        if sha in self.models:
            return sha, 0
        timeout = self.spec.timeout_s
        if self.call({"op": "has", "sha": sha}, f"checking for {path.name}", timeout)["have"]:
            self.models.add(sha)
            return sha, 0
        size = path.stat().st_size
        if self.spec.kind == "ssh":  # the session's own channel: no new connection per file
            self.call({"op": "put", "sha": sha, "size": size}, f"receiving {path.name}", timeout, payload=path)
        else:
            part = f"{self.session.workdir}/models/{sha}.onnx.push"
            self.transport.put(path, part, timeout=timeout)
            self.call({"op": "adopt", "sha": sha, "path": part}, f"receiving {path.name}", timeout)
        self.models.add(sha)
        return sha, size

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def _settings_document(settings: ProfileSettings) -> dict[str, Any]:
    return json.loads(json.dumps(settings.to_dict(), default=str))


@dataclass
class HostStatus:
    """One host's answer to :meth:`RemoteProfiler.probe`."""

    host: str
    up: bool
    detail: str
    facts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "up": self.up, "detail": self.detail}


class RemoteProfiler:
    """The profiler contract, measured by the runner on the device's host(s); see the module docstring.

    Args:
        descriptor: a device with ``transports``.
        profiler: the profiler that measures on the device (default: the descriptor's).
    """

    def __init__(self, descriptor: DeviceDescriptor, profiler: str | None = None) -> None:
        if not descriptor.transports:
            raise ValueError(f"device {descriptor.name} has no [transport]")
        self.descriptor = descriptor
        self.name = profiler or descriptor.profiler
        self.kind = descriptor.transports[0].kind
        self.hosts = [RemoteHost(spec, self.name) for spec in descriptor.transports]
        self.description = f"{self.name} on {descriptor.name} over {self.kind} ({', '.join(h.label for h in self.hosts)})"
        #: The latest measurements' bookkeeping: host, wall time of the call (shipping included), the
        #: runner's own measuring time, its window (epoch seconds, board lock held), bytes sent.
        self.calls: deque[dict[str, Any]] = deque(maxlen=1000)
        self._local = threading.local()
        self._facts: dict[int, dict[str, Any]] = {}
        self._probed: tuple[float, list[HostStatus]] | None = None
        self._warmed = False
        self._precisions: tuple[str, ...] | None = None
        #: Hosts that dropped out, one line each (``lut record`` repeats them at the end).
        self.dropped: list[str] = []
        self._finalizer = weakref.finalize(self, _close_hosts, list(self.hosts))

    def __repr__(self) -> str:
        return f"RemoteProfiler({self.description})"

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions the device's profiler runs: ONNX Runtime's fp32 and int8 (Q/DQ models) without
        asking; for another profiler, what its plugin on the device says (this connects)."""
        if self.name == "onnxruntime":
            return ("fp32", "int8")
        if self._precisions is None:
            (_, host) = self._on_a_host(lambda h: h.ensure_session())
            self._precisions = tuple(str(p) for p in host.session.hello.get("precisions") or ())
        return self._precisions

    @property
    def workers(self) -> int:
        """How many measurements may run at once: one per host still up."""
        return max(1, sum(1 for host in self.hosts if host.down is None))

    def available(self) -> tuple[bool, str]:
        """Cheap: no connection (:meth:`probe` connects). False once every host has dropped out."""
        down = [f"{h.label}: {h.down}" for h in self.hosts if h.down is not None]
        if len(down) == len(self.hosts):
            return False, "; ".join(down)
        return True, ""

    # -- the contract -----------------------------------------------------------------------------
    def facts(self, settings: ProfileSettings) -> dict[str, Any]:
        threads = int(settings.threads)
        if threads not in self._facts:
            reply, host = self._on_a_host(lambda h: h.call({"op": "facts", "settings": _settings_document(settings)},
                                                           "reading the device's facts", h.spec.timeout_s))
            self._facts[threads] = {**reply["facts"], "host": host.label, "transport": self.kind}
        return dict(self._facts[threads])

    def logical_cores(self) -> int | None:
        """The device's logical cores (from its facts), for the thread-count check."""
        cores = self.facts(ProfileSettings()).get("logical_cores")
        return int(cores) if isinstance(cores, int) else None

    def measure(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        return self._measure(artifact, settings, "measure")

    def layout_conversions(self, settings: ProfileSettings) -> dict[str, Any] | None:
        """What the runtime's layout conversions cost on the device (the plugin contract's optional probe,
        for ``lut record --off-path``), timed there by the runner; None where it has no blocked layout."""
        return self._probe(settings, "conversions", "timing layout conversions")

    def non_layer_costs(self, settings: ProfileSettings) -> dict[str, Any] | None:
        """What the work between layers costs on the device (the plugin contract's optional probe, for
        ``lut record --off-path``), timed there by the runner's plugin; None where it cannot time it."""
        return self._probe(settings, "non_layer", "timing the work between layers", answer="costs")

    def _probe(self, settings: ProfileSettings, op: str, doing: str, answer: str | None = None) -> dict[str, Any] | None:
        def run(host: RemoteHost) -> dict[str, Any]:
            message = {"op": op, "settings": _settings_document(settings), "lock_timeout_s": BOARD_WAIT_S,
                       "timeout_s": host.spec.timeout_s}
            return host.call(message, doing, host.spec.timeout_s)

        reply, _ = self._on_a_host(run)
        return reply.get(answer or op)

    def measure_unit(self, artifact: ModelArtifact, settings: ProfileSettings) -> Measurement:
        """The in-network time of a tiny model, as the device's profiler's ``measure_unit`` times it."""
        return self._measure(artifact, settings, "unit")

    def _measure(self, artifact: ModelArtifact, settings: ProfileSettings, mode: str) -> Measurement:
        if artifact.onnx_path is None:
            raise TransportError(f"measuring on {self.descriptor.name} needs the ONNX file of {artifact.name}")
        path = Path(artifact.onnx_path)
        doing = f"measuring {artifact.name}"

        def run(host: RemoteHost) -> tuple[dict[str, Any], dict[str, Any]]:
            started = time.perf_counter()
            sha, sent = host.ship(path)
            spec = host.spec
            message = {"op": "measure", "sha": sha, "input_shape": list(artifact.input_shape), "mode": mode,
                       "settings": _settings_document(settings), "timeout_s": spec.timeout_s, "lock_timeout_s": BOARD_WAIT_S}
            reply = host.call(message, doing, spec.timeout_s)
            call = {"host": host.label, "model": artifact.name, "wall_s": time.perf_counter() - started,
                    "work_s": float(reply.get("work_s", 0.0)), "window": reply.get("window"), "sent_bytes": sent}
            return reply, call

        (reply, call), host = self._on_a_host(run)
        self.calls.append(call)
        return self._measurement(reply, host)

    def _measurement(self, reply: dict[str, Any], host: RemoteHost) -> Measurement:
        try:
            return self._parse(reply, host)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise TransportError(f"the runner on {host.label} sent a malformed measurement "
                                 f"({type(error).__name__}: {error}); is it the runner of this hwcompress version?") from None

    def _parse(self, reply: dict[str, Any], host: RemoteHost) -> Measurement:
        if reply.get("samples_ms"):
            latency = LatencyStats.from_samples(reply["samples_ms"])
        elif isinstance(reply.get("latency"), dict):
            latency = LatencyStats(**{k: reply["latency"][k] for k in ("median", "mean", "p90", "p99", "std", "min", "max", "runs")})
        else:
            raise TransportError(f"the runner on {host.label} returned no timings")
        if not (isinstance(latency.median, (int, float)) and math.isfinite(latency.median) and latency.median >= 0):
            raise TransportError(f"the runner on {host.label} reported a median latency of {latency.median!r} ms")
        facts = {**(reply.get("facts") or {}), "host": host.label, "transport": self.kind}
        notes = list(reply.get("notes") or [])
        session = host.session
        if session is not None and session.hello.get("note") and self.descriptor.transports[0].runner == "auto":
            notes.append(f"on {host.label}: {session.hello['note']}")
        node_ms = reply.get("node_ms")
        return Measurement(latency=latency, node_ms={str(k): float(v) for k, v in node_ms.items()} if node_ms else None,
                           facts=facts, notes=notes)

    # -- the pool ---------------------------------------------------------------------------------
    def _acquire(self) -> RemoteHost:
        """A free host that is up, locked for the caller: the thread's last one when free."""
        preferred = getattr(self._local, "host", None)
        waited_since = time.monotonic()
        told = False
        while True:
            up = [h for h in self.hosts if h.down is None]
            if not up:  # hosts that went away a while ago get another chance before the pool gives up
                for host in self.hosts:
                    if time.monotonic() - host.down_at > RETRY_DOWN_S:
                        host.down = None
                up = [h for h in self.hosts if h.down is None]
            if not up:
                raise TransportError(f"every host of {self.descriptor.name} is down: "
                                     + "; ".join(f"{h.label}: {h.down}" for h in self.hosts))
            for host in sorted(up, key=lambda h: (h is not preferred, h.uses)):
                if host.lock.try_acquire():
                    self._local.host = host
                    host.uses += 1
                    return host
            elsewhere = all(h.lock.held_elsewhere for h in up)
            if not elsewhere:
                waited_since = time.monotonic()  # only another process's hold counts towards giving up
            waited = time.monotonic() - waited_since
            if not told and waited > 5 and elsewhere:
                told = True  # (this process's own measurements queueing for a host is no news)
                warnings.warn(f"waiting for a free host of {self.descriptor.name}: another hwcompress process measures "
                              f"on {', '.join(h.label for h in up)} (locks in {up[0].lock.path.parent})", stacklevel=3)
            if elsewhere and waited > BOARD_WAIT_S:
                raise TransportError(f"waited {waited:.0f} s for a free host of {self.descriptor.name}: another hwcompress "
                                     f"process still holds {', '.join(h.label for h in up)} (locks in "
                                     f"{up[0].lock.path.parent}); let it finish, or stop it, and run again")
            time.sleep(0.02)

    def _note_dropped(self, message: str) -> None:
        """Keep the notice (``dropped``, for a summary at the end) and warn now. The warning is best
        effort: another thread inside ``warnings.catch_warnings()`` (the ONNX export does that) silences
        every thread's warnings for that moment."""
        self.dropped.append(message)
        warnings.warn(message, stacklevel=3)

    def _warm_up(self) -> None:
        """Start every host's runner at once, in the background, at the pool's first use: starting one
        costs a few connections and the runtime's import (2 s to 127.0.0.1 here, more on a Pi), and a
        host started only when first needed joined a short LUT recording after it had ended."""
        self._warmed = True

        def start(host: RemoteHost) -> None:
            if not host.lock.try_acquire():
                return  # in use: it has a session, or gets one from its user
            try:
                host.ensure_session()
            except HostUnreachable as error:
                host.down, host.down_at = str(error), time.monotonic()
                left = [h.label for h in self.hosts if h.down is None]
                self._note_dropped(f"{host.label} of {self.descriptor.name}'s pool is unreachable ({error}); "
                                   f"going on with {', '.join(left) or 'no host'}")
            except TransportError:
                pass  # reported by the measurement that needs this host
            finally:
                host.lock.release()

        for host in self.hosts:
            threading.Thread(target=start, args=(host,), name=f"hwcompress-connect-{host.label}", daemon=True).start()

    def _on_a_host(self, work: Callable[[RemoteHost], Any]) -> tuple[Any, RemoteHost]:
        """Run ``work`` on a free host; a host that drops out is marked down and another one tried."""
        if len(self.hosts) > 1 and not self._warmed:
            self._warm_up()
        while True:
            host = self._acquire()
            try:
                return work(host), host
            except HostUnreachable as error:
                host.close()
                if len(self.hosts) == 1:
                    raise  # one board: the next call (a notebook's next cell) tries it again
                host.down, host.down_at = str(error), time.monotonic()
                left = [h.label for h in self.hosts if h.down is None]
                if not left:
                    raise TransportError(f"every host of {self.descriptor.name} is down: "
                                         + "; ".join(f"{h.label}: {h.down}" for h in self.hosts)) from None
                self._note_dropped(f"{host.label} dropped out of {self.descriptor.name}'s pool ({error}); "
                                   f"going on with {', '.join(left)}")
            finally:
                host.lock.release()

    # -- reachability -----------------------------------------------------------------------------
    def probe(self) -> list[HostStatus]:
        """Connect to every host (in parallel) and start its runner: who is up, with what runtime."""
        if self._probed is not None and time.monotonic() - self._probed[0] < PROBE_CACHE_S:
            return self._probed[1]

        def one(spec: TransportSpec) -> HostStatus:
            host = RemoteHost(spec, self.name)  # its own session: a measurement may hold the shared one
            try:
                session = host.ensure_session()
                facts = session.request({"op": "facts", "settings": _settings_document(ProfileSettings())},
                                        "reading the device's facts", spec.connect_timeout_s + STARTUP_S)["facts"]
            except TransportError as error:
                return HostStatus(spec.label, False, str(error))
            finally:
                host.close()
            detail = (f"up: {facts.get('hostname', '?')}, {facts.get('runtime', self.name)} {facts.get('runtime_version', '?')}, "
                      f"{facts.get('logical_cores', '?')} cores, Python {facts.get('python', '?')}")
            return HostStatus(spec.label, True, detail, facts)

        with ThreadPoolExecutor(max_workers=min(8, len(self.hosts))) as pool:
            statuses = list(pool.map(one, self.descriptor.transports))
        self._probed = (time.monotonic(), statuses)
        return statuses

    def close(self) -> None:
        self._finalizer()


def _close_hosts(hosts: list[RemoteHost]) -> None:
    for host in hosts:
        try:
            host.close()
        except Exception:  # closing at exit: a host that went away has nothing left to close
            pass


_profilers: dict[tuple[str, tuple[TransportSpec, ...]], RemoteProfiler] = {}


def remote_profiler(descriptor: DeviceDescriptor, profiler: str | None = None) -> RemoteProfiler:
    """The process's :class:`RemoteProfiler` for these hosts and profiler: its runner sessions, host
    states and cached facts are shared by every caller (a search resolves its timing more than once)."""
    key = (profiler or descriptor.profiler, tuple(descriptor.transports))
    found = _profilers.get(key)
    if found is None or found.descriptor.name != descriptor.name:
        found = _profilers[key] = RemoteProfiler(descriptor, profiler)
    return found


def forget_remote_profilers() -> None:
    """Close every runner session and forget the profilers (tests, and the plugin manager's reset)."""
    for profiler in list(_profilers.values()):
        profiler.close()
    _profilers.clear()


manager.on_reset(forget_remote_profilers)
