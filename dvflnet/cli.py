"""The ``dvflnet`` command line."""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys

from . import commands, interrupt
from .data import synthetic
from .data.video import VideoReadError
from .engine.run_state import RunLockedError
from .engine.training import TrainingDiverged
from .tools.export import MissingExtraError
from .tools.prepare import READERS
from .models import CheckpointError


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
    parser.add_argument("--version", action="version", version=f"dvflnet {__version__} (torch {commands.torch_version()})")
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
    flops.set_defaults(func=commands.cmd_flops)

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
    bench.set_defaults(func=commands.cmd_bench)

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
            run.set_defaults(func=commands.cmd_evaluate)
        else:
            run.set_defaults(func=commands.cmd_train)

    plot = _command(sub, "plot", "training loss, learning rate and validation top-1 of runs, in one PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holds the log.jsonl train / distill write)")
    plot.add_argument("-o", "--output", default="runs.png", help="the PNG to write")
    plot.set_defaults(func=commands.cmd_plot)

    cache = _command(sub, "cache-teacher", "run a distillation config's teacher once over every clip the student "
                     "will see (augmented, mixed) and store its logits: offline distillation")
    cache.add_argument("--config", required=True, help="the distillation YAML the student will be trained with")
    cache.add_argument("--cache", help="cache folder (overrides kd.teacher_cache)")
    cache.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides, as for distill")
    cache.set_defaults(func=commands.cmd_cache_teacher, output=None)

    ablate = _command(sub, "ablate", "the alpha x temperature grid of distillation runs from one teacher cache per seed")
    ablate.add_argument("--config", help="the distillation YAML (a run's saved config.json works too)")
    ablate.add_argument("--merge", nargs="+", metavar="GRID", help="instead of running: join these finished grids (their grid.csv) into --output")
    ablate.add_argument("--output", help="grid folder (default: <config output>/grid)")
    ablate.add_argument("--alphas", nargs="+", type=float, help="KD weights (default: 0.3 0.5 0.7)")
    ablate.add_argument("--temperatures", nargs="+", type=_positive(float), help="KD temperatures (default: 5 10 15)")
    ablate.add_argument("--seeds", nargs="+", type=_at_least_zero, help="one grid per seed (default: the config's seed)")
    ablate.add_argument("--opts", nargs="+", metavar="KEY VALUE", help="overrides, as for distill")
    ablate.set_defaults(func=commands.cmd_ablate)

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
    gen.set_defaults(func=commands.cmd_generate_data)

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
    predict.set_defaults(func=commands.cmd_predict)

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
    quantize.set_defaults(func=commands.cmd_quantize)

    export = _command(sub, "export", "export a checkpoint's model: ONNX (checked with ONNX Runtime) or torch.export")
    _checkpoint_model_args(export)
    export.add_argument("--format", choices=["onnx", "pt2"], required=True,
                        help="onnx (opset 18, dynamic batch, checked with ONNX Runtime) or pt2 (torch.export)")
    export.add_argument("-o", "--output", required=True, help="file to write (pt2 also writes <stem>.decomposed.pt2)")
    export.add_argument("--frames", type=_positive(int), help="frames per clip (default: the config's)")
    export.add_argument("--size", type=_positive(int), help="frame size (default: the config's)")
    export.set_defaults(func=commands.cmd_export)

    vis = _command(sub, "visualize", "spatial and temporal modulator maps over a video's frames (PNG grid, GIF)")
    _checkpoint_model_args(vis)
    vis.add_argument("video", help="a video file")
    vis.add_argument("-o", "--output", default="visualize", help="folder for the PNG and the GIF")
    vis.add_argument("--layers", nargs="+", help="modulation module names (default: the last block of each stage)")
    vis.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    vis.set_defaults(func=commands.cmd_visualize)

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
    demo.set_defaults(func=commands.cmd_demo)

    prep = _command(sub, "prepare", "train/val/labels CSVs of a paper dataset from its official annotation files")
    prep.add_argument("dataset", choices=list(READERS), help="which dataset's official files")
    prep.add_argument("--videos", required=True, help="the dataset's video folder (data.root; CSV paths are relative to it)")
    prep.add_argument("--annotations", help="the official annotation folder (ucfTrainTestlist/, testTrainMulti_7030_splits/, "
                      "SSv2 labels/, Kinetics' CSVs); UCF50 has none")
    prep.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 official split, 1-3 (default 1)")
    prep.add_argument("--fold", type=int, default=1, help="UCF50 leave-one-group-out fold: group gNN held out, 1-25 (default 1)")
    prep.add_argument("--output", required=True, help="folder for train.csv, val.csv, labels.csv")
    prep.add_argument("--missing", choices=["error", "skip"], default="error",
                      help="a listed video not on disk: an error (default), or left out and counted")
    prep.add_argument("--overwrite", action="store_true", help="replace CSVs already in --output")
    prep.set_defaults(func=commands.cmd_prepare)

    check = _command(sub, "check-split", "exit 1 when a validation list shares files, file names or UCF groups "
                     "with the training list, lists a video twice, or has labels out of range")
    check.add_argument("train_csv", help="the training list: <path>,<label> or <path> <label> lines")
    check.add_argument("val_csv", help="the validation list, in either format")
    check.add_argument("--num-classes", type=_positive(int), help="K: labels must lie in 0..K-1 (default: the number of distinct labels)")
    check.add_argument("--same-name", choices=["auto", "leak", "ignore"], default="auto",
                       help="a file name in both lists (in other folders): auto (default) counts it as the same video "
                            "unless the train list itself reuses names across folders (names numbered per class); "
                            "leak: always; ignore: never (the names say nothing)")
    check.set_defaults(func=commands.cmd_check_split)

    resize = _command(sub, "resize", "rescale a video tree: every frame, same frame rate, shorter side N (PyAV)")
    resize.add_argument("src", help="the video tree to read")
    resize.add_argument("dst", help="where the resized tree goes (outside SRC; created)")
    resize.add_argument("--short-side", type=int, required=True, help="pixels of the shorter side (even), e.g. 256 or 320")
    resize.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="files in parallel (default: the cores)")
    resize.add_argument("--no-progress", action="store_true", help="no progress bar")
    resize.set_defaults(func=commands.cmd_resize)
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
