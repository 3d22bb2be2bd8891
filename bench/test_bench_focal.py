"""Focal modulation: eager reference vs torch.compile(reference) vs the Triton kernels (GPU) vs the
C++ CPU kernels (CPU).

Op level: the four stages of a batch of 8 clips x 8 frames at 224x224 (N = 64; stage 1 56x56 with
C = 96 (nano) / 128 (base), stage 2 28x28 x 2C, stage 3 14x14 x 4C, stage 4 7x7 x 8C; 2 focal
levels, kernels 3 and 5), forward and forward+backward, fp32 and bf16. On CPU the Triton kernels
only run interpreted (not timed) and the batch is one clip (N = 8), so the CPU run stays short.

Each case records the bytes the op must move (below) and the achieved bandwidth (bytes / median);
the temporal op also records its multiply-adds. Bytes, per N*H*W positions, e = element size:
  forward:           read z (C), g (L+1); write A (C)                  -> (2C + L + 1) e
  forward+backward:  forward + read dA (C), z (C), g (L+1); write dz (C), dg (L+1)
                                                                        -> (5C + 3(L + 1)) e
(what is saved between the passes comes on top: the kernels keep L fp32 pre-activations.)
Model level (GPU only): one VFL-Net nano training step at batch 8 and one Video-FocalNet-Base
forward at batch 8, each backend, eager and compiled.

Goals (reported, not asserted): spatial_context fwd+bwd at stage 1 >= 4x eager and >= 1.5x
compiled and > 60% of the measured device bandwidth; the nano training step >= 1.3x eager with
peak memory <= 0.7x eager.
"""
import pytest
import torch

import dvfl_kernels
from dvfl_kernels import reference
from dvflnet.models import create_model
from memory import peak_bytes, synchronized

LEVELS = 2
STAGES = {1: 56, 2: 28, 3: 14, 4: 7}
CASES = [(stage, width) for width in (96, 128) for stage in STAGES]
_compiled = {}


def _function(op: str, impl: str, device: str):
    if impl in ("triton", "cuda"):
        if device != "cuda":
            pytest.skip(f"the {impl} kernels are timed on a GPU only")
        if impl not in dvfl_kernels.available_backends(op):
            pytest.skip(f"{impl}: not built here")
        backend = impl
    elif impl == "cpu":
        if device != "cpu":
            pytest.skip("the C++ CPU kernels are timed on CPU tensors")
        backend = "cpu"
    else:
        backend = "reference"
    fn = {
        "spatial_context": lambda z, g, w: dvfl_kernels.spatial_context(z, g, w, backend=backend),
        "temporal_context": lambda z, g, w: dvfl_kernels.temporal_context(z, g, w, 8, backend=backend),
        "modulate": lambda q, s, t: dvfl_kernels.modulate(q, s, t, backend=backend),
    }[op]
    if impl == "compiled":
        fn = _compiled.setdefault(op, torch.compile({
            "spatial_context": reference.spatial_context,
            "temporal_context": lambda z, g, w: reference.temporal_context(z, g, w, 8),
            "modulate": reference.modulate,
        }[op]))
    return fn


def _inputs(op: str, n: int, size: int, channels: int, dtype, device: str, grad: bool):
    if op == "modulate":
        full = torch.randn(n, size, size, 3 * channels, device=device, dtype=dtype)
        return [full[..., i * channels : (i + 1) * channels].detach().requires_grad_(grad) for i in range(3)]
    proj = torch.randn(n, size, size, 2 * channels + LEVELS + 1, device=device, dtype=dtype)
    z = proj[..., :channels].detach().requires_grad_(grad)  # a slice of the projection, as in the model
    g = proj[..., channels : channels + LEVELS + 1].detach().requires_grad_(grad)
    if op == "spatial_context":
        weights = [torch.randn(channels, 1, k, k, device=device) * 0.1 for k in (3, 5)]
    else:
        weights = [torch.randn(channels, channels, k, device=device) * channels**-0.5 for k in (3, 5)]
    return [z, g, [w.requires_grad_(grad) for w in weights]]


def _bytes(op: str, positions: int, channels: int, element: int, backward: bool) -> int:
    if op == "modulate":
        return positions * channels * element * (4 + (6 if backward else 0))
    forward = 2 * channels + LEVELS + 1
    return positions * element * (forward + (3 * channels + 2 * (LEVELS + 1) if backward else 0))


@pytest.mark.parametrize("impl", ["eager", "compiled", "triton", "cuda", "cpu"])
@pytest.mark.parametrize("op", ["spatial_context", "temporal_context", "modulate"])
@pytest.mark.parametrize("stage,width", CASES, ids=[f"stage{s}-C{w * 2 ** (s - 1)}" for s, w in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_focal_op(benchmark, device, op, impl, stage, width, dtype, mode):
    if device != "cuda" and (width == 128 or (dtype == torch.bfloat16 and impl == "compiled")):
        pytest.skip("CPU runs time the nano widths, bf16 eager and cpu only (compiling each case takes minutes)")
    fn = _function(op, impl, device)
    n = 64 if device == "cuda" else 8
    size, channels = STAGES[stage], width * 2 ** (stage - 1)
    backward = mode == "fwd+bwd"
    args = _inputs(op, n, size, channels, dtype, device, backward)
    upstream = torch.randn(n, size, size, channels, device=device, dtype=dtype)

    def step():
        out = fn(*args)
        if backward:
            out.backward(upstream)
        return out

    step()  # warm-up, compilation, autotuning
    moved = _bytes(op, n * size * size, channels, torch.finfo(dtype).bits // 8, backward)
    benchmark.extra_info.update(
        op=op, impl=impl, mode=mode, stage=stage, n=n, h=size, w=size, c=channels, levels=LEVELS,
        dtype=str(dtype).removeprefix("torch."), device=device, bytes_moved=moved, peak_bytes=peak_bytes(step, device),
    )
    if op == "temporal_context":
        benchmark.extra_info["multiply_adds"] = n * size * size * channels * channels * (3 + 5) * (3 if backward else 1)
    benchmark(synchronized(step, device))
    benchmark.extra_info["achieved_GBps"] = moved / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("layout", ["slice", "dense"])
@pytest.mark.parametrize("stage", list(STAGES), ids=[f"stage{s}-C{96 * 2 ** (s - 1)}" for s in STAGES])
def test_bf16_row_copy(benchmark, device, stage, layout):
    """What the C++ temporal forward's bf16 dense-row copy costs (torch 2.13's bf16 CPU GEMM reads
    past C within a row's leading dimension, so `as_rows` copies a sliced z): z as the model's slice
    of the projection (copied) vs z already dense (not copied), nano widths, one clip."""
    if device != "cpu":
        pytest.skip("the copy is taken on CPU only")
    size, channels = STAGES[stage], 96 * 2 ** (stage - 1)
    z, g, weights = _inputs("temporal_context", 8, size, channels, torch.bfloat16, device, grad=False)
    if layout == "dense":
        z = z.contiguous()
    fn = _function("temporal_context", "cpu", device)
    benchmark.extra_info.update(op="temporal_context", impl="cpu", layout=layout, stage=stage, c=channels, dtype="bfloat16")
    with torch.inference_mode():
        fn(z, g, weights)
        benchmark(fn, z, g, weights)


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", ["nano-train-step", "base-forward"])
def test_model(benchmark, device, backend, compiled, case):
    if device != "cuda":
        pytest.skip("GPU model cases (batch 8); the CPU ones are in test_bench_model_cpu.py")
    name = "vfl_net_nano" if case == "nano-train-step" else "video_focalnet_base"
    model = create_model(name, num_classes=400, backend=backend).to(device)
    clips = torch.randn(8, 8, 3, 224, 224, device=device)
    labels = torch.randint(0, 400, (8,), device=device)
    train = case == "nano-train-step"
    model.train(train)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if not train:
                with torch.no_grad():
                    return forward(clips)
            loss = torch.nn.functional.cross_entropy(forward(clips).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step()
    step()
    benchmark.extra_info.update(case=case, backend=backend, compiled=compiled, batch=8, frames=8, size=224,
                                dtype="bf16 autocast", device=device, peak_bytes=peak_bytes(step, device))
    benchmark(synchronized(step, device))
