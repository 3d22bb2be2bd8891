"""VFL-Net nano inference on this CPU against its deployment peer, cases interleaved.

One clip 1 x 8 x 3 x 224 x 224 under torch.inference_mode(): dvfl on backend "reference" and "auto",
fp32 and bf16 autocast, and int8 (``quantize_int8``); ONNX Runtime (fp32, as exported) and OpenVINO
(f32 and bf16, its precision hint) on the ONNX export of the reference decomposition, and OpenVINO
int8 made from that export by NNCF's post-training quantization (when nncf is installed). Both int8
paths calibrate on the same 8 clips. Each round times every case once, in turn, with a pause between
cases (PAUSE_S), so that the machine's drift hits all cases alike; medians and ranges over the rounds.
pytest-benchmark times cases in blocks, which on a shared 2-core machine moved the ratios by up to 1.5x
between runs.

    python bench/nano_interleaved.py [--rounds 9] [--compile] [--busy] [--json bench/results/nano-interleaved-cpu.json]

--busy times every case beside one busy process (`python -c "while True: pass"`, started after the
warm-up): dvfl and its peers sharing the machine, in one run.

--training times a training step instead (2 clips, cross-entropy, backward, SGD with momentum), fp32
and bf16 autocast, on backend "reference" and "auto":

    python bench/nano_interleaved.py --training --rounds 5 --json bench/results/nano-training-interleaved-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Clips both int8 paths calibrate on (the NNCF figure used 8).
CALIBRATION_CLIPS = 8
# Between two cases: the last case's runtime (OpenMP's, ONNX Runtime's, OpenVINO's pool) spins its
# threads for a while after a call, which would take the next case's cores.
PAUSE_S = 0.5


def cpu_model() -> str:
    """The CPU as a figure must name it: model name, family / model numbers and the instruction sets
    that decide the fast paths (a VM may report one generic name for CPUs with and without AMX)."""
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        name, _, value = line.partition(":")
        info.setdefault(name.strip(), value.strip())
    if "model name" not in info:
        return platform.processor() or "unknown"
    flags = set(info.get("flags", "").split())
    sets = [s for s in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if s in flags]
    return (f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}; "
            f"{', '.join(sets) or 'no AVX-512'}{'' if 'amx_bf16' in flags else ', no AMX'})")


def cases(clip: torch.Tensor, compiled: bool = False, peers: bool = True) -> dict:
    from dvflnet.tools.export import export_onnx
    from dvflnet.models import create_model, quantize_int8

    torch.manual_seed(0)
    reference = create_model("vfl_net_nano", num_classes=400, backend="reference").eval()
    auto = create_model("vfl_net_nano", num_classes=400, backend="auto").eval()
    auto.load_state_dict(reference.state_dict())

    def dvfl(model, bf16: bool):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(clip)
        return run

    out = {"reference fp32": dvfl(reference, False), "auto fp32": dvfl(auto, False),
           "reference bf16": dvfl(reference, True), "auto bf16": dvfl(auto, True)}
    calibration = calibration_clips(clip)
    out["auto int8"] = dvfl(quantize_int8(auto, calibration), False)
    if compiled:  # inductor (the engine steps aside under torch.compile: inductor packs its own weights)
        out["auto compiled fp32"] = dvfl(torch.compile(auto), False)
        out["auto compiled bf16"] = dvfl(torch.compile(auto), True)
    if not peers:
        return out
    try:
        import onnxruntime
        import openvino
    except ImportError:
        return out
    path = str(Path(tempfile.mkdtemp()) / "nano.onnx")
    export_onnx(reference, path, frames=8, size=224)
    feed = clip.numpy()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out["onnxruntime fp32"] = lambda: session.run(None, {name: feed})
    core = openvino.Core()
    for precision in ("f32", "bf16"):
        request = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
        out[f"openvino {precision}"] = (lambda r: lambda: r.infer({0: feed}))(request)
    try:
        import nncf
    except ImportError:
        return out
    # NNCF's post-training quantization of the same export, on the same calibration clips (its defaults:
    # the "performance" preset, min-max ranges)
    quantized = nncf.quantize(core.read_model(path), nncf.Dataset([c.numpy() for c in calibration]),
                              subset_size=len(calibration))
    # its default precision for the unquantized parts (bf16 on CPUs with AVX512-BF16) and f32; the best counts
    for case, config in (("openvino int8", {}), ("openvino int8 f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        request = core.compile_model(quantized, "CPU", config).create_infer_request()
        out[case] = (lambda r: lambda: r.infer({0: feed}))(request)
    return out


def calibration_clips(clip: torch.Tensor, count: int = CALIBRATION_CLIPS) -> list[torch.Tensor]:
    """`count` random clips shaped like `clip`, one per batch (dvfl's and NNCF's calibration set)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(clip.shape, generator=generator) for _ in range(count)]


def training_cases(clips: torch.Tensor) -> dict:
    from dvflnet.models import create_model

    labels = torch.arange(clips.shape[0])

    def step_of(backend: str, bf16: bool):
        torch.manual_seed(0)
        model = create_model("vfl_net_nano", num_classes=400, backend=backend, drop_path_rate=0.0).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(clips).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    return {f"{backend} {'bf16' if bf16 else 'fp32'} step": step_of(backend, bf16)
            for bf16 in (False, True) for backend in ("reference", "auto")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="write the medians, ranges and machine facts here")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: freed memory kept mapped, as every dvfl process does from its first CPU forward; "
                             "default: glibc's own (DVFL_KEEP_FREED_MEMORY=0)")
    parser.add_argument("--training", action="store_true", help="time a training step of 2 clips instead")
    parser.add_argument("--compile", action="store_true", help="add auto under torch.compile (inference)")
    parser.add_argument("--busy", action="store_true", help="time every case beside one busy process")
    parser.add_argument("--only", metavar="WORD", help="time only the cases whose name holds WORD (e.g. 'auto': "
                        "its spread without the other runtimes' threads on the cores)")
    args = parser.parse_args()
    if args.malloc == "default":
        os.environ["DVFL_KEEP_FREED_MEMORY"] = "0"  # before the first forward applies the process settings
    clip = torch.randn(2 if args.training else 1, 8, 3, 224, 224)
    # the ONNX export and the peers' compilation only when a peer case is wanted
    peers = args.only is None or any(args.only in name for name in ("onnxruntime fp32", "openvino f32", "openvino bf16",
                                                                    "openvino int8", "openvino int8 f32"))
    timed = training_cases(clip) if args.training else cases(clip, args.compile, peers)
    timed = {name: run for name, run in timed.items() if args.only is None or args.only in name}
    if not timed:
        parser.error(f"--only {args.only!r}: no case name holds it")
    for run in timed.values():  # warm-up: first-call allocations, oneDNN primitive creation
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in timed}
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        for _ in range(args.rounds):
            for name, run in timed.items():
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    rows = {name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for name, v in times.items()}
    for name, row in rows.items():
        print(f"{name:<20} {row['median_ms']:8.1f} ms  ({row['min_ms']:.1f}-{row['max_ms']:.1f})")
    if args.json:
        report = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "malloc": args.malloc,
                  "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "busy_neighbour": args.busy, "clip": "x".join(map(str, clip.shape)), "cases": rows}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
