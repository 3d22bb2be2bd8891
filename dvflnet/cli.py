"""The ``dvflnet`` command line."""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys

from . import interrupt
from .data import synthetic
from .data.synthetic import generate_dataset
from .data.video import VideoReadError
from .engine.run_state import RunLockedError
from .engine.training import TrainingDiverged
from .tools.export import MissingExtraError
from .models import MODEL_CONFIGS, CheckpointError


def _torch_version() -> str:
    import torch

    return torch.__version__


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def cmd_flops(args: argparse.Namespace) -> int:
    from .complexity import measure
    from .engine.config import parse_device

    parse_device(args.device)  # a device this machine lacks is a one-line error, before any model is built
    stride = 32  # patch 4 x 2^3 merges, every variant
    if args.size % stride:
        raise ValueError(f"--size: expected a multiple of {stride}, got {args.size}")

    names = list(MODEL_CONFIGS) if args.model == "all" else [args.model]
    rows = []
    for name in names:
        result = measure(
            name,
            num_classes=args.classes,
            frames=args.frames,
            size=args.size,
            memory=args.memory,
            memory_batch=args.batch,
            device=args.device,
        )
        rows.append(result)
        if args.json:
            print(json.dumps(result.as_dict()), flush=True)
        else:
            if len(rows) == 1:
                print(f"{'model':<22}{'params':>14}{'GFLOPs':>10}{'peak fwd':>12}{'peak fwd+bwd':>14}")
            print(
                f"{name:<22}{result.params:>14,}{result.gflops:>10.1f}"
                f"{_fmt_bytes(result.peak_forward_bytes):>12}{_fmt_bytes(result.peak_train_bytes):>14}",
                flush=True,
            )
    if not args.json:
        print(
            f"({args.classes} classes, one clip of {args.frames}x3x{args.size}x{args.size}; fvcore FLOPs count one "
            f"multiply-add as one{'; memory for ' + str(args.batch) + ' clip(s) on ' + args.device if args.memory else ''})"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .tools.bench import time_inference

    print(time_inference(args.model, args.backend, args.dtype, args.frames, args.size, args.classes, args.rounds,
                         args.warmup, args.threads))
    return 0


def _load_run_config(args: argparse.Namespace) -> dict:
    from .engine.config import load_config

    cfg = load_config(args.config, args.opts)
    if args.output:
        cfg["output"] = args.output
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import run_training

    cfg = _load_run_config(args)
    args.on_interrupt = (f"the checkpoints and log.jsonl written so far are in {cfg['output']}; the same command resumes "
                         "from the newest checkpoint (resume: auto)")
    summary = run_training(cfg, distill=args.command == "distill")
    if summary.get("best_top1") is not None:
        print(f"best top-1 {summary['best_top1']:.2f}% ({summary['best']}); last checkpoint {summary['last']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine import run_evaluation

    cfg = _load_run_config(args)
    if args.checkpoint:
        cfg["eval"]["checkpoint"] = args.checkpoint
    from .tools.plots import plot_confusion, worst_classes

    args.on_interrupt = f"the eval_*.json reports finished before it are in {cfg['output']}"
    for views, report in run_evaluation(cfg).items():
        picture = plot_confusion(report, os.path.join(cfg["output"], f"eval_{views}_confusion.png"))
        print(f"{views} views: top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  ({report['num_videos']} videos)")
        print("  worst classes (top-1):")
        for line in worst_classes(report, args.worst):
            print(f"    {line}")
        print(f"  every class and the confusion matrix: {cfg['output']}/eval_{views}.json; picture: {picture}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .tools.plots import plot_runs

    print(f"wrote {plot_runs(args.runs, args.output)}: loss, learning rate and validation top-1 of {len(args.runs)} run(s)")
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from .engine.teacher_cache import build_teacher_cache

    cfg = _load_run_config(args)
    if args.cache:
        cfg["kd"]["teacher_cache"] = args.cache
    args.on_interrupt = (f"the finished chunks are kept in {cfg['kd']['teacher_cache']}; the same command builds only "
                         "the missing ones")
    summary = build_teacher_cache(cfg)
    print(f"teacher cache {cfg['kd']['teacher_cache']}: {summary['written']} chunk(s) written, {summary['kept']} already "
          f"there, {summary['time_s']:.0f} s; distil from it with --opts kd.teacher_cache {cfg['kd']['teacher_cache']}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .experiments.grid import ALPHAS, TEMPERATURES, merge_grids, run_grid
    from .engine.config import ConfigError, load_config

    if (args.config is None) == (args.merge is None):
        raise ConfigError("ablate: give either --config (run a grid) or --merge (join finished grids), not both")
    if args.merge is not None:
        if not args.output:
            raise ConfigError("--merge: --output is required (the folder of the merged grid)")
        ignored = [flag for flag in ("alphas", "temperatures", "seeds", "opts") if getattr(args, flag)]
        if ignored:
            raise ConfigError(f"--merge joins finished grids as they are: --{', --'.join(ignored)} would be ignored; drop them")
        output = args.output
        merge_grids(args.merge, output)
    else:
        cfg = load_config(args.config, args.opts)
        output = args.output or os.path.join(cfg["output"], "grid")
        args.on_interrupt = (f"finished cells (result.json) and the teacher caches are in {output}; the same command "
                             "reuses them and resumes the interrupted cell from its checkpoints")
        run_grid(cfg, output, args.alphas or ALPHAS, args.temperatures or TEMPERATURES, args.seeds)
    print(f"grid: {os.path.join(output, 'grid.md')}, grid.csv and grid.png next to it")
    return 0


def cmd_generate_data(args: argparse.Namespace) -> int:
    # only the knobs given on the command line; the others keep generate_dataset's defaults
    knobs = {name: getattr(args, name) for name in ("classes", "fps", "camera_jitter", "clutter", "motion", "opacity", "direction_spread")
             if getattr(args, name) is not None}
    try:
        dataset = generate_dataset(args.root, args.train_per_class, args.val_per_class, args.frames, args.size,
                                   seed=args.seed, overwrite=args.overwrite, **knobs)
    except ValueError as err:  # the library names its parameters; the user typed flags
        name, sep, rest = str(err).partition(":")
        flag = {"num_frames": "frames", "direction_spread": "direction-spread", "camera_jitter": "camera-jitter",
                "train_per_class": "train-per-class", "val_per_class": "val-per-class"}.get(name, name)
        raise ValueError(f"--{flag}:{rest}" if sep and " " not in name else str(err)) from None
    print(f"wrote {len(dataset.classes)} classes x ({args.train_per_class} train + {args.val_per_class} val) videos: "
          f"{dataset.train_csv}, {dataset.val_csv}, {dataset.labels_csv}")
    return 0


def _views(text: str) -> tuple[int, int]:
    clips, sep, crops = text.partition("x")
    if not sep or not clips.isdigit() or not crops.isdigit() or int(clips) < 1 or int(crops) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected CLIPSxCROPS with CROPS 1 or 3, e.g. 1x1 or 4x3, got {text!r}")
    return int(clips), int(crops)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


def _at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _checkpoint_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint as the trainer writes it, or a raw state dict")
    parser.add_argument("--config", help="a run YAML (default: the config saved in the checkpoint)")
    parser.add_argument("--model", help="the variant, for a raw state dict (e.g. vfl_net_nano)")
    parser.add_argument("--num-classes", type=_positive(int), help="class count (default: the checkpoint's head)")
    parser.add_argument("--classes", help="labels CSV (<id>,<name> lines) naming the classes")


def cmd_predict(args: argparse.Namespace) -> int:
    from .tools.predict import Predictor, expand_inputs, format_table

    predictor = Predictor.from_checkpoint(args.checkpoint, args.config, args.model, args.num_classes, args.classes,
                                          views=args.views, device=args.device or "default", precision=args.precision)
    if args.stride_seconds and not args.window_seconds:
        raise ValueError("--stride-seconds: needs --window-seconds")
    if not args.json:
        print(f"{predictor.model.num_classes} classes; {predictor.device}, {predictor.precision} "
              f"({predictor.precision_reason}); {args.views[0]}x{args.views[1]} views", file=sys.stderr)
    paths = expand_inputs(args.videos, args.root)
    results: list[dict] = []
    try:
        predictor.predict_many(paths, top=args.top, window_seconds=args.window_seconds,
                               stride_seconds=args.stride_seconds, into=results)
    except KeyboardInterrupt:  # what was scored is printed, then the one-line interrupt message
        print(json.dumps(results, allow_nan=False) if args.json else format_table(results, args.top))
        args.on_interrupt = f"the {len(results)} of {len(paths)} videos scored before it are printed above"
        raise
    print(json.dumps(results, allow_nan=False) if args.json else format_table(results, args.top))
    return 0 if all("error" not in r for r in results) else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    from .tools.quantize import quantize_checkpoint

    report = quantize_checkpoint(args.checkpoint, args.calib, args.output, args.root, args.clips, args.config,
                                 args.float_parts)
    print(f"wrote {report['output']}: {report['gemms']} GEMMs and {report['temporal_taps']} temporal contexts in int8, "
          f"calibrated on {report['clips']} clips of {args.calib} in {report['seconds']:.1f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .tools.export import export_onnx, export_pt2
    from .tools.predict import model_from_checkpoint

    from .models import Int8Model
    from .tools.export_int8 import export_onnx_int8

    model, data, _ = model_from_checkpoint(args.checkpoint, args.config, args.model, args.num_classes, args.classes)
    frames, size = args.frames or data["num_frames"], args.size or data["size"]
    if isinstance(model, Int8Model) and args.format != "onnx":
        raise ValueError(f"--format {args.format}: an int8 checkpoint exports as onnx (QuantizeLinear / "
                         "DequantizeLinear pairs) only")
    export = export_onnx_int8 if isinstance(model, Int8Model) else export_onnx if args.format == "onnx" else export_pt2
    report = export(model, args.output, frames, size)
    extra = f" and {report['decomposed_path']} (decomposed)" if "decomposed_path" in report else ""
    checker = {"onnx": "ONNX Runtime vs PyTorch", "onnx-int8": "ONNX Runtime vs the in-process int8 model",
               "pt2": "the reloaded program vs PyTorch"}[report["format"]]
    int8 = f"; {report['quantized_matmuls']} MatMuls with int8 QDQ pairs" if "quantized_matmuls" in report else ""
    print(f"wrote {report['path']}{extra}: clips (B, {frames}, 3, {size}, {size}), dynamic batch{int8}; {checker} "
          f"on a {report['checked_batch']}-clip batch: max relative error {report['max_rel_err']:.2e}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .tools.predict import Predictor
    from .tools.visualize import visualize

    predictor = Predictor.from_checkpoint(args.checkpoint, args.config, args.model, args.num_classes, args.classes,
                                          device=args.device, precision="fp32")
    result = visualize(predictor, args.video, args.output, args.layers)
    print(f"{args.video}: {result['name']} ({result['prob'] * 100:.1f}%); wrote {result['png']} and {result['gif']} "
          f"({result['frames']} frames x {len(result['layers'])} layers)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import DEMO_CONFIG, load_demo_config, run_demo, run_seeds, set_seed

    opts = list(args.opts) + (["output", args.output] if args.output else [])
    spec = load_demo_config(args.config or DEMO_CONFIG, opts)
    if args.seed is not None:
        set_seed(spec, args.seed)
    args.on_interrupt = (f"finished runs are in {spec['output']}; the same command reuses finished seeds (--seeds) and "
                         "starts an unfinished demo afresh")
    if args.threads is not None:  # the user's count: every run takes it (dvfl_kernels/cpu_threads.py)
        os.environ["DVFL_THREADS"] = str(args.threads)
    if args.seeds:
        run_seeds(spec, args.seeds)
    else:
        run_demo(spec)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .tools.prepare import prepare, summary

    prepared, paths = prepare(args.dataset, args.videos, args.output, args.annotations, args.split, args.fold,
                              args.missing, args.overwrite)
    print(summary(prepared, paths, args.videos))
    return 0


def cmd_check_split(args: argparse.Namespace) -> int:
    from .tools.check_split import check_split, format_report

    report = check_split(args.train_csv, args.val_csv, args.num_classes, args.same_name)
    print(format_report(report, args.num_classes is not None))
    return 1 if report.leaks else 0


def cmd_resize(args: argparse.Namespace) -> int:
    import time

    from .tools.resize import resize_tree

    start = time.monotonic()
    args.on_interrupt = f"the videos finished so far are in {args.dst}; the same command resumes (finished files are not redone)"
    report = resize_tree(args.src, args.dst, args.short_side, args.workers, progress=not args.no_progress)
    for source, why in report.failed:
        print(f"{source}: {why}", file=sys.stderr)
    print(f"resize: {report.done} resized"
          + (f" ({report.redone} made again: another short side in DST, or unreadable)" if report.redone else "")
          + f", {report.already} already done, {len(report.failed)} failed"
          + (f", {report.cleaned} unfinished files of an earlier run removed" if report.cleaned else "")
          + f" in {time.monotonic() - start:.0f} s; short side {args.short_side} under {args.dst}")
    return 1 if report.failed else 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (when it has one worth showing); epilogs keep
    their line breaks (the examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, []) and not isinstance(action, argparse._HelpAction)
        if shown and "default" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


# One example per command, shown under its --help.
EXAMPLES = {
    "flops": "dvflnet flops vfl_net_nano --frames 8 --size 224 --memory",
    "bench": "dvflnet bench vfl_net_nano --backend reference auto --dtype fp32 bf16-autocast",
    "train": "dvflnet train --config configs/ucf101/base.yaml --opts train.epochs 30",
    "distill": "dvflnet distill --config configs/ucf101/nano_kd.yaml --output runs/nano",
    "evaluate": "dvflnet evaluate --config runs/nano/config.json --checkpoint runs/nano/best.pt",
    "plot": "dvflnet plot runs/teacher runs/nano -o curves.png",
    "cache-teacher": "dvflnet cache-teacher --config configs/ucf101/nano_kd.yaml --cache runs/teacher-cache",
    "ablate": "dvflnet ablate --config configs/ucf101/nano_kd.yaml --seeds 0 1 2",
    "generate-data": "dvflnet generate-data data/synthetic --train-per-class 40 --val-per-class 10",
    "predict": "dvflnet predict --checkpoint runs/nano/best.pt clip.mp4 --views 4x3 --top 3",
    "quantize": "dvflnet quantize --checkpoint runs/nano/best.pt --calib data/ucf101/train.csv --clips 64 -o nano-int8.pt",
    "export": "dvflnet export --checkpoint runs/nano/best.pt --format onnx -o nano.onnx",
    "visualize": "dvflnet visualize --checkpoint runs/nano/best.pt clip.mp4 -o maps",
    "demo": "dvflnet demo --seeds 80 81 82",
    "prepare": "dvflnet prepare ucf101 --videos UCF-101 --annotations ucfTrainTestlist --split 1 --output data/ucf101",
    "check-split": "dvflnet check-split data/ucf101/train.csv data/ucf101/val.csv",
    "resize": "dvflnet resize UCF-101 UCF-101-256 --short-side 256",
}


def _command(sub, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand: its one-line summary (in `dvflnet --help`), a description and an example."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                          epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dvflnet", description="DVFL-Net / Video-FocalNet models and tools",
                                     epilog="dvflnet COMMAND --help describes each command, with an example.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dvflnet {__version__} (torch {_torch_version()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flops = _command(sub, "flops", "parameters, fvcore GFLOPs and peak memory of the model variants",
                     "Parameters, fvcore GFLOPs and, with --memory, the peak memory of a forward (inference, no "
                     "gradients kept) and of a training step. A forward's peak can exceed the training step's: "
                     "inference runs the fused CPU paths, whose prepared weights (concatenated, cast, packed) live "
                     "beside the parameters, while a training step computes from the parameters themselves.")
    flops.add_argument("model", nargs="?", default="all", help="a variant name (see dvflnet.models.list_models) or 'all'")
    flops.add_argument("--frames", type=_positive(int), default=8, help="frames per clip")
    flops.add_argument("--size", type=_positive(int), default=224, help="frame height and width, a multiple of 32")
    flops.add_argument("--classes", type=_positive(int), default=101, help="classes of the head (UCF101's 101)")
    flops.add_argument("--memory", action="store_true", help="also measure peak memory of a forward and a training step")
    flops.add_argument("--batch", type=_positive(int), default=1, help="clips per step for --memory")
    flops.add_argument("--device", default="cpu", help="where --memory measures: cpu, cuda or cuda:N")
    flops.add_argument("--json", action="store_true", help="one JSON object per model")
    flops.set_defaults(func=cmd_flops)

    bench = _command(sub, "bench", "time one clip's inference on this CPU per backend and precision")
    bench.add_argument("model", nargs="?", default="vfl_net_nano", help="a variant name (dvflnet.models.list_models)")
    bench.add_argument("--backend", nargs="+", default=["reference", "cpu"], choices=["reference", "cpu", "auto"],
                       help="backends to time, each in turn")
    bench.add_argument("--dtype", nargs="+", default=["fp32", "bf16-autocast", "bf16-weights"],
                       choices=["fp32", "bf16-autocast", "bf16-weights"],
                       help="precisions: fp32, bf16 under autocast, or the weights cast to bf16")
    bench.add_argument("--frames", type=_positive(int), default=8, help="frames per clip")
    bench.add_argument("--size", type=_positive(int), default=224, help="frame height and width, a multiple of 32")
    bench.add_argument("--classes", type=_positive(int), default=400, help="classes of the head (Kinetics-400's 400)")
    bench.add_argument("--rounds", type=_positive(int), default=7, help="timed calls per case (the median is shown)")
    bench.add_argument("--warmup", type=_at_least_zero, default=2, help="untimed calls per case first")
    bench.add_argument("--threads", type=_at_least_zero, default=0, help="torch threads (0: torch's default)")
    bench.set_defaults(func=cmd_bench)

    for name, help_text in (("train", "train a model (a teacher, or a student from scratch)"),
                            ("distill", "distil a student from a frozen, trained teacher"),
                            ("evaluate", "evaluate a checkpoint: 1x1 and 4x3 views, per-class accuracy, confusion")):
        run = _command(sub, name, help_text, f"{help_text[0].upper() + help_text[1:]}. Launch with torchrun for several processes.")
        run.add_argument("--config", required=True, help="a YAML file (see configs/)")
        run.add_argument("--output", help="run folder (overrides the config's output)")
        run.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides, e.g. train.epochs 30 data.num_workers 8")
        if name == "evaluate":
            run.add_argument("--checkpoint", help="weights to evaluate (default: <output>/best.pt)")
            run.add_argument("--worst", type=_positive(int), default=10, help="classes listed, lowest top-1 first")
            run.set_defaults(func=cmd_evaluate)
        else:
            run.set_defaults(func=cmd_train)

    plot = _command(sub, "plot", "training loss, learning rate and validation top-1 of runs, in one PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holds the log.jsonl train / distill write)")
    plot.add_argument("-o", "--output", default="runs.png", help="the PNG to write")
    plot.set_defaults(func=cmd_plot)

    cache = _command(sub, "cache-teacher", "run a distillation config's teacher once over every clip the student "
                     "will see (augmented, mixed) and store its logits: offline distillation")
    cache.add_argument("--config", required=True, help="the distillation YAML the student will be trained with")
    cache.add_argument("--cache", help="cache folder (overrides kd.teacher_cache)")
    cache.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides, as for distill")
    cache.set_defaults(func=cmd_cache_teacher, output=None)

    ablate = _command(sub, "ablate", "the alpha x temperature grid of distillation runs from one teacher cache per seed")
    ablate.add_argument("--config", help="the distillation YAML (a run's saved config.json works too)")
    ablate.add_argument("--merge", nargs="+", metavar="GRID", help="instead of running: join these finished grids (their grid.csv) into --output")
    ablate.add_argument("--output", help="grid folder (default: <config output>/grid)")
    ablate.add_argument("--alphas", nargs="+", type=float, help="KD weights (default: 0.3 0.5 0.7)")
    ablate.add_argument("--temperatures", nargs="+", type=_positive(float), help="KD temperatures (default: 5 10 15)")
    ablate.add_argument("--seeds", nargs="+", type=_at_least_zero, help="one grid per seed (default: the config's seed)")
    ablate.add_argument("--opts", nargs="+", metavar="KEY VALUE", help="overrides, as for distill")
    ablate.set_defaults(func=cmd_ablate)

    gen = _command(sub, "generate-data", "write the synthetic temporal-reasoning video dataset (mp4 + CSVs)")
    gen.add_argument("root", help="folder for videos/ and train.csv, val.csv, labels.csv")
    # plain ints: generate_dataset checks every value once (as for a library call), its errors name these flags
    gen.add_argument("--train-per-class", type=int, default=40, help="training videos per class")
    gen.add_argument("--val-per-class", type=int, default=10, help="validation videos per class")
    gen.add_argument("--frames", type=int, default=16, help="frames per video, at least 2")
    gen.add_argument("--size", type=int, default=64, help="frame height and width in pixels, a multiple of 16")
    gen.add_argument("--seed", type=_at_least_zero, default=0, help="the same seed writes the same files")
    default = {name: p.default for name, p in inspect.signature(synthetic.generate_dataset).parameters.items()}
    gen.add_argument("--classes", nargs="+", choices=synthetic.CLASSES, metavar="CLASS", help=f"a subset of {', '.join(synthetic.CLASSES)} (default: all)")
    gen.add_argument("--fps", type=int, help=f"frame rate written in the mp4s (default: {default['fps']})")
    gen.add_argument("--camera-jitter", type=float, help=f"per-frame step of the drifting camera, pixels at size 64 (default: {default['camera_jitter']})")
    gen.add_argument("--clutter", type=float, help=f"background texture amplitude in [0, 1] (default: {default['clutter']})")
    gen.add_argument("--motion", type=float, help=f"scale of each class's change over the clip, > 0 (default: {default['motion']})")
    gen.add_argument("--opacity", nargs=2, type=float, metavar=("LOW", "HIGH"),
                     help=f"range of the shape's mid-clip opacity, 1 1 for opaque (default: {' '.join(map(str, default['opacity']))})")
    gen.add_argument("--direction-spread", type=float, help=f"degrees a move class may travel off its axis, in [0, 45] (default: {default['direction_spread']})")
    gen.add_argument("--overwrite", action="store_true", help="replace train.csv / val.csv / labels.csv already in ROOT")
    gen.set_defaults(func=cmd_generate_data)

    predict = _command(sub, "predict", "top-5 classes of videos (files, folders, CSVs) from a checkpoint")
    _checkpoint_model_args(predict)
    predict.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders of videos, or CSVs listing them")
    predict.add_argument("--root", help="folder the paths in a CSV are relative to (default: the CSV's folder)")
    predict.add_argument("--views", type=_views, default=(1, 1), help="clips x crops, averaged (default 1x1; e.g. 4x3)")
    predict.add_argument("--window-seconds", type=_positive_seconds, help="also score windows of this length: a timeline")
    predict.add_argument("--stride-seconds", type=_positive_seconds, help="window step (default: the window length)")
    predict.add_argument("--top", type=_positive(int), default=5, help="classes shown per video")
    predict.add_argument("--device", default=None,
                         help="cpu, cuda or cuda:N (default: cuda where there is one, except for an int8 checkpoint)")
    predict.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                         help="auto (default): on a GPU bf16 where it has it; on a CPU the faster of bf16 and fp32 for "
                              "this model and clip shape, measured once per machine")
    predict.add_argument("--json", action="store_true", help="one JSON list: per video path and top5, or path and error")
    predict.set_defaults(func=cmd_predict)

    quantize = _command(sub, "quantize", "an int8 checkpoint for CPU inference, calibrated on clips of a CSV",
                        "Post-training static int8 quantization: the model's GEMMs in int8 (weights per output "
                        "channel, activations per tensor from the calibration clips' ranges), the rest in float. "
                        "predict, evaluate's Python API and export take the checkpoint it writes.")
    quantize.add_argument("--checkpoint", required=True, help="a float checkpoint as the trainer writes it")
    quantize.add_argument("--config", help="a run YAML (default: the config saved in the checkpoint)")
    quantize.add_argument("--calib", required=True, help="CSV of calibration videos (<path> <label> lines, e.g. the train CSV)")
    quantize.add_argument("--root", help="folder the CSV's paths are relative to (default: the run's data.root)")
    quantize.add_argument("--clips", type=_positive(int), default=64,
                          help="calibration videos, spread evenly over the CSV (centre clip and crop)")
    quantize.add_argument("--float-parts", nargs="*", default=[], metavar="PART",
                          help="parts kept in float, of: f h h_temporal proj fc1 fc2 temporal_taps (none: all in int8)")
    quantize.add_argument("-o", "--output", required=True, help="int8 checkpoint to write")
    quantize.set_defaults(func=cmd_quantize)

    export = _command(sub, "export", "export a checkpoint's model: ONNX (checked with ONNX Runtime) or torch.export")
    _checkpoint_model_args(export)
    export.add_argument("--format", choices=["onnx", "pt2"], required=True,
                        help="onnx (opset 18, dynamic batch, checked with ONNX Runtime) or pt2 (torch.export)")
    export.add_argument("-o", "--output", required=True, help="file to write (pt2 also writes <stem>.decomposed.pt2)")
    export.add_argument("--frames", type=_positive(int), help="frames per clip (default: the config's)")
    export.add_argument("--size", type=_positive(int), help="frame size (default: the config's)")
    export.set_defaults(func=cmd_export)

    vis = _command(sub, "visualize", "spatial and temporal modulator maps over a video's frames (PNG grid, GIF)")
    _checkpoint_model_args(vis)
    vis.add_argument("video", help="a video file")
    vis.add_argument("-o", "--output", default="visualize", help="folder for the PNG and the GIF")
    vis.add_argument("--layers", nargs="+", help="modulation module names (default: the last block of each stage)")
    vis.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    vis.set_defaults(func=cmd_visualize)

    demo = _command(sub, "demo", "generate videos, train a teacher and a student, distil, evaluate, print a table")
    demo.add_argument("--config", help="demo YAML (default: the packaged configs/demo.yaml)")
    demo.add_argument("--output", help="demo folder (default: runs/demo)")
    seeds = demo.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_at_least_zero, help="one seed for everything: the generated data and every run")
    seeds.add_argument("--seeds", nargs="+", type=_at_least_zero, metavar="N",
                       help="the demo once per seed (in <output>/seed-N; a seed finished with the same settings is reused), "
                            "then mean and spread over seeds in <output>/summary.md and summary.json")
    demo.add_argument("--threads", type=_positive(int), help="intra-op CPU threads of every run (default: with 2 usable "
                      "cores or more, the teacher and the scratch student side by side on one core each, then the "
                      "distillation on the count measured fastest)")
    demo.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides, e.g. base.train.epochs 20")
    demo.set_defaults(func=cmd_demo)

    prep = _command(sub, "prepare", "train/val/labels CSVs of a paper dataset from its official annotation files")
    prep.add_argument("dataset", choices=["ucf101", "hmdb51", "ucf50", "ssv2", "k400"], help="which dataset's official files")
    prep.add_argument("--videos", required=True, help="the dataset's video folder (data.root; CSV paths are relative to it)")
    prep.add_argument("--annotations", help="the official annotation folder (ucfTrainTestlist/, testTrainMulti_7030_splits/, "
                      "SSv2 labels/, Kinetics' CSVs); UCF50 has none")
    prep.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 official split, 1-3 (default 1)")
    prep.add_argument("--fold", type=int, default=1, help="UCF50 leave-one-group-out fold: group gNN held out, 1-25 (default 1)")
    prep.add_argument("--output", required=True, help="folder for train.csv, val.csv, labels.csv")
    prep.add_argument("--missing", choices=["error", "skip"], default="error",
                      help="a listed video not on disk: an error (default), or left out and counted")
    prep.add_argument("--overwrite", action="store_true", help="replace CSVs already in --output")
    prep.set_defaults(func=cmd_prepare)

    check = _command(sub, "check-split", "exit 1 when a validation list shares files, file names or UCF groups "
                     "with the training list, lists a video twice, or has labels out of range")
    check.add_argument("train_csv", help="the training list: <path>,<label> or <path> <label> lines")
    check.add_argument("val_csv", help="the validation list, in either format")
    check.add_argument("--num-classes", type=_positive(int), help="K: labels must lie in 0..K-1 (default: the number of distinct labels)")
    check.add_argument("--same-name", choices=["auto", "leak", "ignore"], default="auto",
                       help="a file name in both lists (in other folders): auto (default) counts it as the same video "
                            "unless the train list itself reuses names across folders (names numbered per class); "
                            "leak: always; ignore: never (the names say nothing)")
    check.set_defaults(func=cmd_check_split)

    resize = _command(sub, "resize", "rescale a video tree: every frame, same frame rate, shorter side N (PyAV)")
    resize.add_argument("src", help="the video tree to read")
    resize.add_argument("dst", help="where the resized tree goes (outside SRC; created)")
    resize.add_argument("--short-side", type=int, required=True, help="pixels of the shorter side (even), e.g. 256 or 320")
    resize.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="files in parallel (default: the cores)")
    resize.add_argument("--no-progress", action="store_true", help="no progress bar")
    resize.set_defaults(func=cmd_resize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt.install()
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, what was kept and how to go on; no traceback
        kept = getattr(args, "on_interrupt", None) or "nothing was kept"
        print(f"\ndvflnet {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130
    except (ValueError, OSError, CheckpointError, VideoReadError, RunLockedError, TrainingDiverged,
            MissingExtraError) as err:  # RunLogError (plot) is a ValueError too  # ConfigError, AnnotationError, PrepareError, SplitFileError ... are ValueErrors
        print(f"dvflnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
