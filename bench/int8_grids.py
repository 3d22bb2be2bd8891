"""Which int8 grids lose least where the CPU's int8 GEMM sums u8 x s8 products in saturating int16 pairs.

Without VNNI (AVX2's vpmaddubsw) two products of 255 x 127 overflow int16, so one of the two operands
gives up a bit: dvfl keeps 8-bit activations and takes weights on [-63, 63] (cpu_int8.weight_qmax);
FBGEMM's choice is the other one, activations on [0, 127] and weights on [-127, 127]. This scores the
demo's distilled students (as bench/int8_accuracy.py: calibrated on 64 training clips, every GEMM and
temporal tap in int8, the validation set at 1x1) with each grid simulated in float64 (the int8
arithmetic exactly, the GEMMs in float: no saturation to model), beside the CPU's real int8 path and
fp32. The simulation of dvfl's own grid on a CPU that has it should score as the real path does. Then
the real path with one part at a time kept in float: which part, if any, a student's loss comes from.

    python bench/int8_grids.py RUN [RUN ...] [--json bench/results/int8-grids.json]
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from int8_accuracy import CALIBRATION_CLIPS, int8_parts, load_student, relative_error, runs_argument_parser, score
from nano_interleaved import cpu_model

# (activation levels above 0, weight magnitude): the two AVX2-safe choices and VNNI's
GRIDS = {"u8 x s7 (dvfl on AVX2)": (255, 63), "u7 x s8 (FBGEMM's reduce_range)": (127, 127),
         "u8 x s8 (with VNNI)": (255, 127)}


class SimulatedGrid:
    """An int8 plan's GEMMs and temporal taps in float64 on another grid: the input range each was
    calibrated to, cut in `act_levels` steps, and weights per output channel on [-w_max, w_max]."""

    measured = False  # every GEMM the plan has, as the real plan is run here

    def __init__(self, plan, act_levels: int, w_max: int):
        self.plan, self.act_levels, self.w_max = plan, act_levels, w_max

    def _input(self, x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        low, high = -zero_point * scale, (255 - zero_point) * scale  # the calibrated range of the uint8 grid
        step = (high - low) / self.act_levels
        zero = round(-low / step)
        return (torch.clamp(torch.round(x.double() / step) + zero, 0, self.act_levels) - zero) * step

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        from dvfl_kernels import cpu_int8

        q, scale = cpu_int8.quantize_weight(w, self.w_max)
        return q.double() * scale.double()[:, None]

    def _gemm(self, gemm, weights, x2, activation, residual, dtype):
        weight = torch.cat([w.detach().reshape(w.shape[0], -1) for w in weights])
        out = self._input(x2, gemm.input_scale, gemm.input_zero_point) @ self._weight(weight).T
        if gemm.bias is not None:
            out = out + gemm.bias.double()
        if activation == "gelu":
            out = F.gelu(out)
        if residual is not None:
            out = out + residual.double()
        return out.to(dtype)

    def gemm(self, weights, x2, activation, residual, dtype):
        from dvfl_kernels import cpu_int8

        gemm = self.plan._gemms.get(cpu_int8.gemm_key(weights))
        return None if gemm is None else lambda: self._gemm(gemm, weights, x2, activation, residual, dtype)

    def mlp(self, fc1_weight, fc2_weight, x2, residual, dtype):
        from dvfl_kernels import cpu_int8

        fc1, fc2 = (self.plan._gemms.get(cpu_int8.gemm_key([w])) for w in (fc1_weight, fc2_weight))
        if fc1 is None or fc2 is None:
            return None
        return lambda: self._gemm(fc2, [fc2_weight], self._gemm(fc1, [fc1_weight], x2, "gelu", None, torch.float64),
                                  "none", residual, dtype)

    def temporal(self, z_t, g_t, weights, num_frames, normalize):
        from dvfl_kernels import cpu_int8, reference

        taps = self.plan._taps.get(cpu_int8.gemm_key(weights))
        if taps is None:
            return None

        def run() -> torch.Tensor:
            ctx = z_t.double().unflatten(0, (-1, num_frames))
            gates = g_t.double().unflatten(0, (-1, num_frames))
            acc = torch.zeros_like(ctx)
            for level, weight in enumerate(weights):
                c_out, c_in, k = weight.shape
                w = self._weight(cpu_int8.stacked_taps(weight)).reshape(k, c_out, c_in).permute(1, 2, 0)
                ctx_q = self._input(ctx, taps.input_scales[level], taps.input_zero_points[level])
                ctx = F.gelu(reference.dense_temporal_conv(ctx_q, w))
                acc = acc + ctx * gates[..., level: level + 1]
            acc = acc + F.gelu(ctx.mean(1, keepdim=True)) * gates[..., len(weights): len(weights) + 1]
            if normalize:
                acc = acc / (len(weights) + 1)
            return acc.flatten(0, 1).to(z_t.dtype)

        return run


def run_one(run: str) -> dict:
    from dvfl_kernels import cpu_int8
    from dvflnet.models import Int8Model, calibrate
    from dvflnet.models.int8 import select_parts

    model, _, calibration, dataset = load_student(run)
    ranges = calibrate(model, calibration)
    int8 = Int8Model(model, select_parts(ranges, int8_parts()), measured=False)
    fp32_top1, reference = score(model, dataset)
    real_top1, real_logits = score(int8, dataset)
    row = {"run": run, "fp32": fp32_top1, "cpu int8": real_top1, "cpu int8 error": relative_error(real_logits, reference),
           "grids": {}}
    for name, (act_levels, w_max) in GRIDS.items():
        simulated = SimulatedGrid(int8.plan, act_levels, w_max)

        def forward(views, simulated=simulated):
            with torch.no_grad(), cpu_int8.running(simulated):
                return int8.model(views)

        top1, logits = score(forward, dataset)
        row["grids"][name] = {"top1": top1, "error": relative_error(logits, reference)}
    row["one part in float"] = {}
    for kept in int8_parts():  # this CPU's real path with every part but `kept` in int8
        others = Int8Model(model, select_parts(ranges, [p for p in int8_parts() if p != kept]), measured=False)
        top1, logits = score(others, dataset)
        row["one part in float"][kept] = {"top1": top1, "error": relative_error(logits, reference)}
    return row


def main() -> None:
    args = runs_argument_parser(__doc__).parse_args()
    from dvfl_kernels import cpu_int8

    rows = [run_one(run) for run in args.runs]
    print(f"{cpu_model()}; this CPU's weight grid: [-{cpu_int8.weight_qmax()}, {cpu_int8.weight_qmax()}]")
    for row in rows:
        print(f"{row['run']}: fp32 {row['fp32']:.2f}, this CPU's int8 {row['cpu int8']:.2f} "
              f"(error {row['cpu int8 error']:.4f})")
        for name, cell in row["grids"].items():
            print(f"   {name:<34} top-1 {cell['top1']:.2f}  error {cell['error']:.4f}")
        print("   one part in float, the rest int8: " + ", ".join(
            f"{part} {cell['top1'] - row['fp32']:+.2f} ({cell['error']:.4f})" for part, cell in row["one part in float"].items()))
    for name in GRIDS:
        deltas = [row["grids"][name]["top1"] - row["fp32"] for row in rows]
        errors = [row["grids"][name]["error"] for row in rows]
        print(f"{name:<34} top-1 - fp32: {', '.join(f'{d:+.2f}' for d in deltas)}; "
              f"mean error {statistics.mean(errors):.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "weight_qmax": cpu_int8.weight_qmax(), "torch": torch.__version__,
                       "calibration_clips": CALIBRATION_CLIPS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
