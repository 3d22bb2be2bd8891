"""The demo: the whole DVFL-Net story on generated videos, on a laptop CPU in minutes.

1. generate a synthetic video dataset whose classes need temporal reasoning (mp4 + CSVs),
2. train a teacher, 3. train the student from scratch, 4. distil the student from the teacher,
5. evaluate all three (1 clip x 1 crop and 4 clips x 3 crops) and print a table.

Settings come from ``configs/demo.yaml``: a ``dataset`` section (generate_dataset arguments), a
``base`` run config shared by the runs, and per-run sections ``teacher`` / ``student`` / ``distill``
merged over it (distill = student settings + teacher + kd).
"""
from __future__ import annotations

import copy
import csv
import io
import inspect
import itertools
import json
import os
import shutil
import statistics
import time

import torch

import dvfl_kernels

from ..atomic import save_figure, write_json, write_text
from ..complexity import count_flops, count_parameters
from ..data.synthetic import generate_dataset
from ..data.video import DecodedVideos
from ..engine.config import DEFAULTS, ConfigError, check_config, merge_config, parse_opts, read_yaml_file
from ..engine.builders import build_model
from ..engine.evaluation import run_evaluation
from ..engine.schema import RunConfig
from ..engine.training import measure_threads, run_training

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.yaml")
RUNS = ("teacher", "student", "distill")
STUDENT_CSV = "students.csv"
SPEC_JSON = "demo_settings.json"


def set_seed(spec: dict, seed: int) -> None:
    """One seed for the whole demo: the generated data and every run's seed (model initialisation,
    data order, augmentation, drop-path; the loaders derive theirs from it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    spec["dataset"]["seed"] = seed
    spec["base"]["seed"] = seed
    for run in RUNS:
        if spec[run] and "seed" in spec[run]:
            spec[run]["seed"] = seed


def load_demo_config(path: str = DEMO_CONFIG, opts: list[str] | None = None) -> dict:
    """The demo file with --opts applied (dotted keys into it, e.g. ``base.train.epochs 3``); every
    run section is checked against the run-config keys, the dataset section against generate_dataset."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"demo config: no such file: {path}")
    spec = read_yaml_file(path)
    for dotted, value in parse_opts(opts):
        node, keys = spec, dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    sections = ("output", "dataset", "student_train_per_class", "base", *RUNS)
    missing = [s for s in sections if s not in spec]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}")
    unknown = sorted(set(spec) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} at the top level (known: {', '.join(sections)})")
    per_class = spec["student_train_per_class"]
    if isinstance(per_class, bool) or not isinstance(per_class, int) or not 0 < per_class <= spec["dataset"].get("train_per_class", 40):
        raise ConfigError(f"{path}: student_train_per_class: expected an integer in [1, dataset.train_per_class], got {per_class!r}")
    known = set(inspect.signature(generate_dataset).parameters) - {"root"}
    unknown = set(spec["dataset"]) - known
    if unknown:
        raise ConfigError(f"{path}: dataset: unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
    # unknown keys raise here; values are checked now too, not when a run starts minutes later
    for run, cfg in run_configs(spec, "").items():
        if run == "distill":  # the teacher's checkpoint exists once the teacher has trained
            cfg["teacher"]["checkpoint"] = "the teacher's final weights"
        cfg["data"]["labels_csv"] = None  # generated with the videos, one name per class
        try:
            check_config(cfg, distill=run == "distill")
        except ConfigError as err:
            raise ConfigError(f"{path}: the {run} run: {err}") from None
    return spec


def run_configs(spec: dict, data_root: str) -> dict[str, dict]:
    """The three run configs: DEFAULTS <- base <- run section, with the generated data and outputs.
    The teacher trains on the whole generated pool (train.csv), the students on its first
    student_train_per_class clips of each class (students.csv)."""
    configs = {}
    for run in RUNS:
        cfg = merge_config(copy.deepcopy(DEFAULTS), spec["base"], "demo base")
        if run == "distill":
            merge_config(cfg, spec["student"], "demo student")
        merge_config(cfg, spec[run] or {}, f"demo {run}")
        cfg["output"] = os.path.join(spec["output"], run)
        cfg["resume"] = None  # every demo run starts fresh
        cfg["data"].update(
            root=data_root, train_csv=os.path.join(data_root, "train.csv" if run == "teacher" else STUDENT_CSV), val_csv=os.path.join(data_root, "val.csv"),
            labels_csv=os.path.join(data_root, "labels.csv"),
        )
        configs[run] = cfg
    configs["distill"]["teacher"].update(name=configs["teacher"]["model"]["name"], kwargs=configs["teacher"]["model"]["kwargs"])
    return configs


def _prepare_data(spec: dict) -> str:
    """Generate the dataset once per settings (a stamp file records them so a rerun reuses it) and
    write the students' subset of the training pool."""
    root = os.path.join(spec["output"], "data")
    stamp = os.path.join(root, "settings.json")
    wanted = json.dumps({**spec["dataset"], "student_train_per_class": spec["student_train_per_class"]}, sort_keys=True)
    if os.path.isfile(stamp) and open(stamp).read() == wanted:
        return root
    dataset = generate_dataset(root, **spec["dataset"], overwrite=True)  # the demo's own folder, settings changed
    taken: dict[int, int] = {}
    chosen = io.StringIO()
    writer = csv.writer(chosen)
    with open(dataset.train_csv, newline="") as f:
        for path, label in csv.reader(f):
            taken[label] = taken.get(label, 0) + 1
            if taken[label] <= spec["student_train_per_class"]:
                writer.writerow((path, label))
    write_text(chosen.getvalue(), os.path.join(root, STUDENT_CSV))
    write_text(wanted, stamp)
    return root


def run_demo(spec: dict) -> list[dict]:
    start = time.perf_counter()
    print(f"[1/5] generating videos under {spec['output']}/data", flush=True)
    root = _prepare_data(spec)
    configs = run_configs(spec, root)
    # the three runs and their evaluations read the same files: each decoded once for the whole demo
    budget = configs["teacher"]["data"]["decoded_cache_mb"] << 20
    decoded = DecodedVideos.shared(budget) if budget else None
    rows, summaries, threads = [], {}, {}
    titles = {"teacher": "training the teacher", "student": "training the student from scratch",
              "distill": "distilling the student from the teacher"}
    partner = beside_whom(configs)  # the run the scratch student trains beside, one core each, or None
    scratch = None
    try:
        for number, run in enumerate(RUNS, start=2):
            about = f"({configs[run]['model']['kwargs']}, {configs[run]['train']['epochs']} epochs)"
            if run == "student" and scratch is not None:  # trained beside the teacher: its results
                summary, threads[run] = scratch.join(), 1
                print(f"[3/5] the student from scratch finished beside the teacher: {summary['train_time_s']:.0f} s "
                      "of training", flush=True)
            elif run == "student" and partner == "distill":  # trained beside the distillation, next
                continue
            elif run == partner:
                shutil.rmtree(configs["student"]["output"], ignore_errors=True)  # every demo run starts fresh
                log = os.path.join(configs["student"]["output"], "console.log")
                print(f"[{number}/5] {titles[run]} {about}, on one core, and {titles['student']} beside it on the "
                      f"other (its output: {log})", flush=True)
                scratch = StudentBeside(configs["student"], log)
                shutil.rmtree(configs[run]["output"], ignore_errors=True)
                with dvfl_kernels.cpu_threads.pinned(1):
                    summary = run_training(configs[run], distill=run == "distill")
                threads[run] = 1
            else:
                print(f"[{number}/5] {titles[run]} {about}", flush=True)
                shutil.rmtree(configs[run]["output"], ignore_errors=True)  # every demo run starts fresh
                summary = run_training(configs[run], distill=run == "distill")
                threads[run] = torch.get_num_threads()
            summaries[run] = summary
            # the demo evaluates the end of training (not a val-selected epoch); the student learns
            # from the teacher's final weights
            configs[run]["eval"]["checkpoint"] = summary["last"]
            if run == "teacher":
                configs["distill"]["teacher"]["checkpoint"] = summary["last"]
            rows.append({"run": run, "seed": configs[run]["seed"], "threads": threads[run],
                         "train_time_s": summary["train_time_s"]})
            if run == "distill" and partner == "distill":
                summary, threads["student"] = scratch.join(), 1
                print(f"[3/5] the student from scratch finished beside the distillation: {summary['train_time_s']:.0f} s "
                      "of training", flush=True)
                summaries["student"] = summary
                configs["student"]["eval"]["checkpoint"] = summary["last"]
                rows.insert(1, {"run": "student", "seed": configs["student"]["seed"], "threads": 1,
                                "train_time_s": summary["train_time_s"]})
    finally:  # an error or Ctrl-C in the run beside it stops the student
        if scratch is not None:
            scratch.stop()
    print("[5/5] evaluating (1 clip x 1 crop, 4 clips x 3 crops)", flush=True)
    for row in rows:
        run = RunConfig.from_dict(configs[row["run"]])
        results = run_evaluation(run)
        model = build_model(run.model, run.data, pretrained=False)
        row.update(params=count_parameters(model), gflops=count_flops(model, run.data.num_frames, run.data.size) / 1e9,
                   **{f"{k}_{m}": v[m] for k, v in results.items() for m in ("top1", "top5")})
    del decoded
    print_table(rows)
    write_json(rows, os.path.join(spec["output"], "results.json"))
    picture = plot_results(rows, {run: summaries[run]["epochs"] for run in RUNS}, os.path.join(spec["output"], "results.png"))
    print(f"learning curves and table: {picture}", flush=True)
    write_text(json.dumps(_settings(spec), indent=1, sort_keys=True), os.path.join(spec["output"], SPEC_JSON))  # last: marks a finished demo
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {spec['output']}/results.json", flush=True)
    return rows


def beside_whom(configs: dict) -> str | None:
    """The run ("teacher" or "distill") the scratch student trains beside, one thread each, or None.

    The scratch student needs nothing of the other two runs. Where a run's step is measured no faster
    on all usable cores than on one (dvfl_kernels.choose_training_threads: within THREADS_MUST_PAY),
    the second core would idle at its barriers: the student trains there instead. The teacher is
    asked first (the longest run), then the distillation. Never with one usable core, or when the
    user gave a thread count (then every run takes it, one after the other)."""
    if dvfl_kernels.usable_cores() < 2 or dvfl_kernels.cpu_threads.user_threads() is not None:
        return None
    for run in ("teacher", "distill"):
        cfg = copy.deepcopy(configs[run])
        if run == "distill":
            cfg["teacher"]["checkpoint"] = "not needed to measure"
        if measure_threads(cfg, distill=run == "distill") == 1:
            return run
    return None


class StudentBeside:
    """The scratch student's run in a process of its own (spawned: a fresh OpenMP runtime), one
    thread, its output in `log`; join() gives run_training's summary or raises naming the log."""

    def __init__(self, cfg: dict, log: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.log, self.results = log, context.Queue()
        os.makedirs(os.path.dirname(log), exist_ok=True)
        self.process = context.Process(target=_train_beside, args=(cfg, log, self.results), daemon=True)
        self.process.start()

    def join(self) -> dict:
        try:
            outcome, value = self.results.get()
        except BaseException:  # Ctrl-C while waiting: the student stops too
            self.stop()
            raise
        self.process.join()
        if outcome != "ok":
            raise RuntimeError(f"the student from scratch failed beside the teacher: {value} (its output: {self.log})")
        return value

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


def _train_beside(cfg: dict, log: str, results) -> None:
    """In the spawned process: one thread, output to `log`, the summary (or the error) to `results`."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops this process
    with open(log, "w", buffering=1) as out:
        sys.stdout = sys.stderr = out
        try:
            with dvfl_kernels.cpu_threads.pinned(1):
                results.put(("ok", run_training(cfg)))
        except BaseException as err:  # reported by the parent, which names this log
            results.put(("error", f"{type(err).__name__}: {err}"))
            raise


def _settings(spec: dict) -> dict:
    """What decides a demo's numbers: the spec without its output folder, and the threads (they
    change the rounding, README "The demo"): the user's count, or "measured" (each run's measured
    choice, kept per machine in the probe cache)."""
    chosen = dvfl_kernels.cpu_threads.user_threads()
    return {**{k: v for k, v in spec.items() if k != "output"}, "threads": chosen if chosen is not None else "measured"}


def finished_rows(spec: dict) -> list[dict] | None:
    """The rows of a demo already finished in spec["output"] with these settings, else None."""
    results, settings = (os.path.join(spec["output"], name) for name in ("results.json", SPEC_JSON))
    if not (os.path.isfile(results) and os.path.isfile(settings)):
        return None
    with open(settings) as f:
        if json.load(f) != json.loads(json.dumps(_settings(spec))):  # through JSON: tuples read back as lists
            return None
    with open(results) as f:
        return json.load(f)


def run_seeds(spec: dict, seeds: list[int]) -> dict:
    """The demo once per seed, each in <output>/seed-N (a seed finished earlier with the same settings
    is read back, not rerun), then the spread over seeds: the only figure a single demo's noise allows
    (README, "The demo"). Writes summary.json and summary.md in <output>."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, at least one, got {seeds}")
    per_seed = {}
    for seed in seeds:
        one = copy.deepcopy(spec)
        set_seed(one, seed)
        one["output"] = os.path.join(spec["output"], f"seed-{seed}")
        rows = finished_rows(one)
        if rows is None:
            rows = run_demo(one)
        else:
            print(f"seed {seed}: finished earlier with these settings, read from {one['output']}/results.json", flush=True)
        per_seed[seed] = rows
    summary = summarize(per_seed)
    write_json(summary, os.path.join(spec["output"], "summary.json"))
    write_text(summary_markdown(summary), os.path.join(spec["output"], "summary.md"))
    print(summary_markdown(summary), flush=True)
    return summary


def summarize(per_seed: dict[int, list[dict]]) -> dict:
    """Mean and sample standard deviation over seeds of each run's top-1 per view and of
    distilled - scratch (1x1), and in how many seeds the distilled student is ahead."""
    views = [key for key in next(iter(per_seed.values()))[0] if key.endswith("_top1")]
    table = {seed: {row["run"]: {v: row[v] for v in views} for row in rows} for seed, rows in per_seed.items()}
    gaps = {seed: runs["distill"]["1x1_top1"] - runs["student"]["1x1_top1"] for seed, runs in table.items()}

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {
        "seeds": list(per_seed), "threads": sorted({row["threads"] for rows in per_seed.values() for row in rows}),
        "top1": table, "distill_minus_student_1x1": gaps,
        "spread": {run: {v: spread([table[s][run][v] for s in table]) for v in views} for run in RUNS},
        "gap_spread": spread(list(gaps.values())), "distill_ahead": sum(g > 0 for g in gaps.values()),
    }


def _mean_std(spread: dict, sign: str = "") -> str:
    return f"{spread['mean']:{sign}.1f} ± {spread['std']:.1f}"


def summary_markdown(summary: dict) -> str:
    views = list(summary["spread"]["teacher"])
    header = "| seed | " + " | ".join(f"{run} {v[: -len('_top1')]}" for run in RUNS for v in views) + " | distilled - scratch (1x1) |\n"
    lines = [header, "|---" * (1 + len(RUNS) * len(views) + 1) + "|\n"]
    for seed, runs in summary["top1"].items():
        lines.append(f"| {seed} | " + " | ".join(f"{runs[run][v]:.1f}" for run in RUNS for v in views)
                     + f" | {summary['distill_minus_student_1x1'][seed]:+.1f} |\n")
    lines.append("| mean ± std | " + " | ".join(_mean_std(summary["spread"][run][v]) for run in RUNS for v in views)
                 + f" | {_mean_std(summary['gap_spread'], sign='+')} (ahead in {summary['distill_ahead']} of {len(summary['seeds'])}) |\n")
    return "".join(lines)


def print_table(rows: list[dict]) -> None:
    views = [key[: -len("_top1")] for key in rows[0] if key.endswith("_top1")]
    header = f"{'model':<10}{'params':>10}{'GFLOPs':>9}{'train s':>9}" + "".join(f"{v + ' top1':>11}{v + ' top5':>11}" for v in views)
    print(header)
    for row in rows:
        print(f"{row['run']:<10}{row['params']:>10,}{row['gflops']:>9.3f}{row['train_time_s']:>9.0f}"
              + "".join(f"{row[v + '_top1']:>11.1f}{row[v + '_top5']:>11.1f}" for v in views))


LOSS_POINTS = 40


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    sums = [0.0, *itertools.accumulate(values)]
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_results(rows: list[dict], epochs: dict[str, list[dict]], path: str) -> str:
    """One PNG: training loss and validation top-1 of the three runs at each epoch's end, against
    optimizer steps (the teacher's epochs are longer than the students'), and the results table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(11, 6.5))
    loss_axes, top1_axes = figure.add_subplot(2, 2, 1), figure.add_subplot(2, 2, 2)
    for run, records in epochs.items():
        x, loss = [r["step"] for r in records], [r["train_loss"] for r in records]
        # hundreds of short epochs (the students') make a jagged line: draw it faint, and over it the
        # trailing mean of enough epochs to leave ~LOSS_POINTS points
        window = max(1, round(len(records) / LOSS_POINTS))
        if window == 1:
            loss_axes.plot(x, loss, marker=".", label=run)
        else:
            line, = loss_axes.plot(x, loss, alpha=0.25, linewidth=0.8)
            loss_axes.plot(x, running_mean(loss, window), color=line.get_color(), label=f"{run} (mean of {window} epochs)")
        validated = [(r["step"], r["val_top1"]) for r in records if "val_top1" in r]
        if validated:
            top1_axes.plot(*zip(*validated), marker=".", label=run)
    loss_axes.set(title="training loss (distill: alpha KD + (1 - alpha) CE)", xlabel="optimizer step")
    top1_axes.set(title="validation top-1 (%), 1 clip x 1 crop", xlabel="optimizer step", ylim=(0, 100))
    for axes in (loss_axes, top1_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    views = [key[: -len("_top1")] for key in rows[0] if key.endswith("_top1")]
    table = figure.add_subplot(2, 1, 2)
    table.axis("off")
    cells = [[r["run"], f"{r['params']:,}", f"{r['gflops']:.3f}", f"{r['train_time_s']:.0f}"]
             + [f"{r[v + '_top1']:.1f}" for v in views] for r in rows]
    table.table(cellText=cells, colLabels=["run", "params", "GFLOPs", "train s"] + [f"{v} top-1" for v in views],
                loc="center").scale(1, 1.6)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path
