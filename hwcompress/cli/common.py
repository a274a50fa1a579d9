"""Options and output helpers shared by several commands."""

from __future__ import annotations

import sys
from typing import Any

import click


def emit_json(document: Any, target: str | None) -> None:
    """Write ``document`` as JSON to ``target`` (a path, or ``-`` for stdout) atomically."""
    if not target:
        return
    from hwcompress.report import dumps, write_json_atomic

    if target == "-":
        sys.stdout.write(dumps(document) + "\n")
    else:
        write_json_atomic(document, target)
        click.echo(f"wrote {target}", err=True)


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


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
