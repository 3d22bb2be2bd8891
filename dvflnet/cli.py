"""The ``dvflnet`` command line."""
from __future__ import annotations

import argparse
import json
import sys

from .models import MODEL_CONFIGS


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def cmd_flops(args: argparse.Namespace) -> int:
    from .complexity import measure

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvflnet", description="DVFL-Net / Video-FocalNet models and tools")
    sub = parser.add_subparsers(dest="command", required=True)

    flops = sub.add_parser("flops", help="parameters, fvcore GFLOPs and peak memory of the model variants")
    flops.add_argument("model", nargs="?", default="all", help="a variant name (see dvflnet.models.list_models) or 'all'")
    flops.add_argument("--frames", type=int, default=8)
    flops.add_argument("--size", type=int, default=224)
    flops.add_argument("--classes", type=int, default=101)
    flops.add_argument("--memory", action="store_true", help="also measure peak memory of a forward and a training step")
    flops.add_argument("--batch", type=int, default=1, help="clips per step for --memory")
    flops.add_argument("--device", default="cpu")
    flops.add_argument("--json", action="store_true", help="one JSON object per model")
    flops.set_defaults(func=cmd_flops)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"dvflnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
