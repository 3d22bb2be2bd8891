"""What each ``dvflnet`` subcommand does (cli.py builds the parser and maps each to one of these)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .data.synthetic import generate_dataset
from .models import MODEL_CONFIGS

def torch_version() -> str:
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
    if summary.best_top1 is not None:
        print(f"best top-1 {summary.best_top1:.2f}% ({summary.best}); last checkpoint {summary.last}")
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
    print(f"teacher cache {cfg['kd']['teacher_cache']}: {summary.written} chunk(s) written, {summary.kept} already "
          f"there, {summary.time_s:.0f} s; distil from it with --opts kd.teacher_cache {cfg['kd']['teacher_cache']}")
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
    from .experiments.demo import DEMO_CONFIG, load_demo_config, run_demo, run_seeds

    opts = list(args.opts) + (["output", args.output] if args.output else [])
    spec = load_demo_config(args.config or DEMO_CONFIG, opts)
    if args.seed is not None:
        spec = spec.with_seed(args.seed)
    args.on_interrupt = (f"finished runs are in {spec.output}; the same command reuses finished seeds (--seeds) and "
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
