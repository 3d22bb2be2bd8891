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
import dataclasses
import io
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

import dvfl_kernels

from .. import interrupt
from ..atomic import write_json, write_text
from ..complexity import count_flops, count_parameters
from ..data.synthetic import generate_dataset
from ..data.video import DecodedVideos
from ..engine.builders import build_model
from ..engine.config import DEFAULTS, ConfigError, check_config, merge_config, parse_opts, read_yaml_file
from ..engine.evaluation import run_evaluation
from ..engine.schema import RunConfig
from ..engine.training import TrainingSummary, measure_threads, run_training
from .demo_report import RUNS, DemoRow, SeedSummary, plot_results, print_table

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.yaml")
STUDENT_CSV = "students.csv"
SPEC_JSON = "demo_settings.json"


@dataclass(frozen=True)
class DemoSpec:
    """configs/demo.yaml as read, --opts applied: the demo's folder, the videos it generates, and the
    run sections (plain mappings of run-config keys, merged over each other by run_configs)."""

    output: str
    dataset: dict  # generate_dataset's arguments
    student_train_per_class: int  # the students' clips of each class, the first of the teacher's pool
    base: dict  # the run settings the three runs share
    teacher: dict | None  # each run's own settings over base (distill's over base and student's)
    student: dict | None
    distill: dict | None

    def section(self, run: str) -> dict:
        return getattr(self, run) or {}

    def with_seed(self, seed: int) -> DemoSpec:
        """One seed for the whole demo: the generated data and every run's seed (model initialisation,
        data order, augmentation, drop-path; the loaders derive theirs from it)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
        runs = {run: {**self.section(run), "seed": seed} for run in RUNS if "seed" in self.section(run)}
        return dataclasses.replace(self, dataset={**self.dataset, "seed": seed}, base={**self.base, "seed": seed}, **runs)

    def in_folder(self, output: str) -> DemoSpec:
        return dataclasses.replace(self, output=output)

    def settings(self) -> dict:
        """What decides a demo's numbers: the spec without its output folder, and the threads (they
        change the rounding, README "The demo"): the user's count, or "measured" (each run's measured
        choice, kept per machine in the probe cache). As JSON reads it back (tuples as lists)."""
        chosen = dvfl_kernels.cpu_threads.user_threads()
        spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "output"}
        return json.loads(json.dumps({**spec, "threads": chosen if chosen is not None else "measured"}))


@dataclass(frozen=True)
class DemoRuns:
    """The demo's three run configs."""

    teacher: RunConfig
    student: RunConfig
    distill: RunConfig

    def named(self, run: str) -> RunConfig:
        return getattr(self, run)


def load_demo_config(path: str = DEMO_CONFIG, opts: list[str] | None = None) -> DemoSpec:
    """The demo file with --opts applied (dotted keys into it, e.g. ``base.train.epochs 3``); every
    run section is checked against the run-config keys, the dataset section against generate_dataset."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"demo config: no such file: {path}")
    read = read_yaml_file(path)
    for dotted, value in parse_opts(opts):
        node, keys = read, dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    sections = [f.name for f in dataclasses.fields(DemoSpec)]
    missing = [s for s in sections if s not in read]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}")
    unknown = sorted(set(read) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} at the top level (known: {', '.join(sections)})")
    spec = DemoSpec(**read)
    per_class = spec.student_train_per_class
    if isinstance(per_class, bool) or not isinstance(per_class, int) or not 0 < per_class <= spec.dataset.get("train_per_class", 40):
        raise ConfigError(f"{path}: student_train_per_class: expected an integer in [1, dataset.train_per_class], got {per_class!r}")
    known = set(inspect.signature(generate_dataset).parameters) - {"root"}
    unknown = set(spec.dataset) - known
    if unknown:
        raise ConfigError(f"{path}: dataset: unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
    # unknown keys raise here; values are checked now too, not when a run starts minutes later
    runs = run_configs(spec, "")
    for run in RUNS:
        # the labels are generated with the videos, one name per class; the teacher's checkpoint exists
        # once the teacher has trained
        cfg = runs.named(run).updated(data={"labels_csv": None})
        if run == "distill":
            cfg = cfg.updated(teacher={"checkpoint": "the teacher's final weights"})
        try:
            check_config(cfg, distill=run == "distill")
        except ConfigError as err:
            raise ConfigError(f"{path}: the {run} run: {err}") from None
    return spec


def run_configs(spec: DemoSpec, data_root: str) -> DemoRuns:
    """The three run configs: DEFAULTS <- base <- run section, with the generated data and outputs.
    The teacher trains on the whole generated pool (train.csv), the students on its first
    student_train_per_class clips of each class (students.csv)."""
    configs = {}
    for run in RUNS:
        cfg = merge_config(copy.deepcopy(DEFAULTS), spec.base, "demo base")
        if run == "distill":
            merge_config(cfg, spec.section("student"), "demo student")
        merge_config(cfg, spec.section(run), f"demo {run}")
        train_csv = os.path.join(data_root, "train.csv" if run == "teacher" else STUDENT_CSV)
        configs[run] = RunConfig.from_dict(cfg).updated(
            output=os.path.join(spec.output, run), resume=None,  # every demo run starts fresh
            data={"root": data_root, "train_csv": train_csv, "val_csv": os.path.join(data_root, "val.csv"),
                  "labels_csv": os.path.join(data_root, "labels.csv")})
    runs = DemoRuns(**configs)
    teacher_model = runs.teacher.model
    return dataclasses.replace(runs, distill=runs.distill.updated(
        teacher={"name": teacher_model.name, "kwargs": teacher_model.kwargs}))


def _prepare_data(spec: DemoSpec) -> str:
    """Generate the dataset once per settings (a stamp file records them so a rerun reuses it) and
    write the students' subset of the training pool."""
    root = os.path.join(spec.output, "data")
    stamp = os.path.join(root, "settings.json")
    wanted = json.dumps({**spec.dataset, "student_train_per_class": spec.student_train_per_class}, sort_keys=True)
    if os.path.isfile(stamp) and open(stamp).read() == wanted:
        return root
    dataset = generate_dataset(root, **spec.dataset, overwrite=True)  # the demo's own folder, settings changed
    taken: dict[int, int] = {}
    chosen = io.StringIO()
    writer = csv.writer(chosen)
    with open(dataset.train_csv, newline="") as f:
        for path, label in csv.reader(f):
            taken[label] = taken.get(label, 0) + 1
            if taken[label] <= spec.student_train_per_class:
                writer.writerow((path, label))
    write_text(chosen.getvalue(), os.path.join(root, STUDENT_CSV))
    write_text(wanted, stamp)
    return root


TITLES = {"teacher": "training the teacher", "student": "training the student from scratch",
          "distill": "distilling the student from the teacher"}


def run_demo(spec: DemoSpec) -> list[DemoRow]:
    start = time.perf_counter()
    print(f"[1/5] generating videos under {spec.output}/data", flush=True)
    runs = run_configs(spec, _prepare_data(spec))
    # the three runs and their evaluations read the same files: each decoded once for the whole demo
    budget = runs.teacher.data.decoded_cache_mb << 20
    decoded = DecodedVideos.shared(budget) if budget else None
    trained: dict[str, tuple[TrainingSummary, int]] = {}  # run -> (its summary, its threads)
    partner = beside_whom(runs)  # the run the scratch student trains beside, one core each, or None
    scratch = None
    try:
        for number, run in enumerate(RUNS, start=2):
            cfg = runs.named(run)
            about = f"({cfg.model.kwargs}, {cfg.train.epochs} epochs)"
            if run == "student" and partner is not None:  # trained beside the teacher or the distillation
                continue
            shutil.rmtree(cfg.output, ignore_errors=True)  # every demo run starts fresh
            if run == partner:
                shutil.rmtree(runs.student.output, ignore_errors=True)
                log = os.path.join(runs.student.output, "console.log")
                print(f"[{number}/5] {TITLES[run]} {about}, on one core, and {TITLES['student']} beside it on the "
                      f"other (its output: {log})", flush=True)
                scratch = StudentBeside(runs.student, log)
                with dvfl_kernels.cpu_threads.pinned(1):
                    trained[run] = run_training(cfg, distill=run == "distill"), 1
            else:
                print(f"[{number}/5] {TITLES[run]} {about}", flush=True)
                trained[run] = run_training(cfg, distill=run == "distill"), torch.get_num_threads()
            if run == "teacher":  # the student learns from the teacher's final weights
                runs = dataclasses.replace(runs, distill=runs.distill.updated(teacher={"checkpoint": trained[run][0].last}))
            if run == partner:
                trained["student"] = scratch.join(), 1
                print(f"[3/5] the student from scratch finished beside {'the teacher' if run == 'teacher' else 'the distillation'}: "
                      f"{trained['student'][0].train_time_s:.0f} s of training", flush=True)
    finally:  # an error or Ctrl-C in the run beside it stops the student
        if scratch is not None:
            scratch.stop()
    print("[5/5] evaluating (1 clip x 1 crop, 4 clips x 3 crops)", flush=True)
    rows = []
    for run in RUNS:
        summary, threads = trained[run]
        # the demo evaluates the end of training (not a val-selected epoch)
        cfg = runs.named(run).updated(eval={"checkpoint": summary.last})
        results = run_evaluation(cfg)
        model = build_model(cfg.model, cfg.data, pretrained=False)
        rows.append(DemoRow(run, cfg.seed, threads, summary.train_time_s, count_parameters(model),
                            count_flops(model, cfg.data.num_frames, cfg.data.size) / 1e9,
                            **{metric: {view: report[metric] for view, report in results.items()} for metric in ("top1", "top5")}))
    del decoded
    print_table(rows)
    write_json([row.to_json() for row in rows], os.path.join(spec.output, "results.json"))
    picture = plot_results(rows, {run: trained[run][0].epochs for run in RUNS}, os.path.join(spec.output, "results.png"))
    print(f"learning curves and table: {picture}", flush=True)
    write_text(json.dumps(spec.settings(), indent=1, sort_keys=True), os.path.join(spec.output, SPEC_JSON))  # last: marks a finished demo
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {spec.output}/results.json", flush=True)
    return rows


def beside_whom(runs: DemoRuns) -> str | None:
    """The run ("teacher" or "distill") the scratch student trains beside, one thread each, or None.

    The scratch student needs nothing of the other two runs. Where a run's step is measured no faster
    on all usable cores than on one (dvfl_kernels.choose_training_threads: within THREADS_MUST_PAY),
    the second core would idle at its barriers: the student trains there instead. The teacher is
    asked first (the longest run), then the distillation. Never with one usable core, or when the
    user gave a thread count (then every run takes it, one after the other)."""
    if dvfl_kernels.usable_cores() < 2 or dvfl_kernels.cpu_threads.user_threads() is not None:
        return None
    if measure_threads(runs.teacher) == 1:
        return "teacher"
    if measure_threads(runs.distill.updated(teacher={"checkpoint": "not needed to measure"}), distill=True) == 1:
        return "distill"
    return None


class StudentBeside:
    """The scratch student's run in a process of its own (spawned: a fresh OpenMP runtime), one
    thread, its output in `log`; join() gives run_training's summary or raises naming the log."""

    def __init__(self, cfg: RunConfig, log: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.log, self.results = log, context.Queue()
        os.makedirs(os.path.dirname(log), exist_ok=True)
        self.process = context.Process(target=_train_beside, args=(cfg, log, self.results), daemon=True)
        try:
            with interrupt.children_start_blocked():  # Ctrl-C is the parent's: it stops this process
                self.process.start()
        except KeyboardInterrupt:  # held until the process had started
            self.stop()
            raise

    def join(self) -> TrainingSummary:
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


def _train_beside(cfg: RunConfig, log: str, results) -> None:
    """In the spawned process: one thread, output to `log`, the summary (or the error) to `results`."""
    import sys

    interrupt.ignore_in_child()
    with open(log, "w", buffering=1) as out:
        sys.stdout = sys.stderr = out
        try:
            with dvfl_kernels.cpu_threads.pinned(1):
                results.put(("ok", run_training(cfg)))
        except BaseException as err:  # reported by the parent, which names this log
            results.put(("error", f"{type(err).__name__}: {err}"))
            raise


def finished_rows(spec: DemoSpec) -> list[DemoRow] | None:
    """The rows of a demo already finished in spec.output with these settings, else None."""
    results, settings = (os.path.join(spec.output, name) for name in ("results.json", SPEC_JSON))
    if not (os.path.isfile(results) and os.path.isfile(settings)):
        return None
    with open(settings) as f:
        if json.load(f) != spec.settings():
            return None
    with open(results) as f:
        return [DemoRow.from_json(row) for row in json.load(f)]


def run_seeds(spec: DemoSpec, seeds: list[int]) -> SeedSummary:
    """The demo once per seed, each in <output>/seed-N (a seed finished earlier with the same settings
    is read back, not rerun), then the spread over seeds: the only figure a single demo's noise allows
    (README, "The demo"). Writes summary.json and summary.md in <output>."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, at least one, got {seeds}")
    per_seed = {}
    for seed in seeds:
        one = spec.with_seed(seed).in_folder(os.path.join(spec.output, f"seed-{seed}"))
        rows = finished_rows(one)
        if rows is None:
            rows = run_demo(one)
        else:
            print(f"seed {seed}: finished earlier with these settings, read from {one.output}/results.json", flush=True)
        per_seed[seed] = rows
    summary = SeedSummary.of(per_seed)
    write_json(summary.to_json(), os.path.join(spec.output, "summary.json"))
    write_text(summary.markdown(), os.path.join(spec.output, "summary.md"))
    print(summary.markdown(), flush=True)
    return summary


