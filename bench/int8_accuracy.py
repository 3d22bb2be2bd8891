"""Int8 accuracy of trained students: dvfl's quantize_int8 against fp32 and against OpenVINO + NNCF.

For each demo run folder (``dvflnet demo --seeds ...`` writes <out>/seed-N/): its distilled student
(distill/best.pt) is calibrated on CALIBRATION_CLIPS of its training clips (students.csv, centre clip
and crop, spread over the CSV: ``dvflnet quantize``'s choice) and scored on its validation set (1x1
views) in fp32, dvfl int8, and OpenVINO int8 (NNCF post-training quantization of the ONNX export, on
the same clips; a demo student trains on 40, so 40 of the 64 asked for). dvfl int8 keeps
DEFAULT_FLOAT_PARTS in float and runs every other GEMM in int8 (not measured per shape, so the figures
do not depend on this machine's timings). Then each part's contribution to the
error: only that part in int8, the rest fp32, the mean over the validation clips of
max|logits - fp32| / max|fp32 logits|.

    python bench/int8_accuracy.py RUN [RUN ...] [--json bench/results/int8-accuracy.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nano_interleaved import cpu_model

# The setting: the demo's student quantized with 64 of its training clips.
CALIBRATION_CLIPS = 64
def score(forward, dataset) -> tuple[float, list[torch.Tensor]]:
    hits, logits = 0, []
    with torch.inference_mode():
        for i in range(len(dataset)):
            views, label = dataset[i]
            out = forward(views)
            logits.append(out)
            hits += int(out.mean(0).argmax() == label)
    return 100.0 * hits / len(dataset), logits


def relative_error(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return statistics.mean(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(logits, reference))


def nncf_int8(model, data: dict, calibration: list[torch.Tensor]):
    """OpenVINO's int8 model of `model` (NNCF defaults on the same calibration clips), or None."""
    try:
        import nncf
        import openvino
    except ImportError:
        return None
    from dvflnet.tools.export import export_onnx

    path = str(Path(tempfile.mkdtemp()) / "student.onnx")
    export_onnx(model, path, frames=data["num_frames"], size=data["size"])
    core = openvino.Core()
    start = time.perf_counter()
    quantized = nncf.quantize(core.read_model(path), nncf.Dataset([c.numpy() for c in calibration]),
                              subset_size=len(calibration))
    seconds = time.perf_counter() - start
    # f32 for the parts NNCF left unquantized: on CPUs with AVX512-BF16 OpenVINO's default is bf16
    request = core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return (lambda views: torch.from_numpy(request.infer({0: views.numpy()})[0].copy())), seconds


def load_student(run: str) -> tuple:
    """A demo run's distilled student, its data settings, CALIBRATION_CLIPS of its training clips as
    ``dvflnet quantize`` picks them, and its validation set at 1x1."""
    from dvflnet.engine.builders import eval_dataset
    from dvflnet.engine.schema import RunConfig
    from dvflnet.tools.predict import model_from_checkpoint
    from dvflnet.tools.quantize import calibration_batches

    model, data, _ = model_from_checkpoint(os.path.join(run, "distill", "best.pt"))
    batches = calibration_batches(os.path.join(data["root"], "students.csv"), data["root"], data, CALIBRATION_CLIPS)
    return model, data, [b.load() for b in batches], eval_dataset(RunConfig.from_dict({"data": data}), 1, 1)


def int8_parts() -> list[str]:
    """The parts an int8 model runs in int8 unless told otherwise."""
    from dvflnet.models.int8 import DEFAULT_FLOAT_PARTS, PARTS

    return [p for p in PARTS if p not in DEFAULT_FLOAT_PARTS]


def runs_argument_parser(doc: str) -> argparse.ArgumentParser:
    """The scripts' command line: demo run folders and --json."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="demo run folders (each with distill/best.pt and data/)")
    parser.add_argument("--json", help="write the rows and the machine here")
    return parser


def run_one(run: str) -> dict:
    from dvflnet.models import Int8Model, calibrate
    from dvflnet.models.int8 import PARTS, select_parts

    model, data, calibration, dataset = load_student(run)
    start = time.perf_counter()
    ranges = calibrate(model, calibration)
    # measured=False: every GEMM in int8, whatever this machine's timings (the accuracy of the worst case)
    int8 = Int8Model(model, select_parts(ranges, int8_parts()), measured=False)
    seconds = time.perf_counter() - start
    fp32_top1, reference = score(model, dataset)
    int8_top1, logits = score(int8, dataset)
    row = {"run": run, "fp32": fp32_top1, "dvfl int8": int8_top1, "dvfl error": relative_error(logits, reference),
           "dvfl quantize s": seconds, "parts": {}}
    for part in PARTS:
        _, part_logits = score(Int8Model(model, select_parts(ranges, [part]), measured=False), dataset)
        row["parts"][part] = relative_error(part_logits, reference)
    peer = nncf_int8(model, data, calibration)
    if peer is not None:
        forward, nncf_seconds = peer
        row["nncf int8"], nncf_logits = score(forward, dataset)
        row["nncf error"] = relative_error(nncf_logits, reference)
        row["nncf quantize s"] = nncf_seconds
    return row


def main() -> None:
    args = runs_argument_parser(__doc__).parse_args()
    rows = [run_one(run) for run in args.runs]
    for row in rows:
        peer = f"  nncf {row['nncf int8']:.2f} (error {row['nncf error']:.3f})" if "nncf int8" in row else ""
        print(f"{row['run']}: fp32 {row['fp32']:.2f}  dvfl int8 {row['dvfl int8']:.2f} (error {row['dvfl error']:.3f}, "
              f"{row['dvfl quantize s']:.1f} s){peer}")
        print("   parts: " + ", ".join(f"{part} {err:.3f}" for part, err in row["parts"].items()))
    if args.json:
        report = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                  "calibration_clips": CALIBRATION_CLIPS, "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
