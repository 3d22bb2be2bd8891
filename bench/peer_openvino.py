"""The peer a CPU user would deploy instead: VFL-Net nano exported to ONNX (reference decomposition of
the dvfl ops), run by ONNX Runtime (fp32) and OpenVINO (fp32 and bf16), one clip 1x8x3x224x224.

    python bench/peer_openvino.py [--json OUT.json]

Needs onnx, onnxscript, onnxruntime and openvino (`pip install onnx onnxscript onnxruntime openvino`;
none pulls a torch). Prints median ms per clip; run it next to `pytest bench/test_bench_model_cpu.py`
and compare ratios, not absolute times, on a shared machine.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dvflnet.models import create_model


def median_ms(run, rounds: int = 7) -> float:
    run()
    run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    import onnxruntime
    import openvino

    torch.manual_seed(0)
    model = create_model("vfl_net_nano", num_classes=400, backend="reference").eval()
    clip = torch.randn(1, 8, 3, 224, 224)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nano.onnx"
        torch.onnx.export(model, (clip,), str(path), dynamo=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        feed = {name: clip.numpy()}
        results["onnxruntime_fp32_ms"] = median_ms(lambda: session.run(None, feed))
        core = openvino.Core()
        for precision in ("f32", "bf16"):
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
            request = compiled.create_infer_request()
            results[f"openvino_{precision}_ms"] = median_ms(lambda: request.infer({0: clip.numpy()}))
            logits = np.asarray(request.infer({0: clip.numpy()})[0])
            with torch.inference_mode():
                expected = model(clip).numpy()
            results[f"openvino_{precision}_max_rel_err"] = float(np.abs(logits - expected).max() / np.abs(expected).max())
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
