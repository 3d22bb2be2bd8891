"""The peers a CPU user would deploy instead: VFL-Net nano exported to ONNX by `dvflnet.tools.export`
(reference decomposition of the dvfl ops), run by ONNX Runtime (fp32) and OpenVINO (fp32, and bf16
through its precision hint), one clip 1 x 8 x 3 x 224 x 224. Run together with
test_bench_model_cpu.py so the ratios come from one session:

    pytest bench/test_bench_model_cpu.py bench/test_bench_deploy_cpu.py --benchmark-only

Skips cleanly without the `export` extra (onnx, onnxscript, onnxruntime, openvino). Each case records
the max relative error of its logits against PyTorch fp32 in extra_info.
"""
import numpy as np
import pytest
import torch

from dvflnet.models import create_model

RUNTIMES = [("onnxruntime", "fp32"), ("openvino", "f32"), ("openvino", "bf16")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("the CPU deployment peers (run_gpu.sh times the GPU cases)")
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    from dvflnet.tools.export import export_onnx

    torch.manual_seed(0)
    model = create_model("vfl_net_nano", num_classes=400, backend="reference").eval()
    path = str(tmp_path_factory.mktemp("deploy") / "nano.onnx")
    export_onnx(model, path, frames=8, size=224)
    clip = torch.randn(1, 8, 3, 224, 224)
    with torch.inference_mode():
        expected = model(clip).numpy()
    return path, clip.numpy(), expected


@pytest.mark.parametrize("runtime, precision", RUNTIMES, ids=[f"{r}-{p}" for r, p in RUNTIMES])
def test_nano_exported(benchmark, exported, runtime, precision):
    path, clip, expected = exported
    if runtime == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: clip}

        def run():
            return session.run(None, feed)[0]
    else:
        openvino = pytest.importorskip("openvino")
        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        request = compiled.create_infer_request()

        def run():
            return request.infer({0: clip})[0]

    logits = np.asarray(run())
    run()
    benchmark.extra_info.update(model="vfl_net_nano", runtime=runtime, precision=precision, clip="1x8x3x224x224",
                                threads=torch.get_num_threads(),
                                max_rel_err=float(np.abs(logits - expected).max() / np.abs(expected).max()))
    benchmark.pedantic(run, rounds=7, iterations=1)
