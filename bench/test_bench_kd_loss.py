"""Fused KL + CE loss: eager reference vs torch.compile(reference) vs each built backend.

B in {8, 64, 256} x K in {101, 400}, forward and forward+backward, medians and peak memory.
Goals (reported, not asserted): on a GPU the fused op >= 3x eager and >= 1.5x compiled at B=64,
K=400 in one kernel launch; on CPU >= 2x eager.
"""
import pytest
import torch

import dvfl_kernels
from dvfl_kernels import reference
from memory import peak_bytes, synchronized

SHAPES = [(b, k) for b in (8, 64, 256) for k in (101, 400)]
_compiled_reference = {}


def _impl(name, device):
    if name == "eager":
        return lambda s, t, y: reference.kd_ce_loss(s, t, y, 0.3, 10.0, 0.1)
    if name == "compiled":
        if "fn" not in _compiled_reference:
            _compiled_reference["fn"] = torch.compile(lambda s, t, y: reference.kd_ce_loss(s, t, y, 0.3, 10.0, 0.1))
        return _compiled_reference["fn"]
    if name not in dvfl_kernels.available_backends("kd_ce_loss") or (name in ("triton", "cuda") and device != "cuda"):
        pytest.skip(f"backend {name} does not run on {device} here")
    return lambda s, t, y: dvfl_kernels.kd_ce_loss(s, t, y, 0.3, 10.0, 0.1, backend=name)


@pytest.mark.parametrize("impl", ["eager", "compiled", "cpu", "cuda", "triton"])
@pytest.mark.parametrize("batch,classes", SHAPES, ids=[f"B{b}-K{k}" for b, k in SHAPES])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_kd_ce_loss(benchmark, device, impl, batch, classes, mode):
    if impl == "cpu" and device != "cpu":
        pytest.skip("the C++ CPU kernel is timed on CPU tensors")
    fn = _impl(impl, device)
    student = torch.randn(batch, classes, device=device, requires_grad=mode == "fwd+bwd")
    teacher = torch.randn(batch, classes, device=device)
    target = torch.randint(0, classes, (batch,), device=device)

    def step():
        total = fn(student, teacher, target)[0]
        if mode == "fwd+bwd":
            total.backward()
        return total

    step()  # warm-up (and compilation)
    benchmark.extra_info.update(
        op="kd_ce_loss", impl=impl, mode=mode, batch=batch, classes=classes, dtype="float32", device=device,
        peak_bytes=peak_bytes(step, device),
    )
    benchmark(synchronized(step, device))
