"""``hwcompress search``: find a student that meets a budget on a device, distil it, measure it.

A thin layer over :func:`hwcompress.compress` and :func:`hwcompress.resume`: the options are parsed
and checked here (a :class:`~hwcompress.search.config.SearchConfig` is validated before PyTorch is
imported, so a typo costs a second, not a measurement), then the library runs.
"""

from __future__ import annotations

import sys

import click

from hwcompress.budget import DEFAULT_MARGIN, Budget
from hwcompress.cli.common import device_options, emit_json, parse_input_shape
from hwcompress.errors import UserError
from hwcompress.files import check_writable
from hwcompress.lut.table import LatencyTable
from hwcompress.search.config import DEFAULT_OUT, SearchConfig, check_latency_only


@click.command()
@click.option("--latency-ms", type=float, help="Latency budget in milliseconds, measured on the device (median).")
@click.option("--latency-ratio", type=float, help="Latency budget as a fraction of the teacher's latency measured on the device (e.g. 0.6).")
@click.option("--margin", type=float, help=f"The search aims this fraction below a latency budget, so that measurement noise does not break it (default {DEFAULT_MARGIN}).")
@click.option("--macs", type=float, help="MACs budget instead of latency (e.g. 5e7).")
@click.option("--params", "params_budget", type=float, help="Parameter budget instead of latency (e.g. 3e5).")
@click.option("--agent", help="Search agent: amc | n2n | uniform | random (and plugins'; see `hwcompress plugins`). Default amc.")
@click.option("--agent-option", "agent_option", multiple=True, metavar="KEY=VALUE",
              help="An agent setting, repeatable: e.g. delta_decay=0.95 (AMC), rollouts=3 or student_steps=20 (N2N); see docs/search.md.")
@device_options()
@click.option("--model", "-m", help="Teacher: torchvision name, pkg.module:factory or checkpoint (default: embedded ResNet-56 on digits).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file for the teacher.")
@click.option("--train-teacher", type=int, metavar="EPOCHS",
              help="Train the torchvision architecture named by --model from random weights on --data for EPOCHS first "
                   "(nothing is downloaded); kept as teacher.pt in --out and reused by --resume.")
@click.option("--data", help="ImageFolder folder or pkg.module:factory returning (train, val, test) (default: digits).")
@click.option("--input-shape", help="Input shape, e.g. 1,3,224,224 (default: the data's: digits 32x32; an image folder's "
                                    "image size when all its images share one of at most 224x224, else 224x224; a note says which).")
@click.option("--episodes", type=int, help="Students the agent may score (default 120; n2n needs at least 2 x its rollouts).")
@click.option("--warmup-episodes", type=int, help="AMC's random warm-up episodes, at most --episodes (default: a quarter of them).")
@click.option("--seed", type=int, help="Seed for every random choice: same seed, same policy (default 0).")
@click.option("--reward", type=click.Choice(["budget", "accuracy"]),
              help="budget: -error (default); accuracy: -error*ln(cost) (AMC's accuracy-guaranteed mode).")
@click.option("--lbound", type=float, help="Smallest preserve ratio of a channel group (default 0.2).")
@click.option("--finetune-epochs", type=float, help="Distillation epochs for the final student (default 8).")
@click.option("--bn-calibration", type=int,
              help="Re-estimate BatchNorm statistics of each candidate on this many train images before scoring it (0: AMC's original, none; default 64).")
@click.option("--reward-finetune-steps", type=int, metavar="N",
              help="Distil each candidate from the teacher for N SGD steps (batch 64) before scoring it, so that the reward "
                   "ranks what fine-tuning will make of it at hard budgets, where pruned students score near chance "
                   "(Distiller's AMC, HAQ); costs N training steps per episode (default 0: AMC's reward, no training).")
@click.option("--scoring-precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="What float candidates are evaluated in while the search scores them: fp32 (default); auto = bfloat16 where "
                   "the CPU has a bfloat16 unit (AMX, AVX-512 BF16, Arm BF16), about 2.5x faster there; as accurate on resnet18, "
                   "2 points lower on the embedded ResNet-56 over 8 seeds (docs/benchmarks.md). Final accuracies are fp32 either way.")
@click.option("--racing/--no-racing", default=None,
              help="Score an episode's student on a stratified third of the validation images first and stop there when it "
                   "certainly (3 standard errors) falls 5 points short of the best so far; its reward is that third's accuracy. "
                   "Float students; default on (result.json: scoring.racing).")
@click.option("--reconstruct", is_flag=True, default=None, help="Least-squares reconstruction of pruned layers (AMC) before fine-tuning.")
@click.option("--anchors", type=int,
              help="Students measured on the device to anchor the latency cost model: 2 = the teacher and the smallest "
                   "student (the default), 3 = also a uniform student at the budget (the default with --quantize: int8 "
                   "students bend away from the two-anchor line; docs/search.md). The uniform one is measured anyway when "
                   "the smallest measures no faster than the teacher.")
@click.option("--context-students", type=int, metavar="N",
              help="Before a latency search, profile N students layer by layer on the device and fit the cost model on "
                   "their in-network layer times (the LUT times each layer alone, which misleads inside a network); "
                   "0 = the LUT's prediction alone (default 6; docs/search.md).")
@click.option("--verdict-rounds", type=int, metavar="N",
              help="Latency budgets: most rounds of the final measurement: 5 interleaved with the reference (--reference), then 2 more at a time "
                   "while the median's confidence interval still holds the budget, up to N (odd; 5: never more; default 15).")
@click.option("--reference", type=click.Choice(["matched", "teacher"]),
              help="Latency budgets: what each student is timed beside on the device. matched (default): the teacher or a "
                   "uniform student at the budget measured on its own before the anchors, whichever is nearer the student's size "
                   "(other processes' load slows a large teacher and a small student by different factors); teacher: always "
                   "the teacher (docs/search.md).")
@click.option("--no-plots", "no_plots", is_flag=True, default=None,
              help="Write no PNG plots beside result.json (about 1 s a search; result.json, summary.md and the rest as usual).")
@click.option("--lut", type=click.Path(dir_okay=False), help="Latency LUT for the cost model (default: the device's, or measured here and cached).")
@click.option("--runs", type=int, help="Timed iterations per measurement on the device (default: the device's).")
@click.option("--threads", type=int, help="Intra-op threads when measuring on the device (default: the device's).")
@click.option("--torch-threads", type=int, help="PyTorch threads for training and scoring (default 1: fastest for these small ops on small shared machines).")
@click.option("--val-limit", type=int, help="Score each episode on a fixed subset of this many validation images, each class in its proportion (default: all; result.json says how many under scoring).")
@click.option("--skip-bad-images", is_flag=True, default=None,
              help="Leave out image files that cannot be read (counted in the report) instead of stopping at the first one.")
@click.option("--quantize", type=click.Choice(["int8", "mixed"]),
              help="int8: every layer the device runs in int8 is quantized (static Q/DQ, calibrated on training images) and "
                   "channels are pruned on top; mixed: the agent also chooses int8 or float per channel group (HAQ). "
                   "student.onnx is then the int8 model (docs/search.md, Quantization).")
@click.option("--out", "-o", type=click.Path(), help=f"Output folder (default {DEFAULT_OUT}).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the interrupted search in this folder (options given again must match).")
@click.option("--resume-override", multiple=True, metavar="NAME[,NAME]",
              help="With --resume: accept these changed settings (e.g. seed,agent); more --episodes needs none.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="Re-apply a saved policy.json to the teacher without searching (prune, fine-tune, measure, report); "
                   "judged against the budget given, else the one its search recorded in result.json beside it.")
@click.option("--json", "json_target", metavar="FILE", help="Also write the result document to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress, per-episode lines or tables: one closing line.")
def search(latency_ms, latency_ratio, margin, macs, params_budget, agent, agent_option, device, device_file, model, weights,
           train_teacher, data, input_shape, episodes, warmup_episodes, seed, reward, lbound, finetune_epochs, bn_calibration,
           reward_finetune_steps, scoring_precision, racing, reconstruct,
           anchors, context_students, verdict_rounds, reference, no_plots, lut, runs, threads, torch_threads, val_limit, skip_bad_images, quantize, out, resume, resume_override, policy_file, json_target, quiet):
    """Find a smaller student that meets a budget on a device, distil it from the teacher, and measure it.

    The budget is measured latency by default (--latency-ms or --latency-ratio); --macs or --params are
    alternatives. Without --model the embedded default runs: a ResNet-56 teacher on scikit-learn's
    digits, trained on first use and cached. Results land in --out: result.json, summary.md,
    student.onnx, student.pt, student.ts (TorchScript), policy.json, plots. Ctrl-C keeps the best
    student so far; --resume DIR continues the search to the same policy an uninterrupted run would
    reach (it reuses the saved budget, measurements and LUT).

    Exit codes: 0 budget met (or missed within the machine's noise, which the verdict says); 3 the
    student misses the budget beyond it (results are written all the same); 2 bad input or an
    infeasible budget; 130 interrupted.

    \b
    Examples:
      hwcompress search --latency-ms 2.5                       # embedded default on this CPU
      hwcompress search --latency-ratio 0.6                    # 60% of the teacher's measured latency
      hwcompress search --latency-ms 2.5 --agent uniform -o uni
      hwcompress search --macs 4e7 --episodes 200 --seed 1
      hwcompress search --latency-ratio 0.35 --quantize int8   # int8 student, pruned to meet the budget
      hwcompress search --latency-ratio 0.35 --quantize mixed  # int8 or float per group, chosen by AMC
      hwcompress search --latency-ratio 0.6 --reference teacher  # time every student beside the teacher
      hwcompress search --resume hwcompress-out                # continue an interrupted run
      hwcompress search --resume hwcompress-out --episodes 200 # ... and give it more episodes
      hwcompress search --policy hwcompress-out/policy.json -o again   # re-apply a policy, no search
      hwcompress search -m resnet18 --weights r18.pt --data ./imagenette --latency-ms 15 --input-shape 1,3,160,160
      hwcompress search -m mobilenet_v2 --train-teacher 30 --data ./my-photos --latency-ratio 0.6 --input-shape 1,3,64,64
    """
    given = {
        "agent": agent, "agent_options": parse_agent_options(agent_option) if agent_option else None, "device": device,
        "device_file": device_file, "model": model, "weights": weights, "data": data,
        "input_shape": parse_input_shape(input_shape), "episodes": episodes, "warmup_episodes": warmup_episodes,
        "seed": seed, "reward": reward, "lbound": lbound, "finetune_epochs": finetune_epochs,
        "bn_calibration": bn_calibration, "reward_finetune_steps": reward_finetune_steps, "scoring_precision": scoring_precision, "racing": racing, "reconstruct": reconstruct, "anchors": anchors,
        "context_students": context_students, "lut": lut, "runs": runs,
        "threads": threads, "torch_threads": torch_threads, "val_limit": val_limit, "skip_bad_images": skip_bad_images,
        "quantize": quantize, "train_teacher": train_teacher, "verdict_rounds": verdict_rounds,
        "reference": reference, "plots": False if no_plots else None,
    }
    given = {name: value for name, value in given.items() if value is not None}
    budget = _budget(latency_ms, latency_ratio, margin, macs, params_budget, required=not resume and not policy_file)
    if budget is None and policy_file and not resume:
        budget = _policy_budget(policy_file)
        if not quiet:
            click.echo(f"budget: {budget}, as the search that wrote {policy_file} had it", err=True)
    check_latency_only(budget, given)
    if json_target and json_target != "-":
        check_writable(json_target, "--json file")
    if lut:
        LatencyTable.load(lut)  # a missing or damaged LUT is refused before anything is measured
    if resume:
        if out is not None or policy_file:
            raise UserError("--resume continues the search in its own folder; drop --out and --policy")
        if budget is not None:
            given["budget"] = budget
        override = [name.strip() for item in resume_override for name in item.split(",") if name.strip()]
        import hwcompress

        result = hwcompress.resume(resume, progress=not quiet, override=override, **given)
        out_folder = resume
    else:
        if resume_override:
            raise UserError("--resume-override goes with --resume DIR")
        out_folder = out or DEFAULT_OUT
        config = SearchConfig(budget=budget, out=out_folder, **given)  # validated here, before torch is imported
        import hwcompress
        from hwcompress.search.prepare import BudgetAlreadyMet

        options = {name: value for name, value in given.items() if name not in ("model", "data")}
        try:
            result = hwcompress.compress(config.model, config.data, budget=config.budget, out=out_folder,
                                         progress=not quiet, policy=policy_file, **options)
        except BudgetAlreadyMet as message:
            click.echo(f"{message}; nothing to compress")
            sys.exit(0)
    document = result.report
    if quiet and json_target != "-":
        click.echo(f"{'budget met' if document['budget_met'] else 'budget NOT met'}: {document['verdict']['text']} "
                   f"({document['verdict']['source']}); test accuracy {100 * document['student']['accuracy']:.2f}%; "
                   f"results in {out_folder}/")
    emit_json(document, json_target)
    if document.get("interrupted"):
        sys.exit(130)
    if not document["budget_met"] and document["verdict"].get("decided", True):
        sys.exit(MISSED)  # over beyond the machine's noise (or by count, or as predicted): a script must see it


#: The exit code of a search whose student misses its budget beyond the measurement's noise.
MISSED = 3


def _budget(latency_ms, latency_ratio, margin, macs, params_budget, *, required: bool) -> Budget | None:
    chosen = [(name, value) for name, value in (("latency_ms", latency_ms), ("latency_ratio", latency_ratio),
                                               ("macs", macs), ("params", params_budget)) if value is not None]
    if not chosen:
        if margin is not None:
            raise UserError("--margin goes with a latency budget (--latency-ms or --latency-ratio)")
        if required:
            raise UserError("give exactly one budget: --latency-ms X, --latency-ratio R, --macs N or --params N")
        return None
    if len(chosen) > 1:
        raise UserError("give exactly one budget: --latency-ms X, --latency-ratio R, --macs N or --params N "
                        f"(got {', '.join('--' + name.replace('_', '-') for name, _ in chosen)})")
    name, value = chosen[0]
    if name in ("macs", "params") and margin is not None:
        raise UserError("--margin applies to latency budgets only")
    margin = DEFAULT_MARGIN if margin is None else margin
    if name == "latency_ms":
        return Budget.latency_ms(value, margin=margin)
    if name == "latency_ratio":
        return Budget.latency_ratio(value, margin=margin)
    return Budget.macs(value) if name == "macs" else Budget.params(value)


def _policy_budget(policy_file: str) -> Budget:
    """The budget of the search that wrote ``policy_file``: its config in the result.json beside it."""
    import json
    from pathlib import Path

    result = Path(policy_file).parent / "result.json"
    ask = ("give the budget to judge the re-applied policy against (--latency-ms X, --latency-ratio R, --macs N or "
           "--params N)")
    if not result.is_file():
        raise UserError(f"{ask}: no result.json beside {policy_file} records its search's")
    try:
        return Budget.from_dict(json.loads(result.read_text())["config"]["budget"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StopIteration, UserError):
        raise UserError(f"{ask}: {result} holds no budget hwcompress can read") from None


def parse_agent_options(items: tuple[str, ...]) -> dict:
    """``("rollouts=3", "student_loss=l2")`` -> ``{"rollouts": 3, "student_loss": "l2"}`` (JSON values, else strings)."""
    import json

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
