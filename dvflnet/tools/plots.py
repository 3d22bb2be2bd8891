"""Pictures of any run: `dvflnet plot RUN [RUN ...]` draws the training loss, the learning rate and
the validation top-1 of runs side by side from their log.jsonl; `dvflnet evaluate` writes each view's
confusion matrix as a PNG beside its JSON and prints the per-class accuracy, worst classes first.
"""
from __future__ import annotations

import json
import os

from ..atomic import save_figure


class RunLogError(ValueError):
    """A run folder without a readable log.jsonl; the message names it."""


def read_log(run: str) -> tuple[list[dict], list[dict]]:
    """(step records, epoch records) of a run folder's log.jsonl (a line a kill cut short is skipped)."""
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        raise RunLogError(f"{run}: no log.jsonl (a train / distill run folder writes one)")
    steps, epochs = [], []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                {"step": steps, "epoch": epochs}.get(record.get("event"), []).append(record)
    if not steps and not epochs:
        raise RunLogError(f"{path}: no step or epoch records yet")
    return steps, epochs


def plot_runs(runs: list[str], path: str) -> str:
    """One PNG comparing `runs`: training loss per logged step, learning rate, and validation top-1
    at each validated epoch, all against optimizer steps (runs of other lengths line up)."""
    if not runs:
        raise RunLogError("RUN: give at least one run folder")
    logs = {run: read_log(run) for run in runs}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes, top1_axes) = plt.subplots(1, 3, figsize=(15, 4.5))
    for run, (steps, epochs) in logs.items():
        label = os.path.basename(os.path.normpath(run)) or run
        if steps:
            loss_axes.plot([r["step"] for r in steps], [r["loss"] for r in steps], linewidth=1, label=label)
            lr_axes.plot([r["step"] for r in steps], [r["lr"] for r in steps], linewidth=1, label=label)
        validated = [(r["step"], r["val_top1"]) for r in epochs if r.get("val_top1") is not None]
        if validated:
            top1_axes.plot(*zip(*validated), marker=".", label=label)
    loss_axes.set(title="training loss", xlabel="optimizer step")
    lr_axes.set(title="learning rate", xlabel="optimizer step")
    top1_axes.set(title="validation top-1 (%)", xlabel="optimizer step", ylim=(0, 100))
    for axes in (loss_axes, lr_axes, top1_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path


def plot_confusion(report: dict, path: str) -> str:
    """The confusion matrix of an evaluation report (rows: true class, normalised to its videos;
    columns: predicted), class names on the axes up to 40 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(report["confusion"], dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(counts)
    side = min(4 + 0.25 * k, 16)
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    image = axes.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class's videos")
    names = report.get("classes") or [str(i) for i in range(k)]
    if k <= 40:
        axes.set_xticks(range(k), names, rotation=90, fontsize=7)
        axes.set_yticks(range(k), names, fontsize=7)
    clips, crops = report.get("views", ["?", "?"])
    axes.set(xlabel="predicted", ylabel="true", title=f"confusion, {clips}x{crops} views: top-1 {report['top1']:.2f}% "
                                                       f"of {report['num_videos']} videos")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path


def worst_classes(report: dict, count: int = 10) -> list[str]:
    """Lines "name  accuracy%  (n videos)" of the `count` classes with the lowest top-1, worst first
    (classes without a video left out)."""
    names = report.get("classes") or [str(i) for i in range(len(report["per_class_top1"]))]
    videos = [sum(row) for row in report["confusion"]]
    scored = sorted((accuracy, name, n) for accuracy, name, n in zip(report["per_class_top1"], names, videos)
                    if accuracy is not None)
    width = max((len(name) for _, name, _ in scored[:count]), default=0)
    return [f"{name:<{width}}  {accuracy:6.2f}%  ({n} videos)" for accuracy, name, n in scored[:count]]
