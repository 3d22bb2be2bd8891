"""Every Triton kernel compiles for a real GPU (sm_90 cubin, Triton's own ptxas), without one.

The interpreter runs the kernels' maths on CPU but accepts things the compiler rejects (non-constexpr
globals, tl.dot shapes and dtypes, constexpr branches never taken at test shapes): this compiles
each specialisation the launchers use, for every storage dtype, so a GPU run does not discover them.
The compiles run in one child process without TRITON_INTERPRET (the test session sets it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCALARS = {"scale", "alpha", "temperature", "label_smoothing"}
HALF = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def _specs() -> dict[str, tuple[str, str, dict, dict, str]]:
    """name -> (module, kernel, constexprs, pointer types, default pointer type)."""
    import triton.language as tl

    specs = {}
    for dtype, ptr in HALF.items():
        for first, last, save in [(True, False, True), (False, True, True), (True, True, False)]:
            specs[f"spatial_forward-{dtype}-first{first:d}-last{last:d}-save{save:d}"] = (
                "focal_modulation", "spatial_forward_kernel",
                dict(K=5, FIRST=first, LAST=last, SAVE_PRE=save, BLOCK_P=64, BLOCK_C=32),
                {"src_ptr": ptr, "g_ptr": ptr, "z_ptr": ptr}, "*fp32")
        for has_conv, gated, last in [(False, True, True), (True, True, False), (True, False, False)]:
            types = {"da_ptr": ptr, "g_ptr": ptr}
            if not gated:  # level 0: the input z is the centre, dz is written in its dtype
                types.update(center_ptr=ptr, out_ptr=ptr)
            specs[f"spatial_backward-{dtype}-conv{has_conv:d}-gated{gated:d}-last{last:d}"] = (
                "focal_modulation", "spatial_backward_kernel",
                dict(K=3, HAS_CONV=has_conv, GATED=gated, LAST=last, BLOCK_P=64, BLOCK_C=32), types, "*fp32")
            types = {"da_ptr": ptr, "g_ptr": ptr, **({} if gated else {"out_ptr": ptr})}
            specs[f"temporal_backward-{dtype}-conv{has_conv:d}-gated{gated:d}-last{last:d}"] = (
                "focal_modulation", "temporal_gemm_kernel",
                dict(K=3, BACKWARD=True, HAS_CONV=has_conv, GATED=gated, FIRST=False, LAST=last, SAVE_PRE=False,
                     IEEE=True, BLOCK_M=64, BLOCK_N=16, BLOCK_K=16), types, "*fp32")
        for block_m in (32, 128):
            specs[f"temporal_forward-{dtype}-block{block_m}"] = (
                "focal_modulation", "temporal_gemm_kernel",
                dict(K=5, BACKWARD=False, HAS_CONV=True, GATED=True, FIRST=False, LAST=False, SAVE_PRE=True,
                     IEEE=dtype == "fp32", BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=32),
                {"src_ptr": ptr, "w_ptr": ptr, "g_ptr": ptr, "z_ptr": ptr}, "*fp32")
        for apply_gelu in (True, False):
            specs[f"temporal_weight_grad-{dtype}-gelu{apply_gelu:d}"] = (
                "focal_modulation", "temporal_weight_grad_kernel",
                dict(K=5, APPLY_GELU=apply_gelu, BLOCK_O=64, BLOCK_I=64, BLOCK_M=32),
                {"src_ptr": "*fp32" if apply_gelu else ptr}, "*fp32")
        for backward in (False, True):
            specs[f"modulate-{dtype}-backward{backward:d}"] = (
                "focal_modulation", "modulate_kernel", dict(BACKWARD=backward, BLOCK_M=64, BLOCK_C=64), {}, ptr)
    for soft, grad, acc in [(False, True, "fp32"), (True, True, "fp32"), (False, False, "fp32"), (True, True, "fp64")]:
        logits = "*bf16" if acc == "fp32" else "*fp64"
        specs[f"kd_loss-soft{soft:d}-grad{grad:d}-{acc}"] = (
            "kd_loss", "kd_ce_rows_kernel",
            dict(SOFT=soft, COMPUTE_GRAD=grad, BLOCK_K=512, NEG=-3.0e38, TOL=1e-4, SERIES_RANGE=0.5,
                 ACC=tl.float64 if acc == "fp64" else tl.float32),
            {"student_ptr": logits, "teacher_ptr": logits, "target_ptr": f"*{acc}" if soft else "*i64"}, f"*{acc}")
    return specs


def _compile_all() -> dict[str, str]:
    """Run in the child process: compile every spec, 'ok' or the error per name."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = {}
    for name, (module, kernel_name, constexprs, pointer_types, default_pointer) in _specs().items():
        try:
            kernel = getattr(importlib.import_module(f"dvfl_kernels.triton.{module}"), kernel_name)
            while not isinstance(kernel, triton.runtime.jit.JITFunction):  # unwrap @triton.autotune
                kernel = kernel.fn
            signature = {}
            for arg in kernel.arg_names:
                if arg in constexprs:
                    signature[arg] = "constexpr"
                elif arg.endswith("_ptr"):
                    signature[arg] = pointer_types.get(arg, default_pointer)
                else:
                    signature[arg] = "fp32" if arg.removesuffix("_lo") in SCALARS else "i32"
            missing = [p.name for p in kernel.params if p.is_constexpr and p.name not in constexprs]
            if missing:
                raise ValueError(f"constexpr arguments without a value: {missing}")
            source = ASTSource(fn=kernel, signature=signature,
                               constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            results[name] = "ok" if compiled.asm["cubin"] else "empty cubin"
        except Exception as err:  # reported per kernel by the test
            results[name] = f"{type(err).__name__}: {err}"
    return results


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(_specs()))
def test_kernel_compiles_for_sm90(compiled, name):
    assert compiled[name] == "ok", compiled[name]


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
