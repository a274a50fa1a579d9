"""Does measuring over ssh change the latency, and what does a remote measurement cost on top?

The same exported ONNX files are timed on this machine by the ONNX Runtime profiler (in process) and
over ssh to 127.0.0.1 by a :class:`hwcompress.measure.remote.RemoteProfiler`, twice: with the runner
using the device's hwcompress plugin (the default where hwcompress is installed there) and with the
standalone runner (what a Pi or a phone without hwcompress gets). Rounds interleave the three, the
order rotating, so load on the shared machine hits all alike; per model the bench prints each side's
median of round medians and the median of the per-round ratios remote/local (target 1.00 +- 0.03),
then the per-measurement overhead: the wall time of a remote ``measure`` call minus the time the
runner spent measuring (``work_s``: session creation, warm-up, timed runs), for a model already on the
device, and the one-off costs (starting the runner, shipping a model).

Without ``--device-file`` it starts its own sshd on a free port of 127.0.0.1 (host and client keys
generated in a temporary folder, as tests/test_remote.py does); that needs ``/usr/sbin/sshd``
(``apt-get install openssh-server``). With ``--device-file`` it measures on that device instead (an ssh
device whose remote side has onnxruntime).

    python bench/transport_overhead.py [--models resnet20,mobilenet_v2@96,resnet18@128] [--rounds 10] [--runs 50]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torchvision

from hwcompress.devices import load_descriptor
from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.measure.remote import RemoteProfiler
from hwcompress.measure.resolve import installed_profiler
from hwcompress.model.embedded import resnet_cifar
from hwcompress.model.export import export_onnx


def start_sshd(folder: Path) -> tuple[subprocess.Popen, Path, int]:
    """An sshd on 127.0.0.1 at a free port, and a client config that reaches it without a prompt."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        raise SystemExit("transport_overhead: sshd is not installed (apt-get install openssh-server), or pass --device-file")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kind, key = (folder / "host_key.pub").read_text().split()[:2]
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
    config = folder / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
                      f"AuthorizedKeysFile {folder / 'client_key.pub'}\nStrictModes no\nUsePAM no\n"
                      f"PasswordAuthentication no\nPidFile {folder / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    client = folder / "ssh_config"
    client.write_text(f"Host bench-box\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
                      f"  IdentityFile {folder / 'client_key'}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(50):
        if subprocess.run(["ssh", "-F", str(client), "-o", "BatchMode=yes", "bench-box", "true"], capture_output=True).returncode == 0:
            return process, client, port
        time.sleep(0.2)
    process.kill()
    raise SystemExit("transport_overhead: the bench's sshd did not start")


def device_file(folder: Path, client: Path, runner: str) -> Path:
    path = folder / f"bench-{runner}.toml"
    path.write_text(f'name = "bench-ssh-{runner}"\nprofiler = "onnxruntime"\n[transport]\nkind = "ssh"\nhost = "bench-box"\n'
                    f'config_file = "{client}"\npython = "{sys.executable}"\nworkdir = "{folder / ("remote-" + runner)}"\nrunner = "{runner}"\n')
    return path


def build(name: str, folder: Path) -> ModelArtifact:
    """``name`` or ``name@size``: resnet20 (CIFAR, 32x32) or a torchvision model at that input size."""
    model, _, size = name.partition("@")
    if model == "resnet20":
        module, shape = resnet_cifar(depth=20).eval(), (1, 3, 32, 32)
    else:
        module = getattr(torchvision.models, model)().eval()
        shape = (1, 3, int(size or 224), int(size or 224))
    path = folder / f"{name.replace('@', '-')}.onnx"
    export_onnx(module, shape, path, verify=False)
    return ModelArtifact(onnx_path=path, input_shape=shape, name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenet_v2@96,resnet18@128")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device-file", help="an ssh device to measure on instead of the bench's own sshd")
    parser.add_argument("--json", help="write the numbers as JSON to this file")
    args = parser.parse_args()
    local = installed_profiler("onnxruntime")
    if local is None:
        raise SystemExit("transport_overhead: the onnxruntime profiler is not installed (pip install hwcompress-profiler-onnxruntime)")
    settings = ProfileSettings(runs=args.runs, warmup=args.warmup, threads=args.threads, per_layer=False)
    with tempfile.TemporaryDirectory(prefix="hwcompress-bench-") as tmp:
        folder = Path(tmp)
        sshd = None
        if args.device_file:
            remotes = {"device": RemoteProfiler(load_descriptor(args.device_file))}
        else:
            sshd, client, port = start_sshd(folder)
            remotes = {runner: RemoteProfiler(load_descriptor(device_file(folder, client, runner)))
                       for runner in ("plugin", "standalone")}
        try:
            report = run(args, folder, local, remotes, settings)
        finally:
            for remote in remotes.values():
                remote.close()
            if sshd is not None:
                sshd.kill()
                sshd.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def run(args, folder: Path, local, remotes: dict[str, RemoteProfiler], settings: ProfileSettings) -> dict:
    sides = ["local", *remotes]
    artifacts = [build(name, folder) for name in args.models.split(",")]
    first_calls = {}
    for name, remote in remotes.items():  # one-off costs: runner start, then shipping each model once
        started = time.perf_counter()
        remote.facts(settings)
        first_calls[name] = {"start_s": time.perf_counter() - started, "ship_s": []}
        for artifact in artifacts:
            remote.measure(artifact, settings)
            call = remote.calls[-1]
            first_calls[name]["ship_s"].append(call["wall_s"] - call["work_s"])
    medians = {(a.name, side): [] for a in artifacts for side in sides}
    walls = {(a.name, side): [] for a in artifacts for side in sides}
    overhead = {name: [] for name in remotes}
    for round_index in range(args.rounds):
        for artifact in artifacts:
            for offset in range(len(sides)):
                side = sides[(round_index + offset) % len(sides)]
                started = time.perf_counter()
                profiler = local if side == "local" else remotes[side]
                measured = profiler.measure(artifact, settings)
                walls[(artifact.name, side)].append(time.perf_counter() - started)
                medians[(artifact.name, side)].append(measured.latency.median)
                if side != "local":
                    call = remotes[side].calls[-1]
                    assert call["sent_bytes"] == 0, call  # the model was already there
                    overhead[side].append(call["wall_s"] - call["work_s"])
    facts = next(iter(remotes.values())).facts(settings)
    print(f"threads={args.threads} rounds={args.rounds} runs/round={args.runs} host={facts.get('host')} "
          f"ssh_connection={facts.get('ssh_connection')!r} runtime={facts.get('runtime_version')}")
    header = f"{'model':<18}{'local ms':>10}" + "".join(f"{name + ' ms':>15}{'ratio':>8}{'min..max':>13}" for name in remotes)
    print(header)
    report = {"settings": settings.to_dict(), "rounds": args.rounds, "models": {}, "overhead_ms": {}, "first_calls": first_calls}
    all_ratios = {name: [] for name in remotes}
    for artifact in artifacts:
        local_medians = medians[(artifact.name, "local")]
        row = f"{artifact.name:<18}{statistics.median(local_medians):>10.3f}"
        entry = {"local_ms": statistics.median(local_medians)}
        for name in remotes:
            remote_medians = medians[(artifact.name, name)]
            ratios = [r / m for r, m in zip(remote_medians, local_medians)]
            all_ratios[name] += ratios
            row += f"{statistics.median(remote_medians):>15.3f}{statistics.median(ratios):>8.3f}{min(ratios):>7.2f}..{max(ratios):.2f}"
            extra = statistics.median(walls[(artifact.name, name)]) - statistics.median(walls[(artifact.name, "local")])
            entry[name] = {"ms": statistics.median(remote_medians), "ratio": statistics.median(ratios),
                           "ratio_min": min(ratios), "ratio_max": max(ratios), "extra_wall_ms": 1e3 * extra}
        report["models"][artifact.name] = entry
        print(row)
    for name in remotes:
        values = sorted(1e3 * v for v in overhead[name])
        extra = [report["models"][a.name][name]["extra_wall_ms"] for a in artifacts]
        report["overhead_ms"][name] = {"median": statistics.median(values), "p90": values[round(0.9 * (len(values) - 1))],
                                       "max": values[-1], "median_ratio_all_models": statistics.median(all_ratios[name])}
        print(f"{name}: median ratio remote/local over all rounds {statistics.median(all_ratios[name]):.3f}; "
              f"per-measurement overhead (call wall - runner work) median {statistics.median(values):.1f} ms, "
              f"p90 {report['overhead_ms'][name]['p90']:.1f} ms; remote call wall - local call wall "
              f"{', '.join(f'{e:+.1f}' for e in extra)} ms; runner start {first_calls[name]['start_s']:.2f} s, "
              f"first measurement of each model (shipping, hashing) +{', '.join(f'{1e3 * s:.0f}' for s in first_calls[name]['ship_s'])} ms")
    return report


if __name__ == "__main__":
    main()
