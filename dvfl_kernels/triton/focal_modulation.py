"""Triton kernels of the spatio-temporal focal modulation: spatial context, temporal context, modulate.

Layout: every activation is channels-last (N, H, W, C) with the channel stride 1 and any other
strides, so `z`/`g` (and `z_t`/`g_t`) are read straight out of the projection's output slices. A
program owns a tile of pixels (rows) x a block of channels; element maths is float32, whatever the
storage dtype.

Spatial context (per level l = 1..L, one launch each; then the global term):
  forward  pre_l = dwconv_l(z_{l-1}); z_l = GELU(pre_l); A += s * g[l-1] * z_l     (s = 1/(L+1) or 1)
           the last level also writes per-tile column sums of z_L (the global mean, no atomics);
           A += s * g[L] * GELU(mean_HW z_L) is one in-place pass over our own A.
  backward level l = L..0 in one launch each: dz_l = dwconv^T_{l+1}(dpre_{l+1}) + s g[l-1] dA
           (+ the global term's share at l = L); dpre_l = dz_l GELU'(pre_l). The same loads give
           the depthwise weight gradient as per-tile partials (summed afterwards in a fixed order:
           deterministic) and the gate gradient as per-channel-block partials.
  saved    pre_1..pre_L (L x N*H*W*C, fp32 when training) and the global mean (N x C). z_l is
           recomputed as GELU(pre_l) where backward needs it: one erf per element instead of
           storing (and re-reading) another L activations.
  bytes    forward, per level: read z_{l-1} once (k x k neighbours come from L1/L2, tile halos are
           re-read: (1 + k/BLOCK_W)-ish), read g's column, read+write A (fp32), write pre_l and z_l;
           backward, per level: read dpre_{l+1}, pre_l, dA, one g column; write dpre_l.
Temporal context: the same structure with the dense C x C temporal convolution as a GEMM per tap
  (rows = N*H*W positions; a tap reads the row one frame earlier or later, i.e. n -+ 1 in N = B*T,
  masked at the clip's ends), tl.dot over C, GELU / gate / accumulate in the epilogue; the weight
  gradient is a split-M GEMM with per-chunk partials, summed in a fixed order.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Pixels x channels per program of the depthwise kernels: 64 x 32 fp32 lanes keep a tap's input tile
# (8 KiB) plus the accumulator in registers with 4 warps; the k x k halo reloads hit L1/L2. The
# forward kernel autotunes the channel block (the pixel block fixes how many column-sum partials
# exist, so it stays put); the backward kernel's partial buffers depend on both, so it uses these.
SPATIAL_BLOCK_P = 64
SPATIAL_BLOCK_C = 32
# Interpreted runs (no GPU) have nothing to time: one config each. DVFL_TRITON_AUTOTUNE=off does the
# same on a GPU: the test suite's GPU share (bench/run_gpu.sh) meets dozens of distinct (C, K) keys, and
# autotuning compiles every config of a list for each, minutes of JIT that check nothing more.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
_ONE_CONFIG = _INTERPRETED or os.environ.get("DVFL_TRITON_AUTOTUNE", "on").lower() in ("off", "0", "false", "no")


def _configs(candidates: list[triton.Config]) -> list[triton.Config]:
    return candidates[:1] if _ONE_CONFIG else candidates


# Keyed on the channel count and kernel size, never on N, H or W: a training run tunes once per
# stage and level, whatever the batch or a last smaller batch. Four configs a list: a nano training
# step meets 8 spatial and 16 temporal keys per dtype, and each config is a JIT compile (about a
# second) before the first step; 9 x 18 configs made that minutes. The first entry is the one the
# interpreted tests run.
SPATIAL_FORWARD_CONFIGS = _configs([
    triton.Config({"BLOCK_C": bc}, num_warps=w) for bc, w in ((32, 4), (64, 4), (32, 8), (64, 8))
])
TEMPORAL_GEMM_CONFIGS = _configs([
    triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=st)
    for bm, w, st in ((64, 4, 2), (64, 8, 3), (128, 4, 3), (128, 8, 3))
])
# Rows per chunk of the split-M temporal weight-gradient GEMM (partials summed afterwards).
WGRAD_CHUNK_M = 1024
INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * INV_SQRT2))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.math.erf(x * INV_SQRT2)) + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI


def _gelu_grad_host(x: torch.Tensor) -> torch.Tensor:
    """GELU'(x) for the small (N, C) / (B, H, W, C) global-mean tensors, in float64."""
    x = x.double()
    return (0.5 * (1 + torch.erf(x * INV_SQRT2.value)) + x * torch.exp(-0.5 * x * x) * INV_SQRT_2PI.value).float()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _channels_dense(*tensors: torch.Tensor):
    """The kernels index channels with stride 1 and take any other strides; anything else (a
    permuted tensor, or the stride-0 gradient of a sum) is copied once here."""
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


# ---- spatial context ---------------------------------------------------------------------------------
@triton.autotune(configs=SPATIAL_FORWARD_CONFIGS, key=["C", "K"], restore_value=["acc_ptr"])
@triton.jit
def spatial_forward_kernel(
    src_ptr, src_sn, src_sh, src_sw,
    w_ptr,
    g_ptr, g_sn, g_sh, g_sw, gate_index,
    acc_ptr, pre_ptr, z_ptr, colsum_ptr,
    H, W, C, scale,
    K: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One level: pre = dwconv(src); z = GELU(pre); A (+)= scale * g[gate_index] * z. pre, z and A
    are contiguous (N, H, W, C); src and g are strided. LAST writes column sums of z per tile."""
    pid_p, n, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = offs_p < H * W, offs_c < C
    h, w = offs_p // W, offs_p % W
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for dy in tl.static_range(K):
        for dx in tl.static_range(K):
            hh, ww = h + (dy - K // 2), w + (dx - K // 2)
            inside = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            x = tl.load(src_ptr + n * src_sn + hh[:, None] * src_sh + ww[:, None] * src_sw + offs_c[None, :],
                        mask=inside[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            tap = tl.load(w_ptr + offs_c * (K * K) + (dy * K + dx), mask=cmask, other=0.0).to(tl.float32)
            acc += x * tap[None, :]
    mask = pmask[:, None] & cmask[None, :]
    out = n * H * W * C + offs_p[:, None] * C + offs_c[None, :]
    if SAVE_PRE:
        tl.store(pre_ptr + out, acc, mask=mask)
    z = _gelu(acc)
    if LAST:
        tl.store(colsum_ptr + (n * tl.num_programs(0) + pid_p) * C + offs_c, tl.sum(tl.where(mask, z, 0.0), 0), mask=cmask)
    else:
        tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
    gate = tl.load(g_ptr + n * g_sn + h * g_sh + w * g_sw + gate_index, mask=pmask, other=0.0).to(tl.float32)
    contribution = (scale * gate)[:, None] * z
    if not FIRST:
        contribution += tl.load(acc_ptr + out, mask=mask, other=0.0)
    tl.store(acc_ptr + out, contribution, mask=mask)


@triton.jit
def spatial_backward_kernel(
    src_ptr,  # dpre_{l+1}, contiguous fp32 (unused when not HAS_CONV)
    w_ptr,  # level l+1 kernel, flipped, (C, K, K) contiguous
    center_ptr, c_sn, c_sh, c_sw,  # pre_l (l >= 1, contiguous) or z (l = 0, strided)
    da_ptr, da_sn, da_sh, da_sw,
    g_ptr, g_sn, g_sh, g_sw, gate_index,
    dm_ptr,  # (N, C) fp32: the global term's gradient, spread over H*W already (LAST only)
    out_ptr,  # dpre_l (fp32) or dz (input dtype), contiguous
    wpart_ptr,  # (N * tiles, K*K, C) fp32 weight-gradient partials of level l+1
    gpart_ptr,  # (channel blocks, N*H*W) fp32 gate-gradient partials of gate l-1
    H, W, C, scale,
    K: tl.constexpr, HAS_CONV: tl.constexpr, GATED: tl.constexpr, LAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p, n, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = offs_p < H * W, offs_c < C
    mask = pmask[:, None] & cmask[None, :]
    h, w = offs_p // W, offs_p % W
    center = tl.load(center_ptr + n * c_sn + h[:, None] * c_sh + w[:, None] * c_sw + offs_c[None, :],
                     mask=mask, other=0.0).to(tl.float32)
    z = _gelu(center) if GATED else center  # z_l: recomputed from pre_l, or the op's input z
    dz = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if HAS_CONV:
        tile = n * tl.num_programs(0) + pid_p
        for dy in tl.static_range(K):
            for dx in tl.static_range(K):
                hh, ww = h + (dy - K // 2), w + (dx - K // 2)
                inside = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                d = tl.load(src_ptr + n * H * W * C + (hh * W + ww)[:, None] * C + offs_c[None, :],
                            mask=inside[:, None] & cmask[None, :], other=0.0)
                tap = tl.load(w_ptr + offs_c * (K * K) + (dy * K + dx), mask=cmask, other=0.0).to(tl.float32)
                dz += d * tap[None, :]
                tl.store(wpart_ptr + (tile * K * K + dy * K + dx) * C + offs_c, tl.sum(d * z, 0), mask=cmask)
    if GATED:
        da = tl.load(da_ptr + n * da_sn + h[:, None] * da_sh + w[:, None] * da_sw + offs_c[None, :],
                     mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(g_ptr + n * g_sn + h * g_sh + w * g_sw + gate_index, mask=pmask, other=0.0).to(tl.float32)
        dz += (scale * gate)[:, None] * da
        tl.store(gpart_ptr + pid_c * (tl.num_programs(1) * H * W) + n * H * W + offs_p, scale * tl.sum(da * z, 1), mask=pmask)
        if LAST:
            dz += tl.load(dm_ptr + n * C + offs_c, mask=cmask, other=0.0)[None, :]
        dz = dz * _gelu_grad(center)
    tl.store(out_ptr + n * H * W * C + offs_p[:, None] * C + offs_c[None, :], dz.to(out_ptr.dtype.element_ty), mask=mask)


def _spatial_grid(n: int, h: int, w: int, c: int):
    return (triton.cdiv(h * w, SPATIAL_BLOCK_P), n, triton.cdiv(c, SPATIAL_BLOCK_C))


def spatial_context_forward(z, g, weights, normalize: bool, save: bool):
    """A_s (z's dtype) and, when `save`, what backward needs: pre (L, N, H, W, C) fp32 and the
    global mean (N, C) fp32."""
    z, g = _channels_dense(z, g)
    n, h, w, c = z.shape
    levels = len(weights)
    scale = 1.0 / (levels + 1) if normalize else 1.0
    tiles = triton.cdiv(h * w, SPATIAL_BLOCK_P)
    grid = lambda meta: (tiles, n, triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
    acc = torch.empty((n, h, w, c), dtype=torch.float32, device=z.device)
    pre = torch.empty((levels if save else 0, n, h, w, c), dtype=torch.float32, device=z.device)
    colsum = torch.empty((n, tiles, c), dtype=torch.float32, device=z.device)
    src = z
    for level, weight in enumerate(weights):
        last = level == levels - 1
        z_next = src if last else torch.empty((n, h, w, c), dtype=z.dtype, device=z.device)
        spatial_forward_kernel[grid](
            src, *_strides(src), weight.contiguous(), g, *_strides(g), level,
            acc, pre[level] if save else acc, z_next, colsum,
            h, w, c, scale,
            K=weight.shape[-1], FIRST=level == 0, LAST=last, SAVE_PRE=save, BLOCK_P=SPATIAL_BLOCK_P,
        )
        src = z_next
    mean = colsum.sum(1) / (h * w)
    # the global term: one in-place pass over our own accumulator
    acc.addcmul_(g[..., levels : levels + 1].float(), torch.nn.functional.gelu(mean)[:, None, None, :], value=scale)
    return acc.to(z.dtype), pre, mean


def spatial_context_backward(grad, z, g, weights, pre, mean, normalize: bool):
    """(dz, dg, [dweight per level]) of spatial_context_forward."""
    grad, z, g = _channels_dense(grad, z, g)
    n, h, w, c = z.shape
    levels = len(weights)
    scale = 1.0 / (levels + 1) if normalize else 1.0
    grid = _spatial_grid(n, h, w, c)
    tiles = grid[0] * n
    gelu_mean = torch.nn.functional.gelu(mean)
    # the global term: d mean (N, C) and the last gate's gradient, as small contractions
    gate_last = g[..., levels].float()
    grad32 = grad.float()
    d_sum = torch.einsum("nhwc,nhw->nc", grad32, gate_last)
    gelu_grad_mean = _gelu_grad_host(mean)
    dm = (d_sum * gelu_grad_mean * (scale / (h * w))).contiguous()
    dg = torch.empty((n, h, w, levels + 1), dtype=torch.float32, device=z.device)
    dg[..., levels] = torch.einsum("nhwc,nc->nhw", grad32, gelu_mean) * scale
    gpart = torch.empty((grid[2], n * h * w), dtype=torch.float32, device=z.device)
    dweights = [None] * levels
    dnext = None
    for level in range(levels, -1, -1):  # level l: produce dpre_l (l >= 1) or dz (l = 0)
        has_conv = level < levels
        gated = level >= 1
        out = torch.empty((n, h, w, c), dtype=torch.float32 if gated else z.dtype, device=z.device)
        kernel = weights[level] if has_conv else weights[0]
        k = kernel.shape[-1]
        wpart = torch.empty((tiles if has_conv else 0, k * k, c), dtype=torch.float32, device=z.device)
        center = pre[level - 1] if gated else z
        spatial_backward_kernel[grid](
            dnext if has_conv else out, kernel.flip(-1, -2).contiguous(), center, *_strides(center),
            grad, *_strides(grad), g, *_strides(g), max(level - 1, 0), dm, out, wpart, gpart,
            h, w, c, scale,
            K=k, HAS_CONV=has_conv, GATED=gated, LAST=level == levels,
            BLOCK_P=SPATIAL_BLOCK_P, BLOCK_C=SPATIAL_BLOCK_C,
        )
        if has_conv:
            # fixed-order reduction of the per-tile partials; the kernel ran on flipped taps
            dweights[level] = wpart.sum(0).t().reshape(c, 1, k, k).flip(-1, -2).to(weights[level].dtype)
        if gated:
            dg[..., level - 1] = gpart.sum(0).view(n, h, w)
        dnext = out
    return dnext, dg.to(g.dtype), dweights


# ---- temporal context ------------------------------------------------------------------------------------
@triton.autotune(configs=TEMPORAL_GEMM_CONFIGS, key=["C", "K", "BACKWARD"], restore_value=["acc_ptr"])
@triton.jit
def temporal_gemm_kernel(
    src_ptr, src_sn, src_sh, src_sw,  # (N, H, W, C_in) strided, N = B*T
    w_ptr,  # (K, C_out, C_in) contiguous, tap j shifts the frame by j - K//2
    center_ptr,  # backward: pre_l, contiguous fp32 (GATED only)
    da_ptr, da_sn, da_sh, da_sw,  # backward: dA
    g_ptr, g_sn, g_sh, g_sw, gate_index,
    acc_ptr, pre_ptr, z_ptr,  # forward outputs (contiguous)
    dm_ptr,  # backward, LAST: (B, H, W, C) fp32
    out_ptr, gpart_ptr,  # backward outputs
    T, H, W, C, M, scale,
    K: tl.constexpr, BACKWARD: tl.constexpr, HAS_CONV: tl.constexpr, GATED: tl.constexpr,
    FIRST: tl.constexpr, LAST: tl.constexpr, SAVE_PRE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Dense temporal convolution of rows (n, h, w) over frames as K shifted GEMMs, with the focal
    epilogue: forward pre / GELU / gated accumulation; backward gate, GELU' and the global term."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask, cmask = rows < M, cols < C
    n, hw = rows // (H * W), rows % (H * W)
    h, w = hw // W, hw % W
    t = n % T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_CONV:
        offs_k = tl.arange(0, BLOCK_K)
        for j in tl.static_range(K):
            tt = t + (j - K // 2)
            valid = rmask & (tt >= 0) & (tt < T)
            row_ptr = src_ptr + (n + (j - K // 2)) * src_sn + h * src_sh + w * src_sw
            for k0 in range(0, C, BLOCK_K):
                kk = k0 + offs_k
                x = tl.load(row_ptr[:, None] + kk[None, :], mask=valid[:, None] & (kk < C)[None, :], other=0.0)
                wt = tl.load(w_ptr + j * C * C + cols[None, :] * C + kk[:, None], mask=(kk < C)[:, None] & cmask[None, :], other=0.0)
                if IEEE:
                    acc += tl.dot(x.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
                else:  # half inputs and weights: tensor-core dot, fp32 accumulation
                    acc += tl.dot(x, wt)
    mask = rmask[:, None] & cmask[None, :]
    out = rows[:, None] * C + cols[None, :]
    gate = tl.load(g_ptr + n * g_sn + h * g_sh + w * g_sw + gate_index, mask=rmask, other=0.0).to(tl.float32)
    if not BACKWARD:
        if SAVE_PRE:
            tl.store(pre_ptr + out, acc, mask=mask)
        z = _gelu(acc)
        tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
        contribution = (scale * gate)[:, None] * z
        if not FIRST:
            contribution += tl.load(acc_ptr + out, mask=mask, other=0.0)
        tl.store(acc_ptr + out, contribution, mask=mask)
    else:
        if GATED:
            pre = tl.load(center_ptr + out, mask=mask, other=0.0)
            da = tl.load(da_ptr + n[:, None] * da_sn + h[:, None] * da_sh + w[:, None] * da_sw + cols[None, :],
                         mask=mask, other=0.0).to(tl.float32)
            acc += (scale * gate)[:, None] * da
            tl.store(gpart_ptr + pid_n * M + rows, scale * tl.sum(da * _gelu(pre), 1), mask=rmask)
            if LAST:
                clip_pos = (n // T) * H * W + hw
                acc += tl.load(dm_ptr + clip_pos[:, None] * C + cols[None, :], mask=mask, other=0.0)
            acc = acc * _gelu_grad(pre)
        tl.store(out_ptr + out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def temporal_weight_grad_kernel(
    d_ptr,  # dpre_{l+1}: (M, C_out) contiguous fp32
    src_ptr, src_sn, src_sh, src_sw,  # z_l source: pre_l (GELU applied) or z (strided)
    part_ptr,  # (chunks, K, C_out, C_in) fp32
    T, H, W, C, M, CHUNK,
    K: tl.constexpr, APPLY_GELU: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dW_j[o, i] = sum over rows r of dpre[r, o] * z_l[r shifted by j - K//2 frames, i], over one
    chunk of rows; the chunks' partials are summed afterwards in a fixed order (deterministic)."""
    pid_o, pid_i, chunk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    omask, imask = offs_o < C, offs_i < C
    for j in tl.static_range(K):
        acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        for m0 in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, M), BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            rmask = rows < tl.minimum(chunk * CHUNK + CHUNK, M)
            n, hw = rows // (H * W), rows % (H * W)
            h, w = hw // W, hw % W
            tt = n % T + (j - K // 2)
            valid = rmask & (tt >= 0) & (tt < T)
            d = tl.load(d_ptr + rows[:, None] * C + offs_o[None, :], mask=rmask[:, None] & omask[None, :], other=0.0)
            x = tl.load(src_ptr + ((n + (j - K // 2)) * src_sn + h * src_sh + w * src_sw)[:, None] + offs_i[None, :],
                        mask=valid[:, None] & imask[None, :], other=0.0).to(tl.float32)
            if APPLY_GELU:
                x = tl.where(valid[:, None], _gelu(x), 0.0)
            acc += tl.dot(tl.trans(d), x, input_precision="ieee")
        tl.store(part_ptr + ((chunk * K + j) * C + offs_o[:, None]) * C + offs_i[None, :], acc, mask=omask[:, None] & imask[None, :])


def _temporal_blocks(c: int) -> tuple[int, int]:
    """Output-channel and reduction blocks of the temporal GEMM (tl.dot needs >= 16); the row block
    is autotuned. The output-channel block fixes how many gate-gradient partials exist."""
    return min(64, max(16, triton.next_power_of_2(c))), min(32, max(16, triton.next_power_of_2(c)))


def temporal_context_forward(z_t, g_t, weights, num_frames: int, normalize: bool, save: bool):
    """A_t (z_t's dtype) and, when `save`, pre (L, N, H, W, C) fp32 and the temporal mean (B, H, W, C)."""
    z_t, g_t = _channels_dense(z_t, g_t)
    n, h, w, c = z_t.shape
    levels, m = len(weights), n * h * w
    scale = 1.0 / (levels + 1) if normalize else 1.0
    block_n, block_k = _temporal_blocks(c)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, block_n))  # noqa: E731
    acc = torch.empty((n, h, w, c), dtype=torch.float32, device=z_t.device)
    pre = torch.empty((levels if save else 0, n, h, w, c), dtype=torch.float32, device=z_t.device)
    # fp32: IEEE dot products (1e-5 accuracy). Half inputs: tensor-core dots on the GPU; Triton 3.9's
    # interpreter computes bf16 tl.dot wrongly, so interpreted runs take the fp32 path instead (the
    # half path is compiled in the tests and validated on a GPU by bench/validate_gpu.py).
    ieee = z_t.dtype in (torch.float32, torch.float64) or (_INTERPRETED and z_t.dtype == torch.bfloat16)
    src = z_t
    for level, weight in enumerate(weights):
        z_next = torch.empty((n, h, w, c), dtype=z_t.dtype, device=z_t.device)
        temporal_gemm_kernel[grid](
            src, *_strides(src), weight.permute(2, 0, 1).to(torch.float32 if ieee else z_t.dtype).contiguous(), acc,
            acc, 0, 0, 0, g_t, *_strides(g_t), level,
            acc, pre[level] if save else acc, z_next, acc, acc, acc,
            num_frames, h, w, c, m, scale,
            K=weight.shape[-1], BACKWARD=False, HAS_CONV=True, GATED=True, FIRST=level == 0, LAST=False,
            SAVE_PRE=save, IEEE=ieee, BLOCK_N=block_n, BLOCK_K=block_k,
        )
        src = z_next
    mean = src.float().unflatten(0, (-1, num_frames)).mean(1)
    acc.unflatten(0, (-1, num_frames)).addcmul_(
        g_t[..., levels : levels + 1].float().unflatten(0, (-1, num_frames)), torch.nn.functional.gelu(mean)[:, None], value=scale
    )
    return acc.to(z_t.dtype), pre, mean


def temporal_context_backward(grad, z_t, g_t, weights, num_frames: int, pre, mean, normalize: bool):
    grad, z_t, g_t = _channels_dense(grad, z_t, g_t)
    n, h, w, c = z_t.shape
    levels, m = len(weights), n * h * w
    scale = 1.0 / (levels + 1) if normalize else 1.0
    block_n, block_k = _temporal_blocks(c)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, block_n))  # noqa: E731
    clips = grad.float().unflatten(0, (-1, num_frames))
    gate_last = g_t[..., levels].float().unflatten(0, (-1, num_frames))
    gelu_mean = torch.nn.functional.gelu(mean)
    gelu_grad_mean = _gelu_grad_host(mean)
    dm = (torch.einsum("bthwc,bthw->bhwc", clips, gate_last) * gelu_grad_mean * (scale / num_frames)).contiguous()
    dg = torch.empty((n, h, w, levels + 1), dtype=torch.float32, device=z_t.device)
    dg[..., levels] = (torch.einsum("bthwc,bhwc->bthw", clips, gelu_mean) * scale).flatten(0, 1)
    gpart = torch.empty((triton.cdiv(c, block_n), m), dtype=torch.float32, device=z_t.device)
    dweights = [None] * levels
    dnext = None
    for level in range(levels, -1, -1):
        has_conv, gated = level < levels, level >= 1
        out = torch.empty((n, h, w, c), dtype=torch.float32 if gated else z_t.dtype, device=z_t.device)
        kernel = weights[level] if has_conv else weights[0]
        k = kernel.shape[-1]
        # transposed convolution = convolution with the taps reversed and each tap transposed
        flipped = kernel.flip(-1).permute(2, 1, 0).contiguous()
        src = dnext if has_conv else out
        center = pre[level - 1] if gated else out
        temporal_gemm_kernel[grid](
            src, *_strides(src), flipped, center,
            grad, *_strides(grad), g_t, *_strides(g_t), max(level - 1, 0),
            out, out, out, dm, out, gpart,
            num_frames, h, w, c, m, scale,
            K=k, BACKWARD=True, HAS_CONV=has_conv, GATED=gated, FIRST=False, LAST=level == levels,
            SAVE_PRE=False, IEEE=True, BLOCK_N=block_n, BLOCK_K=block_k,
        )
        if has_conv:
            dweights[level] = _temporal_weight_grad(dnext, pre[level - 1] if level >= 1 else z_t, level >= 1, k, num_frames).to(kernel.dtype)
        if gated:
            dg[..., level - 1] = gpart.sum(0).view(n, h, w)
        dnext = out
    return dnext, dg.to(g_t.dtype), dweights


def _temporal_weight_grad(dpre, source, apply_gelu: bool, k: int, num_frames: int) -> torch.Tensor:
    n, h, w, c = source.shape
    m = n * h * w
    block = min(64, max(16, triton.next_power_of_2(c)))
    chunks = triton.cdiv(m, WGRAD_CHUNK_M)
    part = torch.empty((chunks, k, c, c), dtype=torch.float32, device=dpre.device)
    grid = (triton.cdiv(c, block), triton.cdiv(c, block), chunks)
    temporal_weight_grad_kernel[grid](
        dpre, source, *_strides(source), part, num_frames, h, w, c, m, WGRAD_CHUNK_M,
        K=k, APPLY_GELU=apply_gelu, BLOCK_O=block, BLOCK_I=block, BLOCK_M=32,
    )
    return part.sum(0).permute(1, 2, 0).contiguous()  # (C_out, C_in, K)


# ---- modulate --------------------------------------------------------------------------------------------
@triton.jit
def modulate_kernel(
    q_ptr, q_sn, q_sh, q_sw, s_ptr, s_sn, s_sh, s_sw, t_ptr, t_sn, t_sh, t_sw,
    d_ptr, d_sn, d_sh, d_sw,  # backward: the upstream gradient
    out_ptr, dq_ptr, ds_ptr, dt_ptr,  # contiguous outputs
    H, W, C, M,
    BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < M)[:, None] & (cols < C)[None, :]
    n, hw = rows // (H * W), rows % (H * W)
    h, w = hw // W, hw % W
    q = tl.load(q_ptr + (n * q_sn + h * q_sh + w * q_sw)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + (n * s_sn + h * s_sh + w * s_sw)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + (n * t_sn + h * t_sh + w * t_sw)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out = rows[:, None] * C + cols[None, :]
    if BACKWARD:
        d = tl.load(d_ptr + (n * d_sn + h * d_sh + w * d_sw)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dq_ptr + out, (d * s * t).to(dq_ptr.dtype.element_ty), mask=mask)
        tl.store(ds_ptr + out, (d * q * t).to(ds_ptr.dtype.element_ty), mask=mask)
        tl.store(dt_ptr + out, (d * q * s).to(dt_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + out, (q * s * t).to(out_ptr.dtype.element_ty), mask=mask)


MODULATE_BLOCK_M = 64
MODULATE_BLOCK_C = 64


def _modulate_launch(q, m_s, m_t, grad=None):
    q, m_s, m_t = _channels_dense(q, m_s, m_t)
    if grad is not None:
        (grad,) = _channels_dense(grad)
    n, h, w, c = q.shape
    rows = n * h * w
    grid = (triton.cdiv(rows, MODULATE_BLOCK_M), triton.cdiv(c, MODULATE_BLOCK_C))
    if grad is None:
        out = torch.empty((n, h, w, c), dtype=q.dtype, device=q.device)
        modulate_kernel[grid](q, *_strides(q), m_s, *_strides(m_s), m_t, *_strides(m_t), q, 0, 0, 0,
                              out, out, out, out, h, w, c, rows,
                              BACKWARD=False, BLOCK_M=MODULATE_BLOCK_M, BLOCK_C=MODULATE_BLOCK_C)
        return out
    dq, ds, dt = (torch.empty((n, h, w, c), dtype=x.dtype, device=q.device) for x in (q, m_s, m_t))
    modulate_kernel[grid](q, *_strides(q), m_s, *_strides(m_s), m_t, *_strides(m_t), grad, *_strides(grad),
                          dq, dq, ds, dt, h, w, c, rows,
                          BACKWARD=True, BLOCK_M=MODULATE_BLOCK_M, BLOCK_C=MODULATE_BLOCK_C)
    return dq, ds, dt


def modulate_forward(q, m_s, m_t):
    return _modulate_launch(q, m_s, m_t)


def modulate_backward(grad, q, m_s, m_t):
    return _modulate_launch(q, m_s, m_t, grad)
