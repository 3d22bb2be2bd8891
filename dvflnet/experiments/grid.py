"""`dvflnet ablate`: the paper's alpha x temperature grid of distillation runs from one teacher cache.

    dvflnet ablate --config distill.yaml --output runs/grid [--alphas 0.3 0.5 0.7] [--temperatures 5 10 15] [--seeds 0 1 2]
    dvflnet ablate --merge runs/s0/grid runs/s1/grid --output runs/grid   # grids of different data / teachers

Per seed, the teacher runs once (``build_teacher_cache`` into <output>/cache-seed<N>, resumed when
present); every cell then distils a student from the cached logits into
<output>/seed<N>/alpha<a>-T<t>/ and evaluates its last checkpoint. A finished cell keeps its
result.json and is not run again; a cell cut short resumes from its own checkpoints. The grid's
table (mean and spread over seeds) is written as grid.csv and grid.md, and its 1x1 top-1 as a
heatmap, grid.png. `--merge` joins the grid.csv of grids run apart (the demo's seed changes the data
and the teacher too, so each demo seed has its own grid) into one table over all their seeds.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import dataclass

from ..atomic import save_figure, write_json, write_text
from ..engine.config import ConfigError, check_config
from ..engine.schema import RunConfig
from ..engine.evaluation import run_evaluation
from ..engine.training import run_training
from ..engine.teacher_cache import build_teacher_cache

ALPHAS = (0.3, 0.5, 0.7)
TEMPERATURES = (5.0, 10.0, 15.0)
# grid.csv's columns and result.json's keys: a cell's 1x1 top-1 / top-5 (%) under these names
CSV_COLUMNS = ("seed", "alpha", "temperature", "1x1_top1", "1x1_top5", "train_time_s")


@dataclass(frozen=True)
class CellResult:
    """One distillation run of the grid: its settings' values and its last checkpoint's 1x1 scores."""

    seed: int
    alpha: float
    temperature: float
    top1: float  # 1 clip x 1 crop, %
    top5: float
    train_time_s: float
    checkpoint: str | None = None
    settings: dict | None = None  # what the result depends on (_settings); None for a merged grid.csv row

    def to_json(self) -> dict:
        """result.json's mapping (and a grid.csv row, with the first CSV_COLUMNS)."""
        return dict(zip(CSV_COLUMNS, (self.seed, self.alpha, self.temperature, self.top1, self.top5, self.train_time_s)),
                    checkpoint=self.checkpoint, settings=self.settings)

    @classmethod
    def from_json(cls, row: dict) -> CellResult:
        """From result.json, or a grid.csv row (its values as text); KeyError / ValueError when it is not one."""
        seed, alpha, temperature, top1, top5, train_time_s = (row[column] for column in CSV_COLUMNS)
        return cls(int(seed), float(alpha), float(temperature), float(top1), float(top5), float(train_time_s),
                   row.get("checkpoint"), row.get("settings"))


@dataclass(frozen=True)
class CellSpread:
    """One (alpha, temperature) cell over seeds: mean and population std of the 1x1 top-1 / top-5."""

    alpha: float
    temperature: float
    seeds: int
    top1_mean: float
    top1_std: float
    top5_mean: float
    top5_std: float


def cell_name(alpha: float, temperature: float) -> str:
    return f"alpha{alpha:g}-T{temperature:g}"


def cell_config(cfg: RunConfig, alpha: float, temperature: float, folder: str) -> RunConfig:
    return cfg.updated(kd={"alpha": alpha, "temperature": temperature}, output=folder, resume="auto")


def _settings(cell: RunConfig) -> dict:
    """What a cell's result depends on: its whole run config but where it is written, how progress
    shows and the CPU engine's choices a run records (paths made absolute, as the trainer saves them)."""
    settings = cell.with_absolute_paths().to_dict()
    for key in ("output", "resume", "verdicts"):
        settings.pop(key)
    train = settings.pop("train")
    settings.update(train={k: v for k, v in train.items() if k not in ("progress", "log_every")})
    return json.loads(json.dumps(settings))  # as read back from JSON (tuples as lists)


def _differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str) for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"[:120]]


def run_cell(cfg: dict | RunConfig, alpha: float, temperature: float, folder: str) -> CellResult:
    """One distillation run of the grid (resumed when cut short) and its 1x1 evaluation; the result is
    kept in <folder>/result.json, so a finished cell is read back instead of run again."""
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    result_path = os.path.join(folder, "result.json")
    cell = cell_config(cfg, alpha, temperature, folder)
    settings = _settings(cell)
    if os.path.isfile(result_path):
        with open(result_path) as f:
            result = CellResult.from_json(json.load(f))
        if result.settings != settings:
            changed = _differences(result.settings or {}, settings)
            raise ConfigError(f"{folder}: this cell was run with other settings ({', '.join(changed[:5]) or 'unknown: no settings saved'}); "
                              "give another --output, or remove the folder to run it again")
        return result
    if os.path.isdir(folder) and os.listdir(folder):
        saved = os.path.join(folder, "config.json")
        if os.path.isfile(saved):  # a cell cut short: resume only what these settings started
            with open(saved) as f:
                changed = _differences(_settings(RunConfig.from_dict(json.load(f))), settings)
            if changed:
                raise ConfigError(f"{folder}: a cell cut short under other settings ({', '.join(changed[:5])}); "
                                  "give another --output, or remove the folder to run it again")
    summary = run_training(cell, distill=True)
    (report,) = run_evaluation(cell.updated(eval={"checkpoint": summary.last, "views": ((1, 1),)})).values()
    result = CellResult(cfg.seed, alpha, temperature, report["top1"], report["top5"], summary.train_time_s, summary.last,
                        settings)
    write_json(result.to_json(), result_path)
    return result


def run_grid(cfg: dict | RunConfig, output: str, alphas=ALPHAS, temperatures=TEMPERATURES, seeds=None) -> list[CellResult]:
    """Every (seed, alpha, temperature) cell; returns their results and writes the grid's files."""
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    if not cfg.teacher.checkpoint or not cfg.teacher.name:
        raise ConfigError("teacher.name and teacher.checkpoint: the grid distils from a trained teacher; set both")
    for name, values in (("--alphas", alphas), ("--temperatures", temperatures), ("--seeds", seeds or [0])):
        if not values:
            raise ConfigError(f"{name}: expected at least one value")
        twice = sorted({v for v in values if list(values).count(v) > 1})
        if twice:
            raise ConfigError(f"{name}: {', '.join(map(str, twice))} given more than once")
    negative = [s for s in seeds or [] if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if negative:
        raise ConfigError(f"--seeds: expected integers >= 0, got {', '.join(map(repr, negative))}")
    # every cell's values (alpha in [0, 1], T in (0, max], finite) checked before the teacher runs
    for alpha in alphas:
        for temperature in temperatures:
            try:
                check_config(cell_config(cfg, alpha, temperature, output), distill=True)
            except ConfigError as err:
                raise ConfigError(f"alpha {alpha:g}, T {temperature:g}: {err}") from None
    seeds = [cfg.seed] if not seeds else list(seeds)
    results = []
    for seed in seeds:
        seeded = cfg.updated(seed=seed, kd={"teacher_cache": os.path.join(output, f"cache-seed{seed}")})
        cache = build_teacher_cache(seeded)
        print(f"seed {seed}: teacher cache ready ({cache.written} chunk(s) written, {cache.kept} kept, "
              f"{cache.time_s:.0f} s)", flush=True)
        for alpha in alphas:
            for temperature in temperatures:
                folder = os.path.join(output, f"seed{seed}", cell_name(alpha, temperature))
                result = run_cell(seeded, alpha, temperature, folder)
                print(f"seed {seed}, alpha {alpha:g}, T {temperature:g}: 1x1 top-1 {result.top1:.1f}%", flush=True)
                results.append(result)
    write_grid(results, output)
    return results


def merge_grids(folders: list[str], output: str) -> list[CellResult]:
    """The runs of several finished grids (their grid.csv) as one grid written to `output`; a (seed,
    alpha, T) cell found in two of them is an error naming both."""
    results, where = [], {}
    for folder in folders:
        path = os.path.join(folder, "grid.csv")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--merge: no grid.csv in {folder} (run `dvflnet ablate` there first)")
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    run = CellResult.from_json(row)
                except (KeyError, TypeError, ValueError) as err:
                    raise ConfigError(f"{path}:{line}: not a grid row ({err})") from None
                cell = (run.seed, run.alpha, run.temperature)
                if cell in where:
                    raise ConfigError(f"--merge: seed {cell[0]}, alpha {cell[1]:g}, T {cell[2]:g} is in both {where[cell]} and {path}")
                where[cell] = path
                results.append(run)
    write_grid(results, output)
    return results


def summarize(results: list[CellResult]) -> list[CellSpread]:
    """One row per (alpha, temperature): mean, spread (population std) and count over seeds."""
    rows = []
    for alpha, temperature in dict.fromkeys((r.alpha, r.temperature) for r in results):
        cell = [r for r in results if (r.alpha, r.temperature) == (alpha, temperature)]
        top1, top5 = [r.top1 for r in cell], [r.top5 for r in cell]
        rows.append(CellSpread(alpha, temperature, len(cell), statistics.fmean(top1), statistics.pstdev(top1),
                               statistics.fmean(top5), statistics.pstdev(top5)))
    return rows


def write_grid(results: list[CellResult], output: str) -> None:
    """grid.csv (one row per run), grid.md (mean +- std per cell, alpha x temperature) and grid.png."""
    os.makedirs(output, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(r.to_json() for r in results)
    write_text(table.getvalue(), os.path.join(output, "grid.csv"))
    rows = summarize(results)
    alphas = sorted({r.alpha for r in rows})
    temperatures = sorted({r.temperature for r in rows})
    by_cell = {(r.alpha, r.temperature): r for r in rows}
    seeds = sorted({r.seed for r in results})
    lines = [f"1x1 top-1 (%), mean ± std over seeds {', '.join(map(str, seeds))}", "",
             "| alpha \\ T | " + " | ".join(f"{t:g}" for t in temperatures) + " |",
             "|---|" + "---|" * len(temperatures)]
    for alpha in alphas:
        cells = [by_cell.get((alpha, t)) for t in temperatures]
        lines.append(f"| {alpha:g} | " + " | ".join(f"{c.top1_mean:.1f} ± {c.top1_std:.1f}" if c else "-" for c in cells) + " |")
    write_text("\n".join(lines) + "\n", os.path.join(output, "grid.md"))
    _heatmap(alphas, temperatures, by_cell, seeds, os.path.join(output, "grid.png"))


def _heatmap(alphas, temperatures, by_cell: dict[tuple[float, float], CellSpread], seeds, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[by_cell[(a, t)].top1_mean if (a, t) in by_cell else np.nan for t in temperatures] for a in alphas])
    figure, axes = plt.subplots(figsize=(1.6 * len(temperatures) + 2.4, 1.2 * len(alphas) + 1.6))
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    axes.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    axes.set(xlabel="temperature T", ylabel="alpha", title=f"distilled student, 1x1 top-1 (%), seeds {', '.join(map(str, seeds))}")
    for i, alpha in enumerate(alphas):
        for j, temperature in enumerate(temperatures):
            cell = by_cell.get((alpha, temperature))
            if cell:
                axes.text(j, i, f"{cell.top1_mean:.1f}\n± {cell.top1_std:.1f}", ha="center", va="center",
                          color="white" if cell.top1_mean < np.nanmean(grid) else "black")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
