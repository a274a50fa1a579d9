"""``hwcompress devices`` and ``hwcompress plugins``: what is installed and what can run here."""

from __future__ import annotations

import click

from hwcompress.cli.common import console, emit_json
from hwcompress.devices import catalog, user_devices_dir
from hwcompress.measure.remote import remote_profiler
from hwcompress.measure.resolve import device_status
from hwcompress.plugins import manager, registry


@click.command()
@click.option("--json", "json_target", metavar="FILE", help="Write the list as JSON to FILE ('-' for stdout).")
def devices(json_target):
    """List every device (catalog, plugins, user folder) and whether it can be measured here.

    \b
    Status: 'measured' = this machine is the device and its profiler works, or the device is reached
    over ssh/adb and at least one of its hosts answers (each host is connected to and listed, up or
    down); 'lut' = predicted from a recorded lookup table; 'unavailable' = neither, with the reason
    and the fix.

    \b
    Examples:
      hwcompress devices
      hwcompress devices --json - | jq '.[].name'
    """
    from rich.markup import escape
    from rich.table import Table

    rows = []
    for descriptor in catalog():
        status, reason = device_status(descriptor)
        row = {**descriptor.to_dict(), "status": status, "reason": reason, "source": descriptor.source}
        if descriptor.remote:  # probed once by device_status, answered from its cache here
            row["hosts"] = [host.to_dict() for host in remote_profiler(descriptor).probe()]
        rows.append(row)
    if json_target:
        emit_json(rows, json_target)
        if json_target == "-":
            return
    table = Table(title="devices")
    for column in ("device", "aliases", "profiler", "status", "why / how"):
        table.add_column(column, overflow="fold")
    colors = {"measured": "green", "lut": "cyan", "unavailable": "red"}
    for row in rows:
        reason = escape(row["reason"])
        if "hosts" in row:  # one line per host of a remote device
            reason = "\n".join(f"[{'green' if h['up'] else 'red'}]{escape(h['host'])}[/] {escape(h['detail'])}" for h in row["hosts"])
        table.add_row(row["name"], ", ".join(row["aliases"]), row["profiler"], f"[{colors[row['status']]}]{row['status']}[/]",
                      reason)
    console().print(table)
    console().print(f"[dim]your own devices: TOML files in {user_devices_dir()} (or $HWCOMPRESS_DEVICE_PATH); see docs/devices.md[/dim]")


@click.command("plugins")
@click.option("--json", "json_target", metavar="FILE", help="Write the list as JSON to FILE ('-' for stdout).")
def plugins_command(json_target):
    """List loaded plugins with their distribution and version, and broken ones with the error.

    \b
    Environment: HWCOMPRESS_PLUGINS=a,b loads only those entry points;
    HWCOMPRESS_DISABLE_PLUGINS=a,b skips them.

    \b
    Examples:
      hwcompress plugins
      hwcompress plugins --json - | jq '.[] | select(.error)'
      HWCOMPRESS_DISABLE_PLUGINS=hwcompress-profiler-tensorrt hwcompress devices
    """
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    # Building every registry records what each plugin provides (and surfaces hooks that fail).
    registry.profilers.names()
    registry.agents.names()
    catalog()
    infos = manager.plugin_infos()
    if json_target:
        emit_json([asdict(info) for info in infos], json_target)
        if json_target == "-":
            return
    table = Table(title="plugins")
    for column in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(column, overflow="fold")
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items())
        status = f"[red]broken: {escape(info.error)}[/]" if info.error else ("built-in" if info.builtin else "[green]ok[/]")
        table.add_row(info.name, info.distribution, info.version, provides, status)
    console().print(table)
