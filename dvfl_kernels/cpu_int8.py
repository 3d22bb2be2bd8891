"""The model's GEMMs in int8 on CPU: post-training static quantization, as the deployment peers do it.

Where an int8 GEMM pays is measured per shape, as the float engine measures its own choices
(``int8_pays``); on the nano's shapes it wins everywhere on the CPUs measured (docs/int8.md), on a
16-channel student it can lose. An int8 GEMM here is ``dequant(W_q) @ dequant(x_q)`` with
- the weight symmetric per output channel: ``W_q = clamp(round(W / s_w), -q, q)`` int8, ``s_w =
  max|W_row| / q`` (1 for an all-zero row), quantized and packed once into oneDNN's layout; q is 127,
  or 63 on a CPU whose int8 GEMM sums products in saturating int16 pairs (``weight_qmax``: AVX2);
- the activation asymmetric per tensor: ``x_q = clamp(round(x / s_x) + z_x, 0, 255)`` uint8, ``s_x``
  and ``z_x`` fixed by calibration from the range the GEMM's input took over the calibration clips;
- the int32 accumulation, the bias, the exact GELU (fc1) or the residual add (proj, fc2) and the
  float32 (or bfloat16) output in one oneDNN call (``torch.ops.onednn.qlinear_pointwise``: VNNI, AMX
  where the CPU has it, AVX2's pairwise products elsewhere), after one pass that quantizes x (``torch.ops.dvfl.quantize_u8``).

Which GEMMs run in int8 is a model's choice (``Int8Plan``); everything else (focal kernels, LayerNorm,
the head, the patch embeddings) stays in floating point. The plan is found by the GEMM calls of
``cpu_linear`` through ``running(handler)``: a context variable, set for the span of one forward, so
the model code is the same for float and int8. ``Calibration`` is the other handler: it records each
GEMM input's range and lets the float GEMM run.

``fake_quant_gemm`` is the float64 simulation of the same arithmetic that the tests compare against.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from . import _probe

# A GEMM's key: the ids of the parameters its weights come from (a 1x1 convolution's weight arrives as
# a flattened view; its base is the parameter). The plan holds those parameters, so ids stay unique.
GemmKey = tuple[int, ...]

_HANDLER: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("dvfl_int8_handler", default=None)


def _owner(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


def gemm_key(weights: Sequence[torch.Tensor]) -> GemmKey:
    return tuple(id(_owner(w)) for w in weights)


def active() -> Callable | None:
    """The handler of the forward in progress (an ``Int8Plan`` or a ``Calibration``), or None."""
    return _HANDLER.get()


@contextlib.contextmanager
def running(handler: Callable | None) -> Iterator[None]:
    """Route the GEMMs of ``dvfl_kernels.linear`` / ``linears`` inside this block through `handler`."""
    token = _HANDLER.set(handler)
    try:
        yield
    finally:
        _HANDLER.reset(token)


def int8_pays(shape_key: tuple, int8: Callable[[], torch.Tensor], float_run: Callable[[], torch.Tensor],
              measured: bool) -> bool:
    """Whether to run the int8 form: always when not `measured`; else whether it timed faster than the
    float one for this shape on this machine (``_probe.fastest``, the engine's verdict store). The
    key leaves out the thread count, so that a process picks int8 or float for a shape once: its
    outputs do not change with the thread count."""
    if not measured:
        return True
    return _probe.fastest(("int8 or float",) + tuple(shape_key), {"int8": int8, "float": float_run}) == "int8"


@functools.cache
def weight_qmax() -> int:
    """The largest weight magnitude on the int8 grid: 127, or 63 where this CPU's oneDNN int8 GEMM adds
    u8 x s8 products in saturating int16 pairs (x86 without VNNI: AVX2's vpmaddubsw; 255 * 127 * 2
    overflows int16, 255 * 63 * 2 does not). Found by running one worst-case GEMM, not from flags."""
    k = 64
    q_x = torch.full((8, k), 255, dtype=torch.uint8)
    packed = torch.ops.onednn.qlinear_prepack(torch.full((8, k), -127, dtype=torch.int8), [8, k])
    out = torch.ops.onednn.qlinear_pointwise(q_x, 1.0, 0, packed, torch.ones(8), torch.zeros(8, dtype=torch.long),
                                             None, 1.0, 0, torch.float32, "none", [], "none")
    return 127 if torch.all(out == -255.0 * 127 * k) else 63


def quantize_weight(weight: torch.Tensor, qmax: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 weights, on [-qmax, qmax].

    Args:
        weight: (N, K) floating point.
        qmax: the largest magnitude, at most 127; None: this CPU's ``weight_qmax()``.
    Returns:
        (int8 (N, K), float32 scales (N,)) with ``weight ~= q * scale[:, None]``; an all-zero row gets
        scale 1 and zeros.
    """
    qmax = weight_qmax() if qmax is None else qmax
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).to(torch.int8)
    return q, scale


def activation_params(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid that covers [min(low, 0), max(high, 0)]: 0 is exact, as
    zero padding and ReLU-like tails need."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0
    if not scale > 0.0:  # a tensor that was all zeros
        return 1.0, 0
    zero_point = int(min(max(round(-low / scale), 0), 255))
    return scale, zero_point


def quantize_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 ``clamp(round(x * (1 / scale)) + zero_point, 0, 255)`` of float32 / bfloat16 `x` (NaN -> 0)."""
    from . import ops

    if ops.HAS_EXTENSION:
        return torch.ops.dvfl.quantize_u8(x, scale, zero_point)
    return torch.clamp(torch.round(x.float() * (1.0 / scale)) + zero_point, 0, 255).to(torch.uint8)


def register_fakes() -> None:
    """Fake kernels of the C++ int8 ops (shapes only), for opcheck and tracing; called once the
    extension has loaded (dvfl_kernels/ops.py)."""
    torch.library.register_fake("dvfl::quantize_u8")(
        lambda x, scale, zero_point: torch.empty(x.shape, dtype=torch.uint8, device=x.device))
    torch.library.register_fake("dvfl::temporal_context_int8")(
        lambda z_t, g_t, packed, tap_scales, input_scales, input_zero_points, num_frames, normalize:
        torch.empty(z_t.shape, dtype=z_t.dtype, device=z_t.device))


def fake_quant_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float, zero_point: int,
                    activation: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
    """The int8 GEMM's arithmetic in float64: quantize, dequantize, multiply, bias, GELU, residual.

    Args:
        x: (..., K); weight: (N, K); bias: (N,) or None; residual: (..., N) or None.
    Returns:
        float64 (..., N).
    """
    q_w, s_w = quantize_weight(weight)
    w = q_w.double() * s_w.double()[:, None]
    q_x = torch.clamp(torch.round(x.double() * (1.0 / scale)) + zero_point, 0, 255)
    out = (q_x - zero_point) * scale @ w.T
    if bias is not None:
        out = out + bias.double()
    if activation == "gelu":
        out = torch.nn.functional.gelu(out)
    return out if residual is None else out + residual.double()


@dataclass
class Int8Gemm:
    """One GEMM (one or several concatenated weights) ready to run in int8."""

    packed: torch.Tensor  # int8 (N, K) in oneDNN's layout (qlinear_prepack)
    weight_scale: torch.Tensor  # float32 (N,)
    weight_zero_point: torch.Tensor  # int64 zeros (N,): symmetric
    bias: torch.Tensor | None  # float32 (N,)
    input_scale: float
    input_zero_point: int
    out_features: int

    @classmethod
    def build(cls, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], input_range: tuple[float, float],
              rows_hint: int) -> "Int8Gemm":
        weight = torch.cat([w.detach().reshape(w.shape[0], -1).float() for w in weights])
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach().float() if b is not None else weight.new_zeros(w.shape[0])
                              for w, b in zip(weights, biases)])
        q_w, s_w = quantize_weight(weight)
        scale, zero_point = activation_params(*input_range)
        packed = torch.ops.onednn.qlinear_prepack(q_w, [rows_hint, weight.shape[1]])
        return cls(packed, s_w, torch.zeros(weight.shape[0], dtype=torch.long), bias, scale, zero_point,
                   weight.shape[0])

    def __call__(self, x2: torch.Tensor, activation: str, residual: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
        """x2: (rows, K) float32 / bfloat16 -> (rows, N) in `dtype` = residual + act(x2 @ W.T + b)."""
        q_x = quantize_activation(x2, self.input_scale, self.input_zero_point)
        return self.from_quantized(q_x, activation, residual, dtype)

    def quantized_out(self, x2: torch.Tensor, activation: str, scale: float, zero_point: int) -> torch.Tensor:
        """act(x2 @ W.T + b) written as uint8 on the grid (scale, zero_point): the requantizing epilogue
        that feeds the next int8 GEMM without a float round trip."""
        q_x = quantize_activation(x2, self.input_scale, self.input_zero_point)
        return torch.ops.onednn.qlinear_pointwise(
            q_x, self.input_scale, self.input_zero_point, self.packed, self.weight_scale, self.weight_zero_point,
            self.bias, scale, zero_point, None, "gelu" if activation == "gelu" else "none", [], "none")

    def from_quantized(self, q_x: torch.Tensor, activation: str, residual: torch.Tensor | None,
                       dtype: torch.dtype) -> torch.Tensor:
        """The GEMM of an input already quantized on this GEMM's input grid (uint8 (rows, K))."""
        bias = self.bias if self.bias is None or dtype == torch.float32 else self.bias.to(dtype)
        unary = "gelu" if activation == "gelu" else "none"
        if residual is not None and activation == "none":
            return torch.ops.onednn.qlinear_pointwise.binary(
                q_x, self.input_scale, self.input_zero_point, self.packed, self.weight_scale, self.weight_zero_point,
                residual, bias, 1.0, 0, dtype, 1.0, 0, "add", 1.0, "none", [], "")  # "sum" would write into residual
        out = torch.ops.onednn.qlinear_pointwise(
            q_x, self.input_scale, self.input_zero_point, self.packed, self.weight_scale, self.weight_zero_point,
            bias, 1.0, 0, dtype, unary, [], "none")
        return out if residual is None else out.add_(residual)


@dataclass
class Int8Taps:
    """One temporal context's dense taps ready to run in int8, a level each (levels run in order, the
    C++ epilogue between them: ``torch.ops.dvfl.temporal_context_int8``)."""

    packed: list[torch.Tensor]  # per level: int8 (k * C, C) taps stacked tap-major, in oneDNN's layout
    scales: list[torch.Tensor]  # per level: float32 (k * C,)
    input_scales: list[float]
    input_zero_points: list[int]

    @classmethod
    def build(cls, weights: Sequence[torch.Tensor], input_ranges: Sequence[tuple[float, float]], rows_hint: int) -> "Int8Taps":
        packed, scales, input_scales, zero_points = [], [], [], []
        for weight, input_range in zip(weights, input_ranges, strict=True):
            q_w, s_w = quantize_weight(stacked_taps(weight))
            packed.append(torch.ops.onednn.qlinear_prepack(q_w, [rows_hint, weight.shape[1]]))
            scales.append(s_w)
            scale, zero_point = activation_params(*input_range)
            input_scales.append(scale)
            zero_points.append(zero_point)
        return cls(packed, scales, input_scales, zero_points)

    def __call__(self, z_t: torch.Tensor, g_t: torch.Tensor, num_frames: int, normalize: bool) -> torch.Tensor:
        return torch.ops.dvfl.temporal_context_int8(z_t, g_t, self.packed, self.scales, self.input_scales,
                                                    self.input_zero_points, num_frames, normalize)


def stacked_taps(weight: torch.Tensor) -> torch.Tensor:
    """A dense temporal kernel (C_out, C_in, k) as the (k * C_out, C_in) matrix of its taps, tap-major
    (row j * C_out + o is W[o, :, j]): one GEMM gives every tap's product."""
    c_out, c_in, k = weight.shape
    return weight.detach().float().permute(2, 0, 1).reshape(k * c_out, c_in)


def fake_quant_temporal_context(z_t: torch.Tensor, g_t: torch.Tensor, weights: Sequence[torch.Tensor],
                                input_ranges: Sequence[tuple[float, float]], num_frames: int,
                                normalize: bool = False) -> torch.Tensor:
    """``reference.temporal_context`` in float64 with each level's input and taps quantized as
    ``Int8Taps`` quantizes them (the tests' simulation of the int8 op)."""
    from . import reference

    def fake_weight(weight):
        q_w, s_w = quantize_weight(stacked_taps(weight))
        c_out, c_in, k = weight.shape
        return (q_w.double() * s_w.double()[:, None]).reshape(k, c_out, c_in).permute(1, 2, 0)

    num_levels = len(weights)
    ctx = z_t.double().unflatten(0, (-1, num_frames))
    gates = g_t.double().unflatten(0, (-1, num_frames))
    acc = torch.zeros_like(ctx)
    for level, (weight, input_range) in enumerate(zip(weights, input_ranges, strict=True)):
        scale, zero_point = activation_params(*input_range)
        ctx_q = (torch.clamp(torch.round(ctx * (1.0 / scale)) + zero_point, 0, 255) - zero_point) * scale
        ctx = torch.nn.functional.gelu(reference.dense_temporal_conv(ctx_q, fake_weight(weight)))
        acc = acc + ctx * gates[..., level: level + 1]
    acc = acc + torch.nn.functional.gelu(ctx.mean(1, keepdim=True)) * gates[..., num_levels: num_levels + 1]
    if normalize:
        acc = acc / (num_levels + 1)
    return acc.flatten(0, 1)


class Int8Plan:
    """The int8 form of a model's GEMMs, looked up by the parameters a GEMM call passes.

    Args:
        gemms: GEMM name -> (weights, biases, (low, high) input range); the name is for reports.
        taps: temporal context name -> (its levels' (C, C, k) weights, each level's input range).
        measured: run each int8 GEMM / temporal context only where it is measured faster than the float
            one for its shape (``int8_pays``); False: always in int8.
        rows_hint: a typical row count (oneDNN picks the packed layout for it; any count runs).
    """

    def __init__(self, gemms: dict[str, tuple[Sequence[torch.Tensor], Sequence[torch.Tensor | None], tuple[float, float]]],
                 taps: dict[str, tuple[Sequence[torch.Tensor], Sequence[tuple[float, float]]]] | None = None,
                 measured: bool = True, rows_hint: int = 1024):
        self.measured = measured
        self._gemms: dict[GemmKey, Int8Gemm] = {}
        self._taps: dict[GemmKey, Int8Taps] = {}
        self._owners = []  # keeps the parameters alive, so their ids stay theirs
        for weights, biases, input_range in gemms.values():
            self._gemms[gemm_key(weights)] = Int8Gemm.build(weights, biases, input_range, rows_hint)
            self._owners.extend(_owner(w) for w in weights)
        for weights, input_ranges in (taps or {}).values():
            self._taps[gemm_key(weights)] = Int8Taps.build(weights, input_ranges, rows_hint)
            self._owners.extend(_owner(w) for w in weights)

    def __len__(self) -> int:
        return len(self._gemms) + len(self._taps)

    def mlp(self, fc1_weight: torch.Tensor, fc2_weight: torch.Tensor, x2: torch.Tensor, residual: torch.Tensor | None,
            dtype: torch.dtype) -> Callable[[], torch.Tensor] | None:
        """residual + fc2(GELU(fc1(x2))) with fc1 writing uint8 on fc2's input grid, or None where the
        plan lacks either GEMM."""
        fc1, fc2 = self._gemms.get(gemm_key([fc1_weight])), self._gemms.get(gemm_key([fc2_weight]))
        if fc1 is None or fc2 is None:
            return None
        return lambda: fc2.from_quantized(fc1.quantized_out(x2, "gelu", fc2.input_scale, fc2.input_zero_point), "none",
                                          residual, dtype)

    def temporal(self, z_t: torch.Tensor, g_t: torch.Tensor, weights: Sequence[torch.Tensor], num_frames: int,
                 normalize: bool) -> Callable[[], torch.Tensor] | None:
        """The int8 form of this temporal context call, or None where the plan has none."""
        taps = self._taps.get(gemm_key(weights))
        return None if taps is None else lambda: taps(z_t, g_t, num_frames, normalize)

    def gemm(self, weights: Sequence[torch.Tensor], x2: torch.Tensor, activation: str,
             residual: torch.Tensor | None, dtype: torch.dtype) -> Callable[[], torch.Tensor] | None:
        """The int8 form of this GEMM call (run it to get its output), or None where the plan has none."""
        gemm = self._gemms.get(gemm_key(weights))
        return None if gemm is None else lambda: gemm(x2, activation, residual, dtype)


class Calibration:
    """Records the range of every GEMM input seen while active; the float GEMMs run as usual.

    Args:
        names: parameter id -> name (``{id(p): n for n, p in model.named_parameters()}``): a GEMM is
            named by its weights' names joined with "+".
        per_column: the GEMMs whose input's range is also recorded per column (those smoothing may
            change); a column-wise reduction costs several times the whole tensor's.
    """

    def __init__(self, names: dict[int, str], per_column: frozenset[str] = frozenset()):
        self._names, self._per_column = names, per_column
        self.ranges: dict[str, list[float]] = {}  # GEMM name -> [low, high]
        self.channel_ranges: dict[str, list[torch.Tensor]] = {}  # GEMM name in per_column -> [per-column low, high]
        self.tap_ranges: dict[str, list[list[float]]] = {}  # temporal context name -> per level [low, high]
        self.calls: dict[str, int] = {}

    def name(self, weights: Sequence[torch.Tensor]) -> str:
        return "+".join(self._names.get(k, f"<unnamed {k}>") for k in gemm_key(weights))

    measured = False

    def mlp(self, *args) -> None:
        """Offers no int8 form: the MLP runs as its two linears, whose calls record their inputs."""
        return None

    def gemm(self, weights: Sequence[torch.Tensor], x2: torch.Tensor, activation: str,
             residual: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Records the range of x2; offers no int8 form (the float GEMM runs)."""
        name = self.name(weights)
        self.calls[name] = self.calls.get(name, 0) + 1
        if name not in self._per_column:
            _widen(self.ranges.setdefault(name, [float("inf"), float("-inf")]), x2)
            return None
        low, high = torch.aminmax(x2.float(), dim=0)  # the tensor's range from the columns' (one pass)
        _widen(self.ranges.setdefault(name, [float("inf"), float("-inf")]), torch.stack([low.min(), high.max()]))
        seen = self.channel_ranges.get(name)
        self.channel_ranges[name] = [low, high] if seen is None else [torch.minimum(seen[0], low), torch.maximum(seen[1], high)]
        return None

    def temporal(self, z_t: torch.Tensor, g_t: torch.Tensor, weights: Sequence[torch.Tensor], num_frames: int,
                 normalize: bool) -> Callable[[], torch.Tensor]:
        """Records each level's input range: z_t's, then gelu of the level before's pre-activation, which
        the fused op saves (as for its backward); offers that op's output, so the hierarchy runs once."""
        name = self.name(weights)
        seen = self.tap_ranges.setdefault(name, [[float("inf"), float("-inf")] for _ in weights])
        out, pre, _ = torch.ops.dvfl.temporal_context(z_t, g_t, list(weights), num_frames, normalize, True)
        _widen(seen[0], z_t)
        for level in range(1, len(weights)):
            _widen(seen[level], torch.nn.functional.gelu(pre[level - 1].float()))
        self.calls[name] = self.calls.get(name, 0) + 1
        return lambda: out


def smoothing_factors(input_amax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s = amax(x_c)^alpha / amax(W[:, c])^(1 - alpha): x / s and
    W * s give the same product with the activation's outlier channels moved into the weights
    (per output channel, where the int8 grid absorbs them). A channel that was all zeros on either
    side keeps s = 1.

    Args:
        input_amax: (K,) max |x| per input channel over the calibration clips.
        weight: (N, K).
    Returns:
        float32 (K,) > 0.
    """
    w_amax = weight.detach().float().abs().amax(dim=0)
    x_amax = input_amax.float()
    s = x_amax.pow(alpha) / w_amax.pow(1.0 - alpha)
    usable = (x_amax > 0) & (w_amax > 0) & torch.isfinite(s)
    return torch.where(usable, s, torch.ones_like(s)).clamp(1e-5, 1e5)


def _widen(seen: list[float], x: torch.Tensor) -> None:
    low, high = torch.aminmax(x.float())
    seen[0], seen[1] = min(seen[0], low.item()), max(seen[1], high.item())
