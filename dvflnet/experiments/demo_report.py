"""What the demo reports: its table (results.json, printed), its picture (results.png: learning curves
and the table), and the summary over seeds (summary.json, summary.md)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from dataclasses import dataclass
from typing import NamedTuple

from ..atomic import save_figure
from ..engine.training import EpochRecord

RUNS = ("teacher", "student", "distill")
HEADLINE_VIEW = "1x1"  # the view the distilled and scratch students are compared on


@dataclass
class DemoRow:
    """One run's line of the demo's table (results.json holds these, views flattened: "1x1_top1")."""

    run: str
    seed: int
    threads: int
    train_time_s: float
    params: int = 0
    gflops: float = 0.0
    top1: dict[str, float] = dataclasses.field(default_factory=dict)  # view ("1x1", "4x3") -> %
    top5: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        scores = {}
        for view in self.top1:
            scores[f"{view}_top1"], scores[f"{view}_top5"] = self.top1[view], self.top5[view]
        return {"run": self.run, "seed": self.seed, "threads": self.threads, "train_time_s": self.train_time_s,
                "params": self.params, "gflops": self.gflops, **scores}

    @classmethod
    def from_json(cls, row: dict) -> DemoRow:
        fixed = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name not in ("top1", "top5")}
        scores = {metric: {key[: -len(metric) - 1]: value for key, value in row.items() if key.endswith(f"_{metric}")}
                  for metric in ("top1", "top5")}
        return cls(**fixed, **scores)


class Spread(NamedTuple):
    """Mean and sample standard deviation (0 for one value)."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    def shown(self, sign: str = "") -> str:
        return f"{self.mean:{sign}.1f} ± {self.std:.1f}"


@dataclass
class SeedSummary:
    """The demo over seeds: each seed's top-1 per run and view, distilled - scratch at HEADLINE_VIEW,
    and their spread."""

    seeds: list[int]
    threads: list[int]  # the thread counts the runs took
    top1: dict[int, dict[str, dict[str, float]]]  # seed -> run -> view -> %
    gaps: dict[int, float]  # seed -> distilled - scratch top-1 at HEADLINE_VIEW
    spread: dict[str, dict[str, Spread]]  # run -> view -> over seeds
    gap_spread: Spread
    distill_ahead: int  # seeds where the distilled student is ahead

    @classmethod
    def of(cls, per_seed: dict[int, list[DemoRow]]) -> SeedSummary:
        top1 = {seed: {row.run: dict(row.top1) for row in rows} for seed, rows in per_seed.items()}
        gaps = {seed: runs["distill"][HEADLINE_VIEW] - runs["student"][HEADLINE_VIEW] for seed, runs in top1.items()}
        views = list(next(iter(per_seed.values()))[0].top1)
        return cls(list(per_seed), sorted({row.threads for rows in per_seed.values() for row in rows}), top1, gaps,
                   {run: {v: Spread.of([top1[s][run][v] for s in top1]) for v in views} for run in RUNS},
                   Spread.of(list(gaps.values())), sum(g > 0 for g in gaps.values()))

    def to_json(self) -> dict:
        """summary.json: views as "<view>_top1" keys, spreads as {"mean", "std"}."""
        return json.loads(json.dumps({
            "seeds": self.seeds, "threads": self.threads,
            "top1": {seed: {run: {f"{v}_top1": x for v, x in views.items()} for run, views in runs.items()}
                     for seed, runs in self.top1.items()},
            f"distill_minus_student_{HEADLINE_VIEW}": self.gaps,
            "spread": {run: {f"{v}_top1": spread._asdict() for v, spread in views.items()} for run, views in self.spread.items()},
            "gap_spread": self.gap_spread._asdict(), "distill_ahead": self.distill_ahead,
        }))

    def markdown(self) -> str:
        views = list(self.spread[RUNS[0]])
        header = ("| seed | " + " | ".join(f"{run} {v}" for run in RUNS for v in views)
                  + f" | distilled - scratch ({HEADLINE_VIEW}) |\n")
        lines = [header, "|---" * (1 + len(RUNS) * len(views) + 1) + "|\n"]
        for seed, runs in self.top1.items():
            lines.append(f"| {seed} | " + " | ".join(f"{runs[run][v]:.1f}" for run in RUNS for v in views)
                         + f" | {self.gaps[seed]:+.1f} |\n")
        lines.append("| mean ± std | " + " | ".join(self.spread[run][v].shown() for run in RUNS for v in views)
                     + f" | {self.gap_spread.shown(sign='+')} (ahead in {self.distill_ahead} of {len(self.seeds)}) |\n")
        return "".join(lines)


def print_table(rows: list[DemoRow]) -> None:
    views = list(rows[0].top1)
    header = f"{'model':<10}{'params':>10}{'GFLOPs':>9}{'train s':>9}" + "".join(f"{v + ' top1':>11}{v + ' top5':>11}" for v in views)
    print(header)
    for row in rows:
        print(f"{row.run:<10}{row.params:>10,}{row.gflops:>9.3f}{row.train_time_s:>9.0f}"
              + "".join(f"{row.top1[v]:>11.1f}{row.top5[v]:>11.1f}" for v in views))


LOSS_POINTS = 40


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    sums = [0.0, *itertools.accumulate(values)]
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_results(rows: list[DemoRow], epochs: dict[str, list[EpochRecord]], path: str) -> str:
    """One PNG: training loss and validation top-1 of the three runs at each epoch's end, against
    optimizer steps (the teacher's epochs are longer than the students'), and the results table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(11, 6.5))
    loss_axes, top1_axes = figure.add_subplot(2, 2, 1), figure.add_subplot(2, 2, 2)
    for run, records in epochs.items():
        x, loss = [r.step for r in records], [r.train_loss for r in records]
        # hundreds of short epochs (the students') make a jagged line: draw it faint, and over it the
        # trailing mean of enough epochs to leave ~LOSS_POINTS points
        window = max(1, round(len(records) / LOSS_POINTS))
        if window == 1:
            loss_axes.plot(x, loss, marker=".", label=run)
        else:
            line, = loss_axes.plot(x, loss, alpha=0.25, linewidth=0.8)
            loss_axes.plot(x, running_mean(loss, window), color=line.get_color(), label=f"{run} (mean of {window} epochs)")
        validated = [(r.step, r.val_top1) for r in records if r.val_top1 is not None]
        if validated:
            top1_axes.plot(*zip(*validated), marker=".", label=run)
    loss_axes.set(title="training loss (distill: alpha KD + (1 - alpha) CE)", xlabel="optimizer step")
    top1_axes.set(title="validation top-1 (%), 1 clip x 1 crop", xlabel="optimizer step", ylim=(0, 100))
    for axes in (loss_axes, top1_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    views = list(rows[0].top1)
    table = figure.add_subplot(2, 1, 2)
    table.axis("off")
    cells = [[r.run, f"{r.params:,}", f"{r.gflops:.3f}", f"{r.train_time_s:.0f}"] + [f"{r.top1[v]:.1f}" for v in views]
             for r in rows]
    table.table(cellText=cells, colLabels=["run", "params", "GFLOPs", "train s"] + [f"{v} top-1" for v in views],
                loc="center").scale(1, 1.6)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path
