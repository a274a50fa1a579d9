"""`import hwcompress` (and building the CLI) loads no heavy runtime."""

import subprocess
import sys

HEAVY = ["onnxruntime", "tensorrt", "pynvml", "matplotlib", "torch"]


def test_import_is_lean():
    code = (
        "import sys, hwcompress, hwcompress.cli, hwcompress.plugins, hwcompress.devices\n"
        "hwcompress.plugins.get_profilers(); hwcompress.devices.catalog()\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
