"""`import hwcompress` (and building the CLI, the plugin registries and the device catalog) loads no
heavy runtime: the command line starts fast and lists devices on a machine without PyTorch."""

import subprocess
import sys

HEAVY = ["onnxruntime", "tensorrt", "pynvml", "matplotlib", "torch", "torchvision", "sklearn"]


def test_import_is_lean():
    code = (
        "import sys, hwcompress, hwcompress.cli, hwcompress.plugins, hwcompress.devices\n"
        "from hwcompress.plugins import registry\n"
        "registry.profilers.names(); registry.agents.names(); hwcompress.devices.catalog()\n"
        "hwcompress.Budget.latency_ratio(0.5)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_api_loads_on_first_use():
    code = "import sys, hwcompress\nf = hwcompress.compress\nprint(callable(f), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
