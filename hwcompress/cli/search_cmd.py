"""``hwcompress search``: find a student that meets a budget on a device, distil it, measure it."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--latency-ms", type=float, help="Latency budget in milliseconds, measured on the device (median).")
@click.option("--latency-ratio", type=float, help="Latency budget as a fraction of the teacher's latency measured on the device (e.g. 0.6).")
@click.option("--margin", type=float, default=0.03, show_default=True,
              help="The search aims this fraction below a latency budget, so that measurement noise does not break it.")
@click.option("--macs", type=float, help="MACs budget instead of latency (e.g. 5e7).")
@click.option("--params", "params_budget", type=float, help="Parameter budget instead of latency (e.g. 3e5).")
@click.option("--agent", default="amc", show_default=True, help="Search agent: amc | n2n | uniform | random (and plugins).")
@click.option("--agent-option", "agent_option", multiple=True, metavar="KEY=VALUE",
              help="An agent setting, repeatable: e.g. delta_decay=0.99 (AMC), rollouts=3 or student_steps=20 (N2N); see docs/search.md.")
@click.option("--device", "-d", help="Target device name or alias (default: cpu, or the one --device-file describes).")
@click.option("--device-file", type=click.Path(dir_okay=False), help="A device TOML file instead of a catalog name.")
@click.option("--model", "-m", help="Teacher: torchvision name, pkg.module:factory or checkpoint (default: embedded ResNet-56 on digits).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file for the teacher.")
@click.option("--data", help="ImageFolder folder or pkg.module:factory returning (train, val, test) (default: digits).")
@click.option("--input-shape", help="Input shape, e.g. 1,3,224,224.")
@click.option("--episodes", type=int, default=120, show_default=True, help="Search episodes.")
@click.option("--warmup", type=int, help="AMC random warm-up episodes (default: a quarter of --episodes).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random choice: same seed, same policy.")
@click.option("--reward", type=click.Choice(["budget", "accuracy"]), default="budget", show_default=True,
              help="budget: -error; accuracy: -error*log(cost) (AMC's accuracy-guaranteed mode).")
@click.option("--lbound", type=float, default=0.2, show_default=True, help="Smallest preserve ratio of a channel group.")
@click.option("--finetune-epochs", type=float, default=8.0, show_default=True, help="Distillation epochs for the final student.")
@click.option("--bn-calibration", type=int, default=256, show_default=True,
              help="Re-estimate BatchNorm statistics of each candidate on this many train images before scoring it (0: AMC's original, none).")
@click.option("--reconstruct", is_flag=True, help="Least-squares reconstruction of pruned layers (AMC) before fine-tuning.")
@click.option("--anchors", type=click.IntRange(2, 3), default=2, show_default=True,
              help="Students measured on the device to anchor the latency cost model: 2 = the teacher and the smallest "
                   "student, 3 = also a uniform student at the budget (for devices whose latency bends between the ends; "
                   "docs/search.md).")
@click.option("--lut", type=click.Path(dir_okay=False), help="Latency LUT for the cost model (default: the device's, or measured here and cached).")
@click.option("--runs", type=int, help="Timed iterations when measuring on the device.")
@click.option("--torch-threads", type=int, default=1, show_default=True,
              help="PyTorch threads for training and scoring (1 is fastest for these small ops on small shared machines).")
@click.option("--threads", type=int, help="Intra-op threads when measuring on the device.")
@click.option("--out", "-o", default="hwcompress-out", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the interrupted search in this folder.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="Re-apply a saved policy.json to the teacher without searching (prune, fine-tune, measure, report).")
@click.option("--json", "json_target", metavar="FILE", help="Also write the result document to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress, per-episode lines or tables: one closing line.")
def search(latency_ms, latency_ratio, margin, macs, params_budget, agent, agent_option, device, device_file, model, weights, data, input_shape, episodes, warmup,
           seed, reward, lbound, finetune_epochs, bn_calibration, reconstruct, anchors, lut, runs, torch_threads, threads, out, resume, policy_file, json_target, quiet):
    """Find a smaller student that meets a budget on a device, distil it from the teacher, and measure it.

    The budget is measured latency by default (--latency-ms); --macs or --params are alternatives.
    Without --model the embedded default runs: a ResNet-56 teacher on scikit-learn's digits, trained on
    first use and cached. Results land in --out: result.json, summary.md, student.onnx, student.pt,
    student.ts (TorchScript), policy.json, plots. Ctrl-C keeps the best student so far; --resume DIR
    continues the search to the same policy an uninterrupted run would reach.

    \b
    Examples:
      hwcompress search --latency-ms 2.5                       # embedded default on this CPU
      hwcompress search --latency-ratio 0.6                    # 60% of the teacher's measured latency
      hwcompress search --latency-ms 2.5 --agent uniform -o uni
      hwcompress search --macs 4e7 --episodes 200 --seed 1
      hwcompress search --resume hwcompress-out                # continue an interrupted run
      hwcompress search --policy hwcompress-out/policy.json -o again   # re-apply a policy, no search
      hwcompress search -m resnet18 --data ./imagenette --latency-ms 15 --input-shape 1,3,160,160
    """
    from hwcompress.cli.common import emit_json
    from hwcompress.errors import UserError
    from hwcompress.models import parse_input_shape
    from hwcompress.search.pipeline import BudgetAlreadyMet, SearchConfig, apply_policy, run_search

    if resume:
        config = SearchConfig(out=resume, episodes=episodes if episodes != 120 else SearchConfig.episodes)
    else:
        chosen = [(name, value) for name, value in (("latency_ms", latency_ms), ("latency_ratio", latency_ratio),
                                                   ("macs", macs), ("params", params_budget)) if value is not None]
        if len(chosen) != 1:
            raise UserError("give exactly one budget: --latency-ms X, --latency-ratio R, --macs N or --params N")
        metric, budget = chosen[0]
        ratio = budget if metric == "latency_ratio" else None
        config = SearchConfig(
            agent_options=parse_agent_options(agent_option),
            budget_metric="latency_ms" if metric == "latency_ratio" else metric, budget=0.0 if ratio else budget,
            budget_ratio=ratio, margin=margin, agent=agent, device=device, device_file=device_file, model=model,
            weights=weights, data=data, input_shape=parse_input_shape(input_shape), episodes=episodes, warmup=warmup,
            seed=seed, reward=reward, lbound=lbound, finetune_epochs=finetune_epochs, bn_calibration=bn_calibration, reconstruct=reconstruct,
            anchors=anchors,
            lut=lut, out=out, runs=runs, threads=threads, torch_threads=torch_threads,
        )
    try:
        if policy_file:
            document = apply_policy(config, policy_file, quiet=quiet)
        else:
            document = run_search(config, resume=bool(resume), quiet=quiet)
    except BudgetAlreadyMet as message:
        click.echo(f"{message}; nothing to compress")
        sys.exit(0)
    if quiet and json_target != "-":
        student = document["student"]
        latency = f"{student['latency_ms']:.3f} ms" if student.get("latency_ms") is not None else "not measured here"
        click.echo(f"budget met: {'yes' if document['budget_met'] else 'no'}; student {latency}, "
                   f"test accuracy {100 * student['accuracy']:.2f}%; results in {config.out}/")
    emit_json(document, json_target)
    if document.get("interrupted"):
        sys.exit(130)


def parse_agent_options(items: tuple[str, ...]) -> dict:
    """``("rollouts=3", "student_loss=l2")`` -> ``{"rollouts": 3, "student_loss": "l2"}`` (JSON values, else strings)."""
    import json

    from hwcompress.errors import UserError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--agent-option {item!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options
