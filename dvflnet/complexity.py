"""Model complexity: parameters, fvcore FLOP counts and peak memory (the paper's Table XIV columns).

FLOPs follow fvcore's convention (one multiply-add counts as one), the one the published numbers use.
The dvfl custom ops get fvcore handles with the multiply-adds of the convolutions they replace, so the
count is the same whichever backend the model runs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models import create_model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _kernel_shapes(list_value) -> list[list[int]]:
    # A Tensor[] argument appears in the traced graph as the output of a prim::ListConstruct.
    return [_shape(v) for v in list_value.node().inputs()]


def spatial_context_flop_jit(inputs, outputs) -> int:
    """Depthwise k x k convolution per level: N*H*W*C*k^2 multiply-adds."""
    n, h, w, c = _shape(inputs[0])
    return sum(n * h * w * c * k[-1] * k[-2] for k in _kernel_shapes(inputs[2]))


def temporal_context_flop_jit(inputs, outputs) -> int:
    """Dense C_in -> C_out temporal convolution of k taps per level: N*H*W*C_out*C_in*k multiply-adds."""
    n, h, w, _ = _shape(inputs[0])
    return sum(n * h * w * k[0] * k[1] * k[2] for k in _kernel_shapes(inputs[2]))


# Keyed by the torch.library names of the ops (namespace "dvfl"); elementwise ops count nothing,
# as fvcore's own elementwise ops do.
FLOP_HANDLES = {
    "dvfl::spatial_context": spatial_context_flop_jit,
    "dvfl::temporal_context": temporal_context_flop_jit,
    "dvfl::modulate": None,
}


def modulation_macs(module: nn.Module, x_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one SpatioTemporalFocalModulation call on x (N, H, W, C): the f, f_temporal,
    h, h_temporal and proj projections and the convolutions the fused ops replace (fvcore's count)."""
    positions, c = math.prod(x_shape[:-1]), x_shape[-1]
    projections = module.f.out_features + module.f_temporal.out_features + 3 * c  # f, f_t; h, h_t, proj
    convs = sum(k * k + c * k for k in module.kernel_sizes)  # depthwise k x k; dense C -> C over k taps
    return positions * c * (projections + convs)


def thop_custom_ops() -> dict:
    """``custom_ops`` for thop (the public get_flops.py's counter): thop counts module calls, and the
    fused focal ops call no convolution module, so without this it misses most of the modulation.

        from thop import profile
        macs, params = profile(model, inputs=(clip,), custom_ops=thop_custom_ops())
    """
    from .models.video_focalnet import SpatioTemporalFocalModulation

    def count(module, inputs, output) -> None:
        # thop stops at a module with a counter: the whole modulation, its projections included
        module.total_ops += torch.DoubleTensor([int(modulation_macs(module, tuple(inputs[0].shape)))])

    return {SpatioTemporalFocalModulation: count}


def count_flops(model: nn.Module, frames: int = 8, size: int = 224, batch: int = 1, device="cpu") -> int:
    """fvcore FLOPs (multiply-adds) of one forward of `batch` clips of `frames` x 3 x size x size."""
    from fvcore.nn import FlopCountAnalysis

    clip = torch.randn(batch, frames, model.in_chans, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, clip).set_op_handle(**FLOP_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())
    finally:
        model.train(was_training)


def _cpu_peak_bytes(fn) -> int:
    """Peak bytes of CPU tensor memory allocated by fn() above what was live when it started."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory(model: nn.Module, clip: torch.Tensor, backward: bool = True) -> int:
    """Peak bytes allocated during one forward (and backward) of `clip`, beyond the weights and input."""

    def step():
        if backward:
            model(clip).float().sum().backward()
        else:
            with torch.no_grad():
                model(clip)

    if clip.device.type == "cuda":
        torch.cuda.synchronize(clip.device)
        base = torch.cuda.memory_allocated(clip.device)
        torch.cuda.reset_peak_memory_stats(clip.device)
        step()
        torch.cuda.synchronize(clip.device)
        peak = torch.cuda.max_memory_allocated(clip.device) - base
    else:
        peak = _cpu_peak_bytes(step)
    model.zero_grad(set_to_none=True)
    return peak


@dataclass
class Complexity:
    model: str
    num_classes: int
    frames: int
    size: int
    params: int
    flops: int  # fvcore multiply-adds for one clip
    peak_forward_bytes: int | None = None
    peak_train_bytes: int | None = None

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def as_dict(self) -> dict:
        return asdict(self) | {"gflops": self.gflops}


def measure(
    name: str,
    num_classes: int = 101,
    frames: int = 8,
    size: int = 224,
    memory: bool = False,
    memory_batch: int = 1,
    device="cpu",
    backend: str = "auto",
) -> Complexity:
    """Parameters and FLOPs of a named variant (and, with memory=True, peak memory of one
    forward and one forward+backward on `memory_batch` clips)."""
    model = create_model(name, num_classes=num_classes, num_frames=frames, backend=backend).to(device)
    result = Complexity(name, num_classes, frames, size, count_parameters(model), count_flops(model, frames, size, device=device))
    if memory:
        clip = torch.randn(memory_batch, frames, 3, size, size, device=device)
        model.eval()
        result.peak_forward_bytes = peak_memory(model, clip, backward=False)
        model.train()
        result.peak_train_bytes = peak_memory(model, clip, backward=True)
    return result
