"""GFLOP/s of every GEMM shape of VFL-Net nano (one clip, 8 frames at 224x224) on each CPU path the
model could take: ATen's F.linear (MKL here), oneDNN with a packed weight
(torch.ops.mkldnn._linear_pointwise), MKL with a packed weight (torch.ops.mkl._mkl_linear), in fp32,
and ATen / packed oneDNN in bf16. Medians of 15 calls each, inference mode.

    python bench/gemm_shapes.py [--json bench/results/gemm-shapes-cpu.json]

--training: the three GEMMs of each linear in a training step of 2 clips, fp32, ATen (MKL) against
oneDNN as a training step could call it, every conversion it needs timed with it: the forward
(y = x W^T + b; the weight changes every step, so it is reordered in each call), the input gradient
(dx = dy W: the weight transposed, then oneDNN's linear) and the weight gradient (dW = dy^T x:
ATen's ``mkldnn_linear_backward_weights``, which takes oneDNN-layout tensors, so both inputs are
converted in the call). What decides whether a training-time GEMM engine pays on a CPU.

    python bench/gemm_shapes.py --training [--json bench/results/gemm-training-shapes-cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nano_interleaved import cpu_model

STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]  # (H = W, C) of each stage, 8 frames


def shapes() -> list[tuple[str, int, int, int]]:
    rows = []
    for stage, (hw, c) in enumerate(STAGES, start=1):
        m = 8 * hw * hw
        for name, k, n in (("f", c, 2 * c + 3), ("f_temporal", c, c + 3), ("h/proj", c, c), ("fc1", c, 4 * c), ("fc2", 4 * c, c)):
            rows.append((f"s{stage}-{name}", m, k, n))
    return rows


def median_s(fn, reps: int = 15) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_rows() -> list[dict]:
    rows = []
    print(f"{'shape':<14}{'M x K x N':>18} | forward aten onednn | dx aten onednn | dW aten onednn   (GFLOP/s, fp32)")
    for name, m, k, n in shapes():
        m *= 2  # 2 clips a step
        x, w, b, dy = torch.randn(m, k), torch.randn(n, k) * 0.1, torch.randn(n), torch.randn(m, n)
        gflop = 2 * m * k * n / 1e9
        g = {
            "forward_aten": gflop / median_s(lambda: F.linear(x, w, b), 7),
            "forward_onednn": gflop / median_s(lambda: torch.ops.mkldnn._linear_pointwise(
                x, torch.ops.mkldnn._reorder_linear_weight(w, m), b, "none", [], ""), 7),
            "dx_aten": gflop / median_s(lambda: dy.mm(w), 7),
            "dx_onednn": gflop / median_s(lambda: torch.ops.mkldnn._linear_pointwise(dy, w.t().contiguous(), None, "none", [], ""), 7),
            "dw_aten": gflop / median_s(lambda: dy.t().mm(x), 7),
            "dw_onednn": gflop / median_s(lambda: torch.ops.aten.mkldnn_linear_backward_weights(dy.to_mkldnn(), x.to_mkldnn(), w, True), 7),
        }
        print(f"{name:<14}{m:>7} x{k:>5} x{n:>5} | {g['forward_aten']:12.0f} {g['forward_onednn']:6.0f} | "
              f"{g['dx_aten']:7.0f} {g['dx_onednn']:6.0f} | {g['dw_aten']:7.0f} {g['dw_onednn']:6.0f}")
        rows.append({"shape": name, "m": m, "k": k, "n": n, "gflops": g})
    return rows


def inference_rows() -> list[dict]:
    rows = []
    print(f"{'shape':<14}{'M x K x N':>18} | fp32 aten  onednn  mkl | bf16 aten  onednn   (GFLOP/s)")
    with torch.inference_mode():
        for name, m, k, n in shapes():
            x, w, b = torch.randn(m, k), torch.randn(n, k) * 0.1, torch.randn(n)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
            mkl_packed = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
            xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
            packed_b = torch.ops.mkldnn._reorder_linear_weight(wb, m)
            gflop = 2 * m * k * n / 1e9
            row = {"shape": name, "m": m, "k": k, "n": n, "gflops": {
                "fp32_aten": gflop / median_s(lambda: F.linear(x, w, b)),
                "fp32_onednn_packed": gflop / median_s(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")),
                "fp32_mkl_packed": gflop / median_s(lambda: torch.ops.mkl._mkl_linear(x, mkl_packed, w, b, m)),
                "bf16_aten": gflop / median_s(lambda: F.linear(xb, wb, bb)),
                "bf16_onednn_packed": gflop / median_s(lambda: torch.ops.mkldnn._linear_pointwise(xb, packed_b, bb, "none", [], "")),
            }}
            g = row["gflops"]
            print(f"{name:<14}{m:>7} x{k:>5} x{n:>5} | {g['fp32_aten']:9.0f} {g['fp32_onednn_packed']:7.0f} "
                  f"{g['fp32_mkl_packed']:5.0f} | {g['bf16_aten']:9.0f} {g['bf16_onednn_packed']:7.0f}")
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--training", action="store_true", help="the training step's three GEMMs per linear, fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = training_rows() if args.training else inference_rows()
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
