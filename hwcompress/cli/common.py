"""Options and output helpers shared by several commands."""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from hwcompress.model.loading import parse_input_shape

__all__ = ["console", "device_options", "emit_json", "fmt_count", "fmt_ms", "parse_input_shape", "precheck", "timing_options"]


def _stack(*options: Callable) -> Callable:
    """Apply click options so that they list in the order given."""

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def device_options(note: str = "") -> Callable:
    """``--device/-d`` and ``--device-file``, as every measuring command takes them."""
    return _stack(
        click.option("--device", "-d", help="Device name or alias (see `hwcompress devices`; default: cpu, or the one "
                                            f"--device-file describes){note}."),
        click.option("--device-file", type=click.Path(dir_okay=False), help="A device TOML file instead of a catalog name."),
    )


def timing_options(runs: str = "Timed iterations") -> Callable:
    """``--threads``, ``--runs``, ``--warmup`` and ``--precision``: how a measurement is taken (defaults from
    the device's settings)."""
    return _stack(
        click.option("--threads", type=int, help="Intra-op threads (default from the device, 1 on cpu)."),
        click.option("--runs", type=int, help=f"{runs} (default from the device, 100 on cpu)."),
        click.option("--warmup", type=int, help="Untimed iterations before each timing (default from the device)."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Precision to time in (default: the device's, fp32 on cpu); "
                     "a precision the device's profiler does not run is refused (ONNX Runtime: fp32, and int8 for a quantized .onnx)."),
    )


def precheck(device: str | None, device_file: str | None, lut: str | None, **settings: Any) -> None:
    """Refuse a device, a LUT or timing settings before PyTorch is imported: a mistake costs a second,
    not a model load. The library checks the same again (the Python API has no command line)."""
    from hwcompress.devices import resolve_device
    from hwcompress.measure.resolve import make_settings, resolve_timing

    descriptor = resolve_device(device, device_file)
    timing = resolve_timing(descriptor, lut)
    timing.check_settings(make_settings(descriptor, **settings))


def emit_json(document: Any, target: str | None) -> None:
    """Write ``document`` as JSON to ``target`` (``-`` for stdout; a file replaced atomically, a device or
    a FIFO written through)."""
    if not target:
        return
    from hwcompress.files import dumps, write_json

    if target == "-":
        sys.stdout.write(dumps(document) + "\n")
    else:
        write_json(document, target)
        click.echo(f"wrote {target}", err=True)


def console(stderr: bool = False):
    """A rich console; when the output is not a terminal (a pipe, a file), lines are never cut or
    wrapped to 80 columns (names like ``hwcompress-profiler-onnxruntime`` stay whole)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 250
    return Console(stderr=stderr, highlight=False, width=width)


def fmt_count(value: int | float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}" if value / scale < 100 else f"{value / scale:.0f} {unit}"
    return f"{value:.0f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
