"""Facts about an NVIDIA Jetson board, read from what the board itself offers.

NVML is missing or partial on Jetson (an integrated GPU without nvidia-smi's full library), so the
board's own files fill in: the model from the device tree, the L4T release from
``/etc/nv_tegra_release``, the JetPack version from its Debian package, the power mode from
``nvpmodel -q``, and GPU clock and temperature from sysfs. Anything that cannot be read is reported as
``"unknown"``; nothing is inferred (no L4T-to-JetPack table, no clock from the model name).

Every reader takes a ``root`` folder so tests can point it at a fake board tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
TEGRA_RELEASE = "etc/nv_tegra_release"
DEVICE_TREE_MODEL = "proc/device-tree/model"
# devfreq node names of Jetson GPUs: ga10b (Orin), gv11b (Xavier), gp10b (TX2), gm20b (Nano, TX1);
# newer L4T releases name the node "...gpu".
_GPU_DEVFREQ = re.compile(r"(ga10b|gv11b|gp10b|gm20b|gpu)$", re.IGNORECASE)


def _read(root: Path, relative: str) -> str | None:
    try:
        return (root / relative).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def is_jetson(root: str | Path = "/") -> bool:
    """True on a Jetson (L4T release file present, or the device tree names a Jetson)."""
    root = Path(root)
    if (root / TEGRA_RELEASE).is_file():
        return True
    model = _read(root, DEVICE_TREE_MODEL)
    return bool(model and "jetson" in model.lower())


def board_model(root: str | Path = "/") -> str:
    """The board's model string, e.g. ``NVIDIA Jetson Orin Nano Developer Kit``."""
    text = _read(Path(root), DEVICE_TREE_MODEL)
    # Device-tree strings are NUL-terminated.
    text = (text or "").replace("\x00", "").strip()
    return text or UNKNOWN


def parse_tegra_release(text: str) -> str | None:
    """The L4T release in ``/etc/nv_tegra_release``'s first line.

    Example:
        >>> parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic")
        '36.3.0'
    """
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    return f"{match.group(1)}.{match.group(2).rstrip('.')}"


def parse_nvpmodel(text: str) -> str | None:
    """The power mode in ``nvpmodel -q`` output: its name, and its id when printed.

    Example:
        >>> parse_nvpmodel("NV Fan Mode:quiet\\nNV Power Mode: MAXN\\n0\\n")
        'MAXN (mode 0)'
    """
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        match = re.match(r"NV Power Mode\s*:\s*(.+)$", line)
        if match:
            name = match.group(1).strip()
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return f"{name} (mode {following})" if following.isdigit() else name
    return None


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_clock_mhz(root: str | Path = "/") -> float | str:
    """The integrated GPU's current clock from devfreq, in MHz, or ``"unknown"``."""
    for node in sorted((Path(root) / "sys/class/devfreq").glob("*")):
        if _GPU_DEVFREQ.search(node.name):
            text = _read(node, "cur_freq")
            if text and text.strip().isdigit():
                return int(text.strip()) / 1e6
    return UNKNOWN


def gpu_temperature_c(root: str | Path = "/") -> float | str:
    """The GPU thermal zone's temperature in degrees Celsius, or ``"unknown"``."""
    for zone in sorted((Path(root) / "sys/class/thermal").glob("thermal_zone*")):
        kind = (_read(zone, "type") or "").strip().lower()
        if kind.startswith("gpu"):
            text = (_read(zone, "temp") or "").strip()
            if text.lstrip("-").isdigit():
                return int(text) / 1000.0
    return UNKNOWN


def jetson_facts(root: str | Path = "/", *, run_tools: bool = True) -> dict[str, Any]:
    """Board facts for the report.

    Args:
        root: filesystem root (tests pass a temporary folder).
        run_tools: also ask ``nvpmodel -q`` and ``dpkg-query`` (off in tests).

    Returns:
        ``jetson_model``, ``l4t_release``, ``jetpack``, ``power_mode``; ``"unknown"`` where unreadable.
    """
    root = Path(root)
    release_text = _read(root, TEGRA_RELEASE)
    release = parse_tegra_release(release_text) if release_text else None
    power_mode = jetpack = None
    if run_tools:
        output = _run(["nvpmodel", "-q"])
        power_mode = parse_nvpmodel(output) if output else None
        # The nvidia-jetpack meta-package carries the JetPack version; without it, say unknown
        # rather than guess from the L4T release.
        jetpack = (_run(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"]) or "").strip() or None
    return {
        "jetson_model": board_model(root),
        "l4t_release": release or UNKNOWN,
        "jetpack": jetpack or UNKNOWN,
        "power_mode": power_mode or UNKNOWN,
    }
