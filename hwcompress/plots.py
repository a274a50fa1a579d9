"""Plots for people: where a model's time goes (profile) and what a search tried and kept (search).

matplotlib is an optional extra (``pip install 'hwcompress[plots]'``), imported only here and only when
a plot is drawn. Every figure is written to a temporary name and renamed, so a file that exists is
complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from hwcompress.errors import UserError
from hwcompress.files import check_writable, write_atomic

PLOTS_HINT = "pip install 'hwcompress[plots]'"
# A profile plot shows at most this many layers (the slowest, in network order): beyond that the
# labels become unreadable, and the rest is summed into one bar.
MAX_PROFILE_LAYERS = 40
TEACHER_COLOUR, STUDENT_COLOUR, BUDGET_COLOUR, MACS_COLOUR = "#999999", "#4477aa", "#cc3311", "#ddaa33"


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a one-line :class:`UserError` with the hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"plots need matplotlib: {PLOTS_HINT}") from None
    return plt


FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work is done, a plot file that cannot be written: unknown format, no folder,
    or matplotlib missing."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"plot file {path.name!r} must end in {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    check_writable(path, "plot file")
    pyplot()
    return path


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix: .png, .svg, .pdf) and close it."""
    path = Path(path)
    plt = pyplot()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png"))
    except ValueError as error:  # an unknown format
        raise UserError(f"cannot write the plot {path}: {error}") from None
    finally:
        plt.close(fig)
    return path


def profile_layers(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per-layer share of the latency beside the share of the MACs, for a ``hwcompress.profile/1`` document.

    Where the two bars differ is where a hardware-aware search and a MACs-counting one disagree: a layer
    with a large latency share and a small MACs share (depthwise convolutions, memory-bound layers,
    the first convolution at full resolution) is cheap in MACs and dear on the device.

    Returns:
        The written path.

    Raises:
        UserError: no per-layer times in the document, matplotlib missing, or an unknown file format.
    """
    rows = [r for r in document.get("layers", []) if r.get("latency_ms") is not None]
    if not rows:
        raise UserError("the profile has no per-layer times to plot (drop --no-per-layer)")
    total_ms = sum(r["latency_ms"] for r in rows) or 1.0
    total_macs = sum(r.get("macs") or 0 for r in document.get("layers", [])) or 1
    shown = rows
    rest = []
    if len(rows) > MAX_PROFILE_LAYERS:
        slowest = sorted(range(len(rows)), key=lambda i: -rows[i]["latency_ms"])[:MAX_PROFILE_LAYERS]
        keep = set(slowest)
        shown = [r for i, r in enumerate(rows) if i in keep]
        rest = [r for i, r in enumerate(rows) if i not in keep]
    labels = [f"{r['name']} ({r['op']})" for r in shown]
    latency = [100 * r["latency_ms"] / total_ms for r in shown]
    macs = [100 * (r.get("macs") or 0) / total_macs for r in shown]
    if rest:
        labels.append(f"{len(rest)} other layers")
        latency.append(100 * sum(r["latency_ms"] for r in rest) / total_ms)
        macs.append(100 * sum(r.get("macs") or 0 for r in rest) / total_macs)

    plt = pyplot()
    height = max(3.0, 0.22 * len(labels) + 1.4)
    fig, ax = plt.subplots(figsize=(8, height))
    positions = range(len(labels))
    ax.barh([p - 0.2 for p in positions], latency, height=0.4, color=STUDENT_COLOUR, label="share of layer time")
    ax.barh([p + 0.2 for p in positions], macs, height=0.4, color=MACS_COLOUR, label="share of MACs")
    ax.set_yticks(list(positions), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("% of the model")
    latency_doc = document.get("latency_ms") or {}
    source = latency_doc.get("source", "measured")
    median = f", median {latency_doc['median']:.3f} ms ({source})" if latency_doc.get("median") is not None else ""
    ax.set_title(f"{document['model']['name']} on {document['device']['name']}{median}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def search_plots(document: dict[str, Any], history: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """The plots of a search folder; returns their file names. Raises :class:`UserError` without matplotlib."""
    plt = pyplot()
    files = []
    policy = document["policy"]
    fig, ax = plt.subplots(figsize=(max(6, len(policy) * 0.25), 3.5))
    ratios = [row["ratio"] for row in policy]
    ax.bar(range(len(ratios)), ratios, color=STUDENT_COLOUR)
    ax.set_xticks(range(len(ratios)), [row["group"] for row in policy], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("preserve ratio")
    ax.set_title(f"{document['agent']}: channels kept per group")
    fig.tight_layout()
    files.append(save_figure(fig, out / "ratios.png").name)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    rewards = [h["reward"] for h in history] or [0.0]
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    ax.plot(rewards, ".", alpha=0.5, label="episode reward")
    ax.plot(best, "-", label="best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.legend()
    ax.set_title("search progress")
    fig.tight_layout()
    files.append(save_figure(fig, out / "reward.png").name)

    scored = [h for h in history if h.get("accuracy") is not None and h.get("cost") is not None]
    if scored:
        files.append(_accuracy_vs_cost(plt, document, scored, out / "accuracy_vs_cost.png").name)

    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    teacher, student = document["teacher"], document["student"]
    latencies = [teacher["latency_ms"] or teacher.get("predicted_latency_ms") or 0,
                 student["latency_ms"] or student.get("predicted_latency_ms") or 0]
    axes[0].bar(["teacher", "student"], latencies, color=[TEACHER_COLOUR, STUDENT_COLOUR])
    budget = document["budget"].get("latency_ms") if document["budget"].get("metric") == "latency_ms" else None
    if budget:
        axes[0].axhline(budget, color=BUDGET_COLOUR, linestyle="--", label="budget")
        axes[0].legend()
    axes[0].set_ylabel("latency (ms, measured)")
    axes[1].bar(["teacher", "student"], [100 * (teacher["accuracy"] or 0), 100 * student["accuracy"]],
                color=[TEACHER_COLOUR, STUDENT_COLOUR])
    axes[1].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    files.append(save_figure(fig, out / "teacher_vs_student.png").name)
    return files


def _accuracy_vs_cost(plt: Any, document: dict[str, Any], scored: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every scored episode: validation accuracy against its predicted cost, the budget, the kept student."""
    metric = document["budget"]["metric"]
    budget = document["budget"][metric]
    unit = {"latency_ms": "predicted latency (ms)", "macs": "MACs", "params": "parameters"}.get(metric, metric)
    fig, ax = plt.subplots(figsize=(6, 4))
    images = (document.get("scoring") or {}).get("val_images")
    cut = [h for h in scored if images and h.get("val_images") and h["val_images"] < images]
    whole = [h for h in scored if h not in cut]
    episodes = [h["episode"] for h in scored]
    shade = {"cmap": "viridis", "vmin": min(episodes, default=0), "vmax": max(episodes, default=1)}
    points = ax.scatter([h["cost"] for h in whole], [100 * h["accuracy"] for h in whole],
                        c=[h["episode"] for h in whole], s=12, alpha=0.8, **shade)
    if cut:  # racing: rewarded on a third of the validation images, under what the best needed
        first = (document.get("scoring") or {}).get("racing") or {}
        ax.scatter([h["cost"] for h in cut], [100 * h["accuracy"] for h in cut], c=[h["episode"] for h in cut],
                   marker="x", s=14, alpha=0.8, label=f"scored on {first.get('first_images', 'a third of the')} images (racing)",
                   **shade)
    fig.colorbar(points, ax=ax, label="episode")
    ax.axvline(budget, color=BUDGET_COLOUR, linestyle="--", label="budget")
    best = document.get("best_episode")
    chosen = [h for h in scored if h["episode"] == best]
    undone = document.get("grow_undone")  # undone back to the start with no trim before it: the episode's student is kept
    repaired = bool(document.get("budget_repairs")) and not (undone and not undone.get("trims") and not undone.get("kept_grow_steps"))
    if chosen:
        label = f"best found (episode {best})" if repaired else f"kept (episode {best})"
        ax.scatter([chosen[0]["cost"]], [100 * chosen[0]["accuracy"]], marker="*", s=160, color=BUDGET_COLOUR,
                   edgecolor="black", zorder=3, label=label)
    kept_cost = document["student"].get("predicted_cost")
    if repaired and kept_cost is not None:
        # The kept student is the repaired one: not an episode, so not a point; its predicted cost is.
        ax.axvline(kept_cost, color=STUDENT_COLOUR, linestyle=":", label="kept student (after the repair or grow step)")
    ax.set_xlabel(unit)
    ax.set_ylabel("validation accuracy during the search (%)")
    ax.set_title(f"{document['agent']}: what the search tried", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
