"""GPU validation of the GPU focal kernels (Triton and CUDA C++) at the real stage shapes, before any
timing.

For every backend, stage (N = 64 frames of 8 clips, 56/28/14/7 pixels, C = 96 x 2^(stage-1)), op,
and dtype (fp32, bf16; fp16 for the CUDA C++ kernels, which take it natively): fresh random inputs (never zeros), the uninitialised memory the kernels will receive
poisoned with NaN, forward and every gradient compared with the float64 reference computed on the
same device by ||out - ref|| / ||ref||, and NaN counted. Also measures the device's copy bandwidth
(a large device-to-device copy, bytes read + written), the ceiling the benchmarks' achieved_GBps is
read against. Writes one JSON file; exits non-zero if any check fails.

    python bench/validate_gpu.py bench/results/validate-gpu.json
"""
from __future__ import annotations

import json
import sys

import torch

import dvfl_kernels
from dvfl_kernels import reference

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
DTYPES = {"triton": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}
STAGES = {1: 56, 2: 28, 3: 14, 4: 7}


def poison() -> None:
    """The next allocations reuse this NaN-filled memory: unwritten outputs show as NaN."""
    junk = torch.full((1 << 28,), float("nan"), device="cuda")
    del junk


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def check(backend: str, op: str, stage: int, dtype: torch.dtype, seed: int) -> dict:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    n, size, c, levels = 64, STAGES[stage], 96 * 2 ** (stage - 1), 2
    randn = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.float64, generator=generator)  # noqa: E731
    if op == "modulate":
        inputs = [randn(n, size, size, 3 * c)[..., i * c : (i + 1) * c] for i in range(3)]
        weights = []
    else:
        proj = randn(n, size, size, 2 * c + levels + 1)
        inputs = [proj[..., :c], proj[..., c : c + levels + 1]]
        if op == "spatial_context":
            weights = [randn(c, 1, k, k) / k for k in (3, 5)]
        else:
            weights = [randn(c, c, k) / (c * k) ** 0.5 for k in (3, 5)]
    upstream = randn(n, size, size, c)

    def run(fn, tensors, wts, up):
        leaves = [t.detach().requires_grad_() for t in tensors] + [w.detach().requires_grad_() for w in wts]
        x, w = leaves[: len(tensors)], leaves[len(tensors) :]
        if op == "spatial_context":
            out = fn["spatial"](*x, w)
        elif op == "temporal_context":
            out = fn["temporal"](*x, w)
        else:
            out = fn["modulate"](*x)
        out.backward(up)
        return [out] + [leaf.grad for leaf in leaves]

    ref_fns = {"spatial": reference.spatial_context, "temporal": lambda z, g, w: reference.temporal_context(z, g, w, 8),
               "modulate": reference.modulate}
    fast_fns = {"spatial": lambda z, g, w: dvfl_kernels.spatial_context(z, g, w, backend=backend),
                "temporal": lambda z, g, w: dvfl_kernels.temporal_context(z, g, w, 8, backend=backend),
                "modulate": lambda q, s, t: dvfl_kernels.modulate(q, s, t, backend=backend)}
    expected = run(ref_fns, inputs, weights, upstream)
    poison()
    # activations in `dtype` (strided slices, as in the model); weights fp32 (what autocast hands over)
    got = run(fast_fns, [t.to(dtype) for t in inputs], [w.float() for w in weights], upstream.to(dtype))
    torch.cuda.synchronize()
    names = ["out"] + [f"d{i}" for i in range(len(inputs))] + [f"dweight{i}" for i in range(len(weights))]
    errors = {name: rel(a, b) for name, a, b in zip(names, got, expected)}
    return {"backend": backend, "op": op, "stage": stage, "n": n, "h": size, "w": size, "c": c, "dtype": str(dtype).removeprefix("torch."),
            "seed": seed, "rel_err": errors, "ok": all(e <= TOLERANCE[dtype] for e in errors.values())}


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written), median of 20."""
    from triton.testing import do_bench

    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def main(path: str) -> int:
    if not torch.cuda.is_available():
        print("validate_gpu: no CUDA device; nothing to validate")
        return 0
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": copy_bandwidth(), "checks": []}
    backends = [b for b in DTYPES if b in dvfl_kernels.available_backends("spatial_context")]
    results["backends"] = backends
    for seed, (backend, op, stage, dtype) in enumerate(
        (backend, op, stage, dtype) for backend in backends for op in ("spatial_context", "temporal_context", "modulate")
        for stage in STAGES for dtype in DTYPES[backend]
    ):
        result = check(backend, op, stage, dtype, seed)
        results["checks"].append(result)
        worst = max(result["rel_err"].values())
        print(f"{backend:<7} {op:<18} stage {stage} {result['dtype']:<9} worst rel err {worst:.2e} "
              f"{'ok' if result['ok'] else 'FAIL'}", flush=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    failed = [r for r in results["checks"] if not r["ok"]]
    print(f"copy bandwidth {results['copy_GBps']:.0f} GB/s; {len(failed)} failed of {len(results['checks'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/validate-gpu.json"))
