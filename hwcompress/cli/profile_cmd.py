"""``hwcompress profile``: measured (or LUT-predicted) latency, MACs, FLOPs and parameters."""

from __future__ import annotations

import click

from hwcompress.cli.common import (
    console,
    device_options,
    emit_json,
    fmt_count,
    fmt_ms,
    parse_input_shape,
    precheck,
    timing_options,
)
from hwcompress.errors import UserError
from hwcompress.files import check_writable
from hwcompress.plots import check_plot_path, profile_layers


@click.command()
@device_options()
@click.option("--model", "-m", default="resnet18", show_default=True,
              help="torchvision name, pkg.module:factory, checkpoint (.pt, trusted files only: it is unpickled), .onnx file, or 'embedded'.")
@click.option("--input-shape", help="Input shape, e.g. 1,3,224,224 (default: the model's usual size).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file to load into a torchvision/factory model.")
@timing_options()
@click.option("--lut", type=click.Path(dir_okay=False), help="Predict from this recorded LUT instead of measuring.")
@click.option("--per-layer/--no-per-layer", default=True, show_default=True, help="Also time each layer (a separate profiled run).")
@click.option("--json", "json_target", metavar="FILE", help="Write the hwcompress.profile/1 JSON document to FILE ('-' for stdout).")
@click.option("--plot", "plot_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also draw each layer's share of the time beside its share of the MACs (.png, .svg or .pdf; needs matplotlib).")
@click.option("--quiet", "-q", is_flag=True, help="No table (useful with --json).")
def profile(device, device_file, model, input_shape, weights, threads, runs, warmup, precision, lut, per_layer, json_target, plot_path, quiet):
    """Profile a model on a device: measured latency (median and spread), MACs, FLOPs, parameters.

    Measured when this machine is the device; on any other device predicted from a latency lookup
    table recorded on it (--lut, or the one the device's descriptor names).

    \b
    Examples:
      hwcompress profile                                     # resnet18, 1x3x224x224, this CPU
      hwcompress profile -m mobilenet_v2 --threads 2 --runs 200
      hwcompress profile -m model.onnx --json report.json
      hwcompress profile -m mypkg.nets:build --input-shape 1,3,128,128
      hwcompress profile --device jetson --lut jetson.lut.json -m resnet18
      hwcompress profile -m mobilenet_v2 --plot layers.png     # where the time goes, against the MACs
    """
    if plot_path:
        if not per_layer:
            raise UserError("--plot draws the per-layer times; drop --no-per-layer")
        check_plot_path(plot_path)
    if json_target and json_target != "-":
        check_writable(json_target, "--json file")
    shape = parse_input_shape(input_shape)
    precheck(device, device_file, lut, threads=threads, runs=runs, warmup=warmup, precision=precision, per_layer=per_layer)
    import hwcompress

    report = hwcompress.profile(
        model,
        device=device,
        device_file=device_file,
        input_shape=shape,
        weights=weights,
        lut=lut,
        threads=threads,
        runs=runs,
        warmup=warmup,
        precision=precision,
        per_layer=per_layer,
    )
    document = report.to_dict()
    if not quiet and json_target != "-":
        print_report(document)
    emit_json(document, json_target)
    if plot_path:
        written = profile_layers(document, plot_path)
        if not quiet and json_target != "-":
            console().print(f"plot: {written}")


def print_report(doc: dict) -> None:
    """Render a ``hwcompress.profile/1`` document as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    out = console()
    latency = doc["latency_ms"] or {}
    facts = doc["device"].get("facts", {})
    head = Table(title=f"{doc['model']['name']} on {doc['device']['name']} ({latency.get('source', '?')})", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("input", "x".join(str(d) for d in doc["model"]["input_shape"]))
    if latency:
        head.add_row("latency median", f"{latency['median']:.3f} ms")
        head.add_row("mean / p90 / p99", f"{latency['mean']:.3f} / {latency['p90']:.3f} / {latency['p99']:.3f} ms")
        head.add_row("std / runs", f"{latency['std']:.3f} ms / {latency['runs']}")
    head.add_row("MACs", f"{fmt_count(doc['macs'])} (FLOPs {fmt_count(doc['flops'])} = 2 x MACs)")
    head.add_row("parameters", f"{doc['params']:,}")
    for key, value in facts.items():
        head.add_row(key.replace("_", " "), escape(str(value)))
    settings = doc.get("settings", {})
    head.add_row("settings", ", ".join(f"{k}={v}" for k, v in settings.items() if k != "options"))
    onnx = doc["model"].get("onnx")
    if onnx:
        head.add_row("onnx", f"opset {onnx.get('opset')}, {onnx.get('exporter')}"
                     + (f", max |onnx-torch| {onnx['max_abs_diff']:.1e}" if onnx.get("max_abs_diff") is not None else ""))
    if doc.get("coverage"):
        cov = doc["coverage"]
        head.add_row("LUT coverage", ", ".join(f"{k} {v}" for k, v in cov.items() if not isinstance(v, (list, dict))))
    out.print(head)
    table = Table(title="per layer")
    for column in ("layer", "op", "in -> out", "k/s/g", "MACs", "params", "ms"):
        table.add_column(column, justify="right" if column in ("MACs", "params", "ms") else "left")
    for row in doc["layers"]:
        shape = f"{row['cin']} -> {row['cout']}" if row.get("cin") is not None else "-"
        ksg = "-"
        if row.get("kernel"):
            ksg = f"{row['kernel'][0]}/{row['stride'][0]}/{row['groups']}"
        table.add_row(row["name"], row["op"], shape, ksg, fmt_count(row["macs"]), fmt_count(row["params"]), fmt_ms(row.get("latency_ms")))
    out.print(table)
    for note in doc.get("notes", []):
        out.print(f"[dim]note: {escape(note)}[/dim]")
