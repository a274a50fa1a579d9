"""``hwcompress compare``: the latency of two or more models on one device, as paired ratios."""

from __future__ import annotations

import click

from hwcompress.cli.common import console, device_options, emit_json, fmt_count, parse_input_shape, precheck, timing_options
from hwcompress.errors import UserError
from hwcompress.files import check_writable
from hwcompress.validate import whole


@click.command()
@click.argument("models", nargs=-1, required=True)
@device_options()
@click.option("--input-shape", help="Input shape for every model, e.g. 1,3,224,224 (default: the models' usual one).")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Interleaved rounds; each times every model once, the first model rotating.")
@timing_options("Timed iterations per model and round")
@click.option("--lut", type=click.Path(dir_okay=False), help="Predict every model from this recorded LUT instead of measuring.")
@click.option("--json", "json_target", metavar="FILE", help="Write the hwcompress.compare/1 document to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No table.")
def compare(models, device, device_file, input_shape, rounds, threads, runs, warmup, precision, lut, json_target, quiet):
    """Compare the latency of MODELS on a device; the first one is the reference.

    The models are measured in interleaved rounds (every model once per round, the order rotating), and
    each is quoted as the median of its per-round ratios to the reference, with their range and a
    confidence interval for that median (order statistics; 90% from 5 rounds on, less below): on a
    shared machine whose speed drifts, that ratio is what holds, more than either median. MODELS take
    what --model takes: torchvision names, pkg.module:factory, checkpoints, .onnx files, 'embedded'.

    \b
    Examples:
      hwcompress compare resnet18 mobilenet_v2 --input-shape 1,3,224,224
      hwcompress compare embedded hwcompress-out/student.onnx --input-shape 1,3,32,32 --rounds 10
      hwcompress compare resnet18 resnet50 --device jetson --lut jetson.lut.json   # predicted
    """
    if json_target and json_target != "-":
        check_writable(json_target, "--json file")
    shape = parse_input_shape(input_shape)
    if len(models) < 2:
        raise UserError("give at least two models to compare (the first is the reference)")
    whole(rounds, "--rounds", 1)
    precheck(device, device_file, lut, threads=threads, runs=runs, warmup=warmup, precision=precision)
    import hwcompress

    document = hwcompress.compare(models, device=device, device_file=device_file, input_shape=shape, lut=lut,
                                  rounds=rounds, runs=runs, warmup=warmup, threads=threads, precision=precision).to_dict()
    if not quiet and json_target != "-":
        print_comparison(document)
    emit_json(document, json_target)


def print_comparison(doc: dict) -> None:
    """Render a ``hwcompress.compare/1`` document as a table."""
    from rich.markup import escape
    from rich.table import Table

    measured = doc["source"] == "measured"
    how = f"{doc['rounds']} interleaved rounds, {doc['profiler']}" if measured else "predicted from the LUT"
    table = Table(title=f"on {doc['device']['name']} ({how}), input {'x'.join(map(str, doc['input_shape']))}")
    coverage = min((row.get("interval_coverage", 0.0) for row in doc["models"][1:]), default=0.0)
    with_interval = measured and coverage > 0  # (one round, or a prediction, has no interval)
    columns = ["model", "latency ms", f"x {doc['reference']}", "range"] + ([f"{coverage:.0%} interval"] if with_interval else [])
    for column in columns + ["MACs", "params"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in doc["models"]:
        spread = f"{row['ratio_min']:.3f}-{row['ratio_max']:.3f}" if measured else "-"
        interval = [f"{row['ratio_interval'][0]:.3f}-{row['ratio_interval'][1]:.3f}"] if with_interval else []
        table.add_row(row["name"], f"{row['latency_ms']:.3f}", f"{row['ratio']:.3f}", spread, *interval,
                      fmt_count(row["macs"]), f"{row['params']:,}")
    out = console()
    out.print(table)
    for note in doc.get("notes", []):
        out.print(f"[dim]note: {escape(note)}[/dim]")
