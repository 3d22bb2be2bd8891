"""Every GEMM shape of VFL-Net nano (one clip, 8 frames at 224x224) on each implementation the CPU
linear engine (dvfl_kernels.cpu_linear) chooses between, with the epilogue it runs there: ATen's
F.linear (then GELU / the residual add) and oneDNN with the weight packed once and the epilogue fused;
float32 and bfloat16. GFLOP/s in extra_info; `engine_choice` is what the engine's probe picked on
this machine for that shape (the same probe a model call runs).

    pytest bench/test_bench_gemm_cpu.py --benchmark-only --benchmark-json bench/results/gemm-cpu.json
"""
import pytest
import torch

import dvfl_kernels
from dvfl_kernels import cpu_linear
from gemm_shapes import STAGES

# (name, K, the N of each output, epilogue) of each GEMM of a block at C channels (2 focal levels);
# f and f_temporal run as one GEMM
GEMMS = [("f+f_temporal", lambda c: c, lambda c: [2 * c + 3, c + 3], "none"),
         ("h/h_temporal", lambda c: c, lambda c: [c], "none"),
         ("proj+residual", lambda c: c, lambda c: [c], "residual"),
         ("fc1+gelu", lambda c: c, lambda c: [4 * c], "gelu"),
         ("fc2+residual", lambda c: 4 * c, lambda c: [c], "residual")]


def _case(stage: int, gemm: str, dtype: torch.dtype):
    hw, c = STAGES[stage - 1]
    _, k_of, ns_of, epilogue = next(g for g in GEMMS if g[0] == gemm)
    rows, k, ns = 8 * hw * hw, k_of(c), ns_of(c)
    torch.manual_seed(0)
    x = torch.randn(rows, k, dtype=dtype)
    layers = [(torch.randn(n, k, dtype=dtype) / k**0.5, torch.randn(n, dtype=dtype)) for n in ns]
    residual = torch.randn(rows, ns[0], dtype=dtype) if epilogue == "residual" else None
    if len(layers) > 1:
        return rows, k, sum(ns), lambda: dvfl_kernels.linears(x, layers)
    (w, b), = layers
    activation = "gelu" if epilogue == "gelu" else "none"
    return rows, k, ns[0], lambda: dvfl_kernels.linear(x, w, b, activation=activation, residual=residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", cpu_linear.IMPLEMENTATIONS)
@pytest.mark.parametrize("gemm", [g[0] for g in GEMMS])
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_gemm(benchmark, device, monkeypatch, stage, gemm, impl, dtype):
    if device != "cpu":
        pytest.skip("the CPU GEMM cases")
    rows, k, n, run = _case(stage, gemm, dtype)
    with torch.inference_mode():
        dvfl_kernels.RUNTIME.verdicts.clear()
        run()  # the engine's own probe on this shape
        choice = next(iter(dvfl_kernels.RUNTIME.verdicts.values()))
        monkeypatch.setenv("DVFL_CPU_GEMM", impl)
        run()
        benchmark.pedantic(run, rounds=9, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(m=rows, k=k, n=n, impl=impl, dtype=str(dtype), engine_choice=choice,
                                threads=torch.get_num_threads())
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = 2 * rows * k * n / benchmark.stats.stats.median / 1e9
