"""How long making the nano's int8 model takes: ``quantize_int8`` on CALIBRATION_CLIPS random clips
(8 x 3 x 224 x 224, in batches of BATCH), i.e. the calibration forward passes, the weights quantized
and packed, and the per-shape measurement of int8 against float (issue 40's goal: under 60 s). Once
per round, a fresh float model each time; the median and range.

    python bench/int8_calibration_time.py [--rounds 3] [--json bench/results/int8-calibration-time-cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nano_interleaved import cpu_model

# The setting: "a few hundred clips of calibration at most"; the demo's students use 64.
CALIBRATION_CLIPS = 64
BATCH = 4


def main() -> None:
    from dvflnet.models import create_model, quantize_int8

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(BATCH, 8, 3, 224, 224, generator=generator) for _ in range(CALIBRATION_CLIPS // BATCH)]
    seconds = []
    for _ in range(args.rounds):
        torch.manual_seed(0)
        model = create_model("vfl_net_nano", num_classes=400).eval()
        start = time.perf_counter()
        quantize_int8(model, batches)
        seconds.append(time.perf_counter() - start)
        print(f"quantize_int8 on {CALIBRATION_CLIPS} clips: {seconds[-1]:.1f} s", flush=True)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "calibration_clips": CALIBRATION_CLIPS, "batch": BATCH, "seconds": seconds,
              "median_s": statistics.median(seconds), "range_s": [min(seconds), max(seconds)]}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
